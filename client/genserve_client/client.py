"""`Client` (blocking) and `AsyncClient` (asyncio): genserve's routes as typed methods.

Both retry an answer of 503 (overloaded, or a model with no replica yet) after the server's
`Retry-After`, at most `retries` times and never waiting longer than `max_retry_wait` at once;
every other error raises `GenserveError` at once. The bearer token comes from `token` or the
`GENSERVE_API_KEY` environment variable, the server's address from `url` or `GENSERVE_URL`.
`transport` is httpx's (a proxy, a mock in tests).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, Self, TypedDict, TypeVar, Unpack

import httpx

from genserve_client._api import (
    Call,
    Classification,
    Editing,
    Encoding,
    Event,
    EventReader,
    Framing,
    GenserveError,
    ImageLike,
    Images,
    ModelInfo,
    RequestTimeout,
    Sampling,
    Scores,
    Scoring,
    Streamed,
    classify_call,
    edit_call,
    error_from,
    generate_call,
    interpolate_call,
    model_call,
    models_call,
    reconstruct_call,
    score_call,
    stream_body,
)

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
STREAM_HEADERS = {"Accept": "text/event-stream"}


class Options(TypedDict, total=False):
    """`Client`'s and `AsyncClient`'s keyword options."""

    token: str | None  # default: $GENSERVE_API_KEY
    timeout: float  # seconds to wait for an answer, or between two events of a stream (default 300)
    retries: int  # tries after a 503 (default 3)
    max_retry_wait: float  # the longest wait before one, whatever Retry-After says (default 30 s)


class _Settings:
    def __init__(self, url: str | None, options: Options) -> None:
        self.url = (url or os.environ.get("GENSERVE_URL") or DEFAULT_URL).rstrip("/")
        token = options.get("token") or os.environ.get("GENSERVE_API_KEY")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = options.get("timeout", 300.0)
        self.retries = options.get("retries", 3)
        self.max_retry_wait = options.get("max_retry_wait", 30.0)

    def http_options(self) -> dict[str, Any]:
        return {"base_url": self.url, "headers": self.headers, "timeout": self.timeout}

    def retry_in(self, err: GenserveError, attempt: int) -> float:
        """Seconds to wait before trying `err`'s request again; raises `err` when it is not worth it."""
        if err.status != 503 or attempt >= self.retries:
            raise err
        return min(err.retry_after if err.retry_after is not None else 1.0, self.max_retry_wait)

    def answer(self, call: Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise error_from(response.status_code, response.headers, response.text)
        return call.parse(response.json())


class Client:
    """Blocking client. Use as a context manager, or call `close()`."""

    def __init__(
        self, url: str | None = None, *, transport: httpx.BaseTransport | None = None, **options: Unpack[Options]
    ) -> None:
        self.settings = _Settings(url, options)
        self._http = httpx.Client(transport=transport, **self.settings.http_options())

    def _send(self, call: Call[T]) -> T:
        for attempt in itertools.count():
            try:
                response = self._http.request(call.method, call.path, json=call.body)
                return self.settings.answer(call, response)
            except httpx.TimeoutException:
                raise RequestTimeout(self.settings.timeout) from None
            except GenserveError as err:
                time.sleep(self.settings.retry_in(err, attempt))
        raise AssertionError("unreachable")

    def models(self) -> list[ModelInfo]:
        return self._send(models_call())

    def model(self, name: str) -> ModelInfo:
        return self._send(model_call(name))

    def generate(self, model: str, **params: Unpack[Sampling]) -> Images:
        return self._send(generate_call(model, params))

    def generate_stream(self, model: str, **params: Unpack[Streamed]) -> Iterator[Event]:
        """The request as it runs: Accepted, Progress per step and Preview every `preview_every`
        steps (diffusion), ImageReady per image, Done. Leaving the loop early closes the stream,
        and the server cancels the request."""
        call = generate_call(model, params)
        for attempt in itertools.count():
            try:
                with self._http.stream("POST", call.path, json=stream_body(params), headers=STREAM_HEADERS) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise error_from(r.status_code, r.headers, r.text)
                    reader = EventReader()
                    for line in r.iter_lines():
                        if (event := reader.feed(line)) is not None:
                            yield event
                    return
            except httpx.TimeoutException:
                raise RequestTimeout(self.settings.timeout) from None
            except GenserveError as err:
                time.sleep(self.settings.retry_in(err, attempt))

    def img2img(self, model: str, image: ImageLike, **params: Unpack[Editing]) -> Images:
        return self._send(edit_call(model, image, None, params))

    def inpaint(self, model: str, image: ImageLike, mask: ImageLike, **params: Unpack[Editing]) -> Images:
        """Regenerates the pixels where `mask` is white; keeps the rest."""
        return self._send(edit_call(model, image, mask, params))

    def score(
        self, model: str, images: Sequence[ImageLike], label: int | None = None, **params: Unpack[Scoring]
    ) -> Scores:
        return self._send(score_call(model, list(images), label, params))

    def classify(self, model: str, images: Sequence[ImageLike], **params: Unpack[Scoring]) -> Classification:
        return self._send(classify_call(model, list(images), params))

    def reconstruct(
        self, model: str, images: Sequence[ImageLike], label: int | None = None, **params: Unpack[Encoding]
    ) -> Images:
        return self._send(reconstruct_call(model, list(images), label, params))

    def interpolate(
        self, model: str, from_seed: int, to_seed: int, frames: int = 8, **params: Unpack[Framing]
    ) -> Images:
        return self._send(interpolate_call(model, from_seed, to_seed, frames, params))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()


class AsyncClient:
    """The same methods as `Client`, as coroutines; `generate_stream` is an async iterator."""

    def __init__(
        self, url: str | None = None, *, transport: httpx.AsyncBaseTransport | None = None, **options: Unpack[Options]
    ) -> None:
        self.settings = _Settings(url, options)
        self._http = httpx.AsyncClient(transport=transport, **self.settings.http_options())

    async def _send(self, call: Call[T]) -> T:
        for attempt in itertools.count():
            try:
                response = await self._http.request(call.method, call.path, json=call.body)
                return self.settings.answer(call, response)
            except httpx.TimeoutException:
                raise RequestTimeout(self.settings.timeout) from None
            except GenserveError as err:
                await asyncio.sleep(self.settings.retry_in(err, attempt))
        raise AssertionError("unreachable")

    async def models(self) -> list[ModelInfo]:
        return await self._send(models_call())

    async def model(self, name: str) -> ModelInfo:
        return await self._send(model_call(name))

    async def generate(self, model: str, **params: Unpack[Sampling]) -> Images:
        return await self._send(generate_call(model, params))

    async def generate_stream(self, model: str, **params: Unpack[Streamed]) -> AsyncIterator[Event]:
        call = generate_call(model, params)
        for attempt in itertools.count():
            try:
                async with self._http.stream("POST", call.path, json=stream_body(params), headers=STREAM_HEADERS) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        raise error_from(r.status_code, r.headers, r.text)
                    reader = EventReader()
                    async for line in r.aiter_lines():
                        if (event := reader.feed(line)) is not None:
                            yield event
                    return
            except httpx.TimeoutException:
                raise RequestTimeout(self.settings.timeout) from None
            except GenserveError as err:
                await asyncio.sleep(self.settings.retry_in(err, attempt))

    async def img2img(self, model: str, image: ImageLike, **params: Unpack[Editing]) -> Images:
        return await self._send(edit_call(model, image, None, params))

    async def inpaint(self, model: str, image: ImageLike, mask: ImageLike, **params: Unpack[Editing]) -> Images:
        return await self._send(edit_call(model, image, mask, params))

    async def score(
        self, model: str, images: Sequence[ImageLike], label: int | None = None, **params: Unpack[Scoring]
    ) -> Scores:
        return await self._send(score_call(model, list(images), label, params))

    async def classify(self, model: str, images: Sequence[ImageLike], **params: Unpack[Scoring]) -> Classification:
        return await self._send(classify_call(model, list(images), params))

    async def reconstruct(
        self, model: str, images: Sequence[ImageLike], label: int | None = None, **params: Unpack[Encoding]
    ) -> Images:
        return await self._send(reconstruct_call(model, list(images), label, params))

    async def interpolate(
        self, model: str, from_seed: int, to_seed: int, frames: int = 8, **params: Unpack[Framing]
    ) -> Images:
        return await self._send(interpolate_call(model, from_seed, to_seed, frames, params))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

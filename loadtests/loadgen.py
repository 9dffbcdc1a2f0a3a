"""Load drivers for the benchmark and the chaos runs: open-loop Poisson and closed-loop.

Open loop: arrivals are drawn from a Poisson process at a fixed rate and sent whether or not
earlier requests have answered, so a slow server builds a queue, as it would in production
(a closed loop would hide that by slowing the client down). Closed loop: `concurrency`
clients, each sending its next request when the last one answers, for saturation throughput.

Every request ends as an `Outcome`: its status (0 when no HTTP answer came: connection error or
client timeout), latency, images received and whether an error had a JSON body. Nothing is
dropped: `summarize` counts every request that was sent.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy as np


@dataclass(frozen=True)
class Call:
    """One request to send: path, JSON body, images it asks for, and a tag to group results."""

    path: str
    body: dict[str, Any]
    images: int
    tag: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    tag: str
    sent: float  # seconds since the run started
    latency: float
    status: int  # 0: no HTTP answer (connection refused/reset, client timeout)
    images: int  # images received (0 on error)
    json_error: bool = True  # an error answer carried a JSON body
    retry_after: str | None = None
    error: str = ""


Workload = Callable[[random.Random], Call]
ImagesOf = Callable[[dict[str, Any]], int]


def count_images(body: dict[str, Any]) -> int:
    """Images in a genserve GenerateResponse."""
    images = body.get("images", [])
    return len(images) if isinstance(images, list) else 0


async def send(
    session: aiohttp.ClientSession, base: str, call: Call, t0: float, timeout_s: float, images_of: ImagesOf
) -> Outcome:
    sent = time.perf_counter()
    try:
        async with session.post(
            base + call.path, json=call.body, headers=call.headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as r:
            raw = await r.read()
            latency = time.perf_counter() - sent
            try:
                body = json.loads(raw)
                is_json = True
            except ValueError:
                body, is_json = {}, False
            if r.status == 200:
                return Outcome(call.tag, sent - t0, latency, 200, images_of(body) if is_json else 0)
            return Outcome(
                call.tag,
                sent - t0,
                latency,
                r.status,
                0,
                json_error=is_json,
                retry_after=r.headers.get("Retry-After"),
                error=raw[:200].decode("utf-8", "replace"),
            )
    except (TimeoutError, aiohttp.ClientError) as e:
        return Outcome(call.tag, sent - t0, time.perf_counter() - sent, 0, 0, False, None, f"{type(e).__name__}: {e}")


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=False))


async def open_loop(
    base: str,
    workload: Workload,
    rate: float,
    duration_s: float,
    *,
    seed: int = 0,
    timeout_s: float = 60.0,
    images_of: ImagesOf = count_images,
    max_connections: int = 2048,
) -> list[Outcome]:
    """Poisson arrivals at `rate` requests/s for `duration_s`; waits for every answer."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[Outcome]] = []
    async with _session(max_connections) as session:
        t0 = time.perf_counter()
        next_at = rng.expovariate(rate)
        while next_at < duration_s:
            delay = t0 + next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, base, workload(rng), t0, timeout_s, images_of)))
            next_at += rng.expovariate(rate)
        return list(await asyncio.gather(*tasks))


async def closed_loop(
    base: str,
    workload: Workload,
    concurrency: int,
    duration_s: float,
    *,
    seed: int = 0,
    timeout_s: float = 60.0,
    images_of: ImagesOf = count_images,
) -> list[Outcome]:
    """`concurrency` clients back to back for `duration_s` (each finishes its last request)."""
    out: list[Outcome] = []
    async with _session(concurrency) as session:
        t0 = time.perf_counter()

        async def client(k: int) -> None:
            rng = random.Random(seed * 1000 + k)
            while time.perf_counter() - t0 < duration_s:
                out.append(await send(session, base, workload(rng), t0, timeout_s, images_of))

        await asyncio.gather(*(client(k) for k in range(concurrency)))
    return out


@dataclass
class Summary:
    """What a run did: counts, throughput over the run's span, and latency of the served."""

    sent: int
    ok: int
    refused: int  # 503 (overload), the answer a client can retry
    errors: int  # any other non-200 answer
    no_answer: int  # status 0: connection failure or client timeout
    non_json_errors: int
    seconds: float
    requests_per_s: float
    images_per_s: float
    p50: float | None
    p95: float | None
    p99: float | None
    max_latency: float | None
    statuses: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(outcomes: list[Outcome], tag: str | None = None) -> Summary:
    """Counts every sent request; throughput is served work over first send to last answer."""
    rows = [o for o in outcomes if tag is None or o.tag == tag]
    served = [o for o in rows if o.status == 200]
    lat = np.array([o.latency for o in served]) if served else None
    # Throughput over the whole run (all tags), so that one tag's share is comparable.
    span = max((o.sent + o.latency for o in outcomes), default=0.0) - min((o.sent for o in outcomes), default=0.0)
    span = max(span, 1e-9)
    statuses: dict[str, int] = {}
    for o in rows:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1

    def pct(q: float) -> float | None:
        return float(np.percentile(lat, q)) if lat is not None else None

    return Summary(
        sent=len(rows),
        ok=len(served),
        refused=sum(o.status == 503 for o in rows),
        errors=sum(o.status not in (0, 200, 503) for o in rows),
        no_answer=sum(o.status == 0 for o in rows),
        non_json_errors=sum(o.status not in (0, 200) and not o.json_error for o in rows),
        seconds=span,
        requests_per_s=len(served) / span,
        images_per_s=sum(o.images for o in served) / span,
        p50=pct(50),
        p95=pct(95),
        p99=pct(99),
        max_latency=float(lat.max()) if lat is not None else None,
        statuses=statuses,
    )

"""Python client for genserve: `Client` (blocking) and `AsyncClient` (asyncio), typed results,
streamed progress, retries after 503. The command line is `genserve-client` (`cli.py`)."""

from genserve_client._api import (
    Accepted,
    Classification,
    Done,
    Event,
    GenserveError,
    ImageLike,
    ImageReady,
    Images,
    ModelInfo,
    Preview,
    Progress,
    RequestTimeout,
    Scores,
    Timings,
)
from genserve_client.client import AsyncClient, Client

__all__ = [
    "Accepted",
    "AsyncClient",
    "Classification",
    "Client",
    "Done",
    "Event",
    "GenserveError",
    "ImageLike",
    "ImageReady",
    "Images",
    "ModelInfo",
    "Preview",
    "Progress",
    "RequestTimeout",
    "Scores",
    "Timings",
]

"""How long one step-level iteration takes at each batch size, as a replica measures it: what
admission (`service.scheduler`) and the autoscaling backlog read.

An iteration's time is a fixed part (the call's overhead, the sampler update, scheduling) plus a
part that grows with the rows in the batch, so rows per second depend on the batch size: a
replica that has only run 1-row batches does far more rows per second once 16 lanes share each
call, and one that has run full batches does far fewer for a lone 1000-step lane. One rows/s
figure, measured at whatever batch the replica happened to run, is wrong for both.

`StepPace` keeps a moving average of the iteration time per batch-size band (1, 2-3, 4-7, ...,
powers of two) and reads the time at any batch size from the bands measured in the last
`STALE_S` seconds: linear between two measured bands, and beyond them on the side that can only
over-estimate (a smaller batch takes as long as the smallest measured, a larger one no more rows
per second than the largest measured). The definitive refusal of a request too costly for an
idle replica reads the other side below the smallest band (its rows per second), so that an
unmeasured fixed cost never refuses for good what the replica could do. (A deployed replica's
health check runs a one-row iteration every 10 s, so on a quiet replica the smallest band is
measured.) Queued work of R rows whose longest lane has S steps
left takes at least max(S, R / max_batch) iterations of R / iterations rows on average.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

WEIGHT = 0.2  # moving-average weight of the newest iteration in its band
STALE_S = 30.0  # a band not run for this long is no longer read (the machine's load moves)


@dataclass
class _Band:
    rows: float  # moving averages of the band's batch rows and iteration seconds
    seconds: float
    at: float  # when it was last measured


class StepPace:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._bands: dict[int, _Band] = {}

    def observe(self, rows: int, seconds: float) -> None:
        """One iteration of `rows` network rows took `seconds` of wall time."""
        now = self._clock()
        band = self._bands.get(rows.bit_length())
        if band is None or now - band.at > STALE_S:
            self._bands[rows.bit_length()] = _Band(float(rows), seconds, now)
            return
        band.rows += WEIGHT * (rows - band.rows)
        band.seconds += WEIGHT * (seconds - band.seconds)
        band.at = now

    def _points(self) -> list[tuple[float, float]]:
        now = self._clock()
        return sorted((b.rows, b.seconds) for b in self._bands.values() if now - b.at <= STALE_S)

    @property
    def measured(self) -> bool:
        return bool(self._points())

    def iteration_seconds(self, rows: float, least: bool = False) -> float | None:
        """Seconds of one iteration of `rows` rows, or None when no band is fresh. Below the
        smallest band the fixed part is unknown: read as all of it (as slow as that band), or
        with `least` as none of it (that band's rows per second)."""
        points = self._points()
        if not points:
            return None
        (r0, t0), (r1, t1) = points[0], points[-1]
        if rows <= r0:
            return t0 * rows / r0 if least else t0
        if rows >= r1:
            return t1 * rows / r1
        for (ra, ta), (rb, tb) in itertools.pairwise(points):
            if ra <= rows <= rb:
                return ta + (tb - ta) * (rows - ra) / (rb - ra)
        raise AssertionError("unreachable: rows lies between the first and last band")

    def drain_seconds(self, rows: int, longest: int, max_batch: int, least: bool = False) -> float | None:
        """Seconds to run `rows` network rows whose longest lane has `longest` steps left, at most
        `max_batch` rows per iteration; None when no band is fresh. `least`: see `iteration_seconds`."""
        if not self.measured:
            return None
        if rows <= 0:
            return 0.0
        iterations = max(longest, math.ceil(rows / max_batch))
        per_iteration = self.iteration_seconds(rows / iterations, least)
        return None if per_iteration is None else iterations * per_iteration

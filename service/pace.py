"""How long one step-level iteration takes at each batch size, as a replica measures it: what
admission (`service.scheduler`) and the autoscaling backlog read.

An iteration's time is a fixed part (the call's overhead, the sampler update, scheduling) plus a
part that grows with the rows in the batch, so rows per second depend on the batch size: a
replica that has only run 1-row batches does far more rows per second once 16 lanes share each
call, and one that has run full batches does far fewer for a lone 1000-step lane. One rows/s
figure, measured at whatever batch the replica happened to run, is wrong for both.

`StepPace` keeps two records per batch-size band (1, 2-3, 4-7, ..., powers of two):

- the typical time: a moving average of the band's iterations, read only for bands run in the
  last `STALE_S` seconds (the machine's load moves). Between two bands it is linear; beyond them
  it is read on the side that can only over-estimate (a smaller batch as slow as the smallest
  band, a larger one no more rows per second than the largest). Promises and 503s read it.
- the least time: the fastest the band has ever run (the replica's warm-up included, which
  times the bare network call at one row and at a full batch before the first request), read
  as a lower bound: a batch takes at least as long as the largest band at or below its size
  (below the smallest band, at that band's rows per second). A request is refused for good
  (422) only when even this says it cannot finish: a busy machine, or a batch size not run
  lately, never turns a request the replica can do into a definitive refusal. (Not linear
  between bands: a warm-up timed while the machine was busy would then slow every batch size
  below it.)

Queued work of R rows whose longest lane has S steps left takes at least max(S, R / max_batch)
iterations of R / iterations rows on average.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

WEIGHT = 0.2  # moving-average weight of the newest iteration in its band
STALE_S = 30.0  # a band not run for this long is no longer read as typical


@dataclass
class _Band:
    rows: float  # moving averages of the band's batch rows and iteration seconds
    seconds: float
    at: float  # when it was last measured


class StepPace:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._bands: dict[int, _Band] = {}
        self._least: dict[int, tuple[float, float]] = {}  # band -> (rows, seconds) of its fastest

    def observe(self, rows: int, seconds: float) -> None:
        """One iteration of `rows` network rows took `seconds` of wall time."""
        now = self._clock()
        self.observe_least(rows, seconds)
        band = self._bands.get(rows.bit_length())
        if band is None or now - band.at > STALE_S:
            self._bands[rows.bit_length()] = _Band(float(rows), seconds, now)
            return
        band.rows += WEIGHT * (rows - band.rows)
        band.seconds += WEIGHT * (seconds - band.seconds)
        band.at = now

    def observe_least(self, rows: int, seconds: float) -> None:
        """A lower bound on an iteration of `rows` rows (a bare network call, as in the warm-up)."""
        known = self._least.get(rows.bit_length())
        if known is None or seconds < known[1]:
            self._least[rows.bit_length()] = (float(rows), seconds)

    def _points(self) -> list[tuple[float, float]]:
        now = self._clock()
        return sorted((b.rows, b.seconds) for b in self._bands.values() if now - b.at <= STALE_S)

    @property
    def measured(self) -> bool:
        """Whether a typical time is known (a band ran in the last `STALE_S` seconds)."""
        return bool(self._points())

    def iteration_seconds(self, rows: float, least: bool = False) -> float | None:
        """Seconds of one iteration of `rows` rows: typical, or with `least` the least it could
        be; None when nothing is known."""
        points = sorted(self._least.values()) if least else self._points()
        if not points:
            return None
        (r0, t0), (r1, t1) = points[0], points[-1]
        if least:  # as fast as the largest band at or below `rows`: more rows never cost less
            if rows <= r0:
                return t0 * rows / r0
            return max(t for r, t in points if r <= rows)
        if rows <= r0:
            return t0
        if rows >= r1:
            return t1 * rows / r1
        for (ra, ta), (rb, tb) in itertools.pairwise(points):
            if ra <= rows <= rb:
                return ta + (tb - ta) * (rows - ra) / (rb - ra)
        raise AssertionError("unreachable: rows lies between the first and last band")

    def drain_seconds(self, rows: int, longest: int, max_batch: int, least: bool = False) -> float | None:
        """Seconds to run `rows` network rows whose longest lane has `longest` steps left, at most
        `max_batch` rows per iteration (typical, or with `least` the least); None when unknown."""
        known = bool(self._least) if least else self.measured
        iterations = max(longest, math.ceil(rows / max_batch))
        if rows <= 0 or iterations <= 0:
            return 0.0 if known else None
        per_iteration = self.iteration_seconds(rows / iterations, least)
        return None if per_iteration is None else iterations * per_iteration

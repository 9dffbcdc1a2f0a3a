"""Step-level (continuous) batching for diffusion models.

The scheduler keeps a pool of lanes, one per image being generated. Each iteration it picks up
to `max_batch` network rows (a guided lane takes two: conditional and null label), runs the
network once on their stacked inputs, applies each lane's own sampler coefficients and retires
finished lanes. New requests join at the next iteration, so a 10-step request never waits for a
1000-step batch to drain: lanes with the fewest remaining steps go first, and a lane passed
over gains priority with every iteration it waits (no starvation).

Admission: a request is refused at once (Overloaded, with a Retry-After) when the queue holds
`max_queued_lanes` images, or when the work already queued plus its own, at the iteration
times the replica has measured for such batches (`service.pace`), would not drain before the
finish promised to every queued request (a share `ADMISSION_MARGIN` of each one's deadline):
under overload a client gets a fast 503 instead of a late 504. A large request on a quiet
replica is promised its own work time (with an allowance for the pace estimate); an idle replica
admits it. A request that even alone, at the least the replica has taken for a batch of its size
or smaller (`warm_up` times them before serving), would come too close to its deadline gets a
definitive 422 (TooCostly) naming its cost and what the replica takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from service.denoisers import Denoiser, LabelDenoiser
from service.errors import DeadlineExceeded, GenserveError, InvalidRequest, Overloaded, TooCostly
from service.jobs import DiffusionJob
from service.noise import image_rng
from service.pace import StepPace
from service.registry import LoadedModel
from service.samplers import SamplerPlan, x0_from_output
from service.stats import RequestStats, StepStats

T = TypeVar("T")

# A request is promised a finish within this share of its remaining deadline (or, for a large
# request on a quiet replica, its own work with PACE_ALLOWANCE, up to DEADLINE_SHARE_MAX of
# the deadline). The estimate is a moving average of recent speed, and under overload the speed drops
# as refused requests take their share of the CPU: at 3x overload on 2 cores, 0.8 let 0.5% of
# admitted requests pass their deadline, and 0.5 none in one run but 0.7% in another.
ADMISSION_MARGIN = 0.35
PACE_ALLOWANCE = 1.25  # the measured pace may be this much too optimistic
DEADLINE_SHARE_MAX = 0.9
IDLE_RETIMES = 3  # full-batch timings an idle replica makes after its warm-up (`retime_when_idle`)


@dataclass(frozen=True)
class DiffusionResult:
    """Images (n, C, H, W) in the card's value range (a latent pipeline's latents), and how long
    the request took."""

    images: np.ndarray
    stats: RequestStats


# Called on the event loop with (image index, steps done, the current clean-image estimate).
Preview = Callable[[int, int, np.ndarray], None]


def preview_steps(steps: int, previews: int) -> frozenset[int]:
    """After which steps of a `steps`-step lane to show `previews` previews: evenly spread,
    never after the last step (the image itself follows then)."""
    return frozenset(round(steps * j / (previews + 1)) for j in range(1, previews + 1)) - {0, steps}


@dataclass(eq=False)
class _Request:
    job: DiffusionJob
    future: asyncio.Future[DiffusionResult]
    images: np.ndarray
    remaining: int
    submitted: float
    promise: float | None = None  # the monotonic instant admission expects it to finish by
    first_call: float | None = None  # the monotonic instant its first network call began
    iterations: int = 0
    # Streaming: after every step of a lane, `watch(image index, steps done, x0)`.
    watch: Preview | None = None


@dataclass(eq=False)
class _Lane:
    request: _Request
    index: int
    plan: SamplerPlan
    rng: np.random.Generator
    cond: Any  # the request's conditioning, as its denoiser made it (a label, text embeddings)
    guided: bool
    x: np.ndarray
    x0_prev: np.ndarray
    seq: int
    step: int = 0
    skipped: int = 0

    @property
    def rows(self) -> int:
        return 2 if self.guided else 1

    def priority(self, aging: float) -> tuple[float, int, int]:
        return (self.plan.num_steps - self.step - aging * self.skipped, self.seq, self.index)


@dataclass
class _Batch:
    """The stacked inputs of one iteration, built on the event loop, computed off it."""

    lanes: list[_Lane]
    x: np.ndarray
    x0_prev: np.ndarray
    coeffs: np.ndarray = field(repr=False)  # (lanes, 6): alpha, sigma, a, b, c, d
    z: np.ndarray = field(repr=False)
    # Inpainting: after the step, pixels where `keep` is set become `known` (the input image
    # noised to the next step's level); None when no lane in the batch inpaints.
    keep: np.ndarray | None = field(default=None, repr=False)
    known: np.ndarray | None = field(default=None, repr=False)


class StepScheduler:
    """Runs diffusion jobs for one model with step-level batching; one per replica. `model` is a
    loaded single-graph model or any `Denoiser` (a text-to-image pipeline)."""

    def __init__(
        self,
        model: LoadedModel | Denoiser,
        *,
        max_batch: int = 64,
        max_queued_lanes: int = 1024,
        aging: float = 1.0,
        on_step: Callable[[StepStats], None] | None = None,
    ) -> None:
        self.model: Denoiser = model if not isinstance(model, LoadedModel) else LabelDenoiser(model)
        self.max_batch = max_batch
        self.max_queued_lanes = max_queued_lanes
        self.aging = aging
        self.on_step = on_step
        self._lanes: list[_Lane] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"steps-{model.name}")
        self.pace = StepPace()  # iteration time by batch size, as measured
        self._retimes_left = 0  # idle re-timings of a full batch still to do (`retime_when_idle`)

    @property
    def queued_rows(self) -> int:
        """Network rows still to run for every queued lane: the queue's work."""
        return sum((lane.plan.num_steps - lane.step) * lane.rows for lane in self._lanes)

    @property
    def longest_lane(self) -> int:
        """Steps left in the queue's longest lane: the fewest iterations its work takes."""
        return max((lane.plan.num_steps - lane.step for lane in self._lanes), default=0)

    @property
    def backlog_seconds(self) -> float | None:
        """The queued work in seconds at the measured pace, or None while nothing is measured."""
        return self.pace.drain_seconds(self.queued_rows, self.longest_lane, self.max_batch)

    def estimated_wait(self, job: DiffusionJob) -> float | None:
        """Seconds until `job` would finish if admitted now, or None while nothing is measured."""
        return self.pace.drain_seconds(
            self.queued_rows + job.cost, max(self.longest_lane, job.steps - job.start), self.max_batch
        )

    @property
    def queued_lanes(self) -> int:
        """Lanes (images) waiting or in progress: the queue depth."""
        return len(self._lanes)

    async def submit(self, job: DiffusionJob, watch: Preview | None = None) -> DiffusionResult:
        """Queues the job's images and waits for them; cancelling the caller drops its lanes.
        With `watch`, each image's clean-image estimate is shown to it after every step (the
        watcher must be quick and must not raise: it runs on the event loop)."""
        promise = self._admit(job)
        loop = asyncio.get_running_loop()
        try:
            shape = self.model.lane_shape(job)
            plan = self.model.plan(job)
            if self.model.heavy_condition:
                cond = await self.run_off_loop(self.model.condition, job)
            else:
                cond = self.model.condition(job)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        req = _Request(job, loop.create_future(), np.zeros((job.n, *shape), np.float32), job.n, time.monotonic())
        req.promise = promise
        req.watch = watch
        self._add_lanes(req, plan, cond, shape)
        self._ensure_loop()
        try:
            return await req.future
        except asyncio.CancelledError:
            self._drop(req, None)
            raise

    def _admit(self, job: DiffusionJob) -> float | None:
        """The instant by which `job` should finish if admitted; raises if it cannot be admitted.

        A newly admitted request can delay every queued one (short lanes go first), so it is
        admitted only if all queued work plus its own drains, at the measured pace, before the
        earliest finish promised to any queued request and before its own promise. A request
        that could not finish in time even on an idle replica is refused for good (TooCostly),
        not with a 503 a client would retry forever."""
        if self.queued_lanes + job.n > self.max_queued_lanes:
            raise Overloaded(
                f"model {self.model.name!r} has {self.queued_lanes} images queued; "
                f"limit {self.max_queued_lanes}, this request adds {job.n}"
            )
        now = time.monotonic()
        if job.deadline is None or job.probe:
            return None
        budget = job.deadline - now
        steps = job.steps - job.start
        least = self.pace.drain_seconds(job.cost, steps, self.max_batch, least=True)
        if least is not None and PACE_ALLOWANCE * least > DEADLINE_SHARE_MAX * budget:
            pace = job.cost / least  # rows per second at this request's own batch size
            most = int(pace * DEADLINE_SHARE_MAX * budget / PACE_ALLOWANCE)
            raise TooCostly(
                f"this request is {job.cost} network rows (n x steps x rows = {job.n} x {job.steps} x {job.rows}); "
                f"model {self.model.name!r} runs about {pace:.0f} rows/s at its batch size, so it needs about "
                f"{least:.0f}s even on an idle replica, too close to its {budget:.0f}s deadline. The most this "
                f"replica takes in one request is about {most} rows: ask for fewer images or steps",
                field="steps",
            )
        alone = self.pace.drain_seconds(job.cost, steps, self.max_batch)
        wait = self.estimated_wait(job)
        if alone is None or wait is None:
            return now + ADMISSION_MARGIN * budget
        promise = now + min(DEADLINE_SHARE_MAX * budget, max(ADMISSION_MARGIN * budget, PACE_ALLOWANCE * alone))
        if not self._lanes:
            return promise  # an idle replica takes what it can finish: nothing else waits on it
        earliest = min([promise, *(r.promise for r in self._requests() if r.promise is not None)])
        if now + wait > earliest:
            raise Overloaded(
                f"model {self.model.name!r} would finish its queued work and this request in about {wait:.0f}s, "
                f"past the {earliest - now:.0f}s by which a queued request (or this one) should finish",
                retry_after=max(1.0, round(now + wait - earliest)),
            )
        return promise

    def warm_up(self, job: DiffusionJob, calls: int = 2) -> None:
        """Runs the bare network on `job`'s conditioning at one lane and at a full batch, `calls`
        times each, before the first request: ONNX Runtime sets up both shapes, and the pace learns
        the least an iteration costs at each (what a definitive 422 reads). Blocks; call it once,
        before serving."""
        self._time_bare(job, calls)
        self._retimes_left = IDLE_RETIMES

    async def retime_when_idle(self, job: DiffusionJob) -> bool:
        """Times the bare network at one lane and a full batch once more, on the compute thread,
        when no lane is queued; at most `IDLE_RETIMES` times after the warm-up. A warm-up timed
        while the machine was busy (replicas starting side by side) leaves least times too slow,
        and no real full batch may run to correct them before a request is costed against them;
        the least only falls, so a quiet moment's timing is what stays. A request arriving
        meanwhile waits for two calls. Returns whether it timed."""
        if self._lanes or self._retimes_left <= 0:
            return False
        self._retimes_left -= 1
        await self.run_off_loop(self._time_bare, job, 1)
        return True

    def _time_bare(self, job: DiffusionJob, calls: int) -> None:
        """`calls` bare network calls of `job`'s conditioning at one lane and at a full batch, each
        a lower bound for the pace."""
        shape, plan, cond = self.model.lane_shape(job), self.model.plan(job), self.model.condition(job)
        for lanes in sorted({1, max(1, self.max_batch // job.rows)}):
            x = np.zeros((lanes, *shape), np.float32)
            timesteps = np.full(lanes, plan.timesteps[0])
            counts = np.full(lanes, plan.num_steps, np.int64)
            guided = np.arange(lanes) if job.rows == 2 else np.zeros(0, np.int64)
            for _ in range(calls):
                t0 = time.perf_counter()
                self.model.run(x, timesteps, [cond] * lanes, guided, counts)
                self.pace.observe_least(lanes * job.rows, time.perf_counter() - t0)

    def _requests(self) -> set[_Request]:
        return {lane.request for lane in self._lanes}

    async def run_off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs `fn(*args)` on the compute thread, between iterations (a text encoder, a decoder):
        one thread computes for the replica, so work off the loop never fights the steps for cores."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _add_lanes(self, req: _Request, plan: SamplerPlan, cond: Any, shape: tuple[int, ...]) -> None:
        job = req.job
        guided = job.rows == 2
        self._seq += 1
        for i in range(job.n):
            rng = image_rng(job.seed, i)
            x = rng.standard_normal(shape).astype(np.float32)
            if job.initial is not None:
                x = job.initial[i].astype(np.float32)
            if job.edit is not None and job.start > 0:  # SDEdit: the input noised to the first step's level
                x = (plan.alpha[0] * job.edit.image + plan.sigma[0] * x).astype(np.float32)
            lane = _Lane(req, i, plan, rng, cond, guided, x, np.zeros_like(x), self._seq)
            self._lanes.append(lane)
        self._wake.set()

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def _drop(self, req: _Request, error: GenserveError | None) -> None:
        """Removes the request's lanes; fails its future with `error`, or cancels it (None)."""
        self._lanes = [lane for lane in self._lanes if lane.request is not req]
        if req.future.done():
            return
        if error is None:
            req.future.cancel()
        else:
            req.future.set_exception(error)

    def _expire(self, now: float) -> None:
        for req in self._requests():
            if req.job.deadline is not None and now > req.job.deadline:
                self._drop(req, DeadlineExceeded(f"request passed its deadline after {now - req.submitted:.2f}s"))

    def _select(self) -> list[_Lane]:
        """Up to `max_batch` rows, fewest remaining steps (less aging credit) first; lanes of
        another shape than the first chosen (a text model's other image sizes) wait their turn."""
        chosen: list[_Lane] = []
        rows = 0
        for lane in sorted(self._lanes, key=lambda ln: ln.priority(self.aging)):
            if rows + lane.rows <= self.max_batch and (not chosen or lane.x.shape == chosen[0].x.shape):
                chosen.append(lane)
                rows += lane.rows
            else:
                lane.skipped += 1
        return chosen

    def _stack(self, lanes: list[_Lane]) -> _Batch:
        shape = lanes[0].x.shape
        coeffs = np.empty((len(lanes), 6), np.float64)
        z = np.zeros((len(lanes), *shape), np.float32)
        masks = [ln.request.job.edit.mask if ln.request.job.edit is not None else None for ln in lanes]
        inpainting = any(m is not None for m in masks)
        keep = np.zeros((len(lanes), *shape), np.float32) if inpainting else None
        known = np.zeros((len(lanes), *shape), np.float32) if inpainting else None
        for k, lane in enumerate(lanes):
            p, s = lane.plan, lane.step
            coeffs[k] = (p.alpha[s], p.sigma[s], p.a[s], p.b[s], p.c[s], p.d[s])
            if p.d[s] != 0.0:
                z[k] = lane.rng.standard_normal(lane.x.shape)
            mask = masks[k]
            if keep is not None and known is not None and mask is not None:
                keep[k] = 1.0 - mask
                known[k] = self._known_at_next(lane)
        x, x0_prev = np.stack([ln.x for ln in lanes]), np.stack([ln.x0_prev for ln in lanes])
        return _Batch(lanes, x, x0_prev, coeffs, z, keep, known)

    def _known_at_next(self, lane: _Lane) -> np.ndarray:
        """An inpainting lane's input image at the noise level its current step goes to: fresh
        noise from the lane's own generator (q(x_t | x_0), as RePaint), the image itself at the end."""
        edit = lane.request.job.edit
        assert edit is not None
        if lane.step + 1 == lane.plan.num_steps:
            return edit.image
        abar = float(lane.plan.alpha[lane.step + 1]) ** 2
        noise = lane.rng.standard_normal(lane.x.shape)
        noised: np.ndarray = (np.sqrt(abar) * edit.image + np.sqrt(1.0 - abar) * noise).astype(np.float32)
        return noised

    def _compute(self, batch: _Batch) -> tuple[np.ndarray, np.ndarray, float]:
        """Network call and coefficient update for one iteration (runs in the executor thread)."""
        t0 = time.perf_counter()
        lanes = batch.lanes
        gi = np.flatnonzero([ln.guided for ln in lanes])
        timesteps = np.array([ln.plan.timesteps[ln.step] for ln in lanes])
        counts = np.array([ln.plan.num_steps for ln in lanes], np.int64)
        out = self.model.run(batch.x, timesteps, [ln.cond for ln in lanes], gi, counts)
        pred = out[: len(lanes)]
        if len(gi):
            w = np.array([ln.request.job.guidance for ln in lanes], np.float32)[gi, None, None, None]
            uncond = out[len(lanes) :]
            pred[gi] = uncond + w * (pred[gi] - uncond)
        c = batch.coeffs.astype(np.float32)[(slice(None), slice(None), *(None,) * (batch.x.ndim - 1))]
        x0 = x0_from_output(pred, batch.x, c[:, 0], c[:, 1], self.model.prediction_type)
        x_next = c[:, 2] * batch.x + c[:, 3] * x0 + c[:, 4] * batch.x0_prev + c[:, 5] * batch.z
        if batch.keep is not None and batch.known is not None:
            x_next = np.where(batch.keep > 0, batch.known, x_next)
        return x_next, x0, time.perf_counter() - t0

    def _advance(self, batch: _Batch, x_next: np.ndarray, x0: np.ndarray, sent: float) -> None:
        """Writes results back into live lanes and resolves requests whose last lane finished;
        `sent` is the monotonic instant the batch went to the network (a request's queue time ends
        at its first)."""
        now = time.monotonic()
        finished: set[int] = set()
        for k, lane in enumerate(batch.lanes):
            req = lane.request
            if req.future.done():  # cancelled or expired while the network ran
                continue
            if req.first_call is None:
                req.first_call = sent
            lane.x, lane.x0_prev, lane.step, lane.skipped = x_next[k], x0[k], lane.step + 1, 0
            if req.watch is not None:
                req.watch(lane.index, lane.step, x0[k])
            if lane.step == lane.plan.num_steps:
                req.images[lane.index] = lane.x
                req.remaining -= 1
                finished.add(id(lane))
                if req.remaining == 0:
                    stats = RequestStats(req.first_call - req.submitted, now - req.submitted, req.iterations + 1)
                    req.future.set_result(DiffusionResult(req.images, stats))
        for req in {lane.request for lane in batch.lanes}:
            req.iterations += 1
        self._lanes = [ln for ln in self._lanes if id(ln) not in finished and not ln.request.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        cycle_start: float | None = None  # start of the current busy cycle (None after idling)
        while True:
            self._expire(time.monotonic())
            if not self._lanes:
                self._wake.clear()
                await self._wake.wait()
                cycle_start = None
                continue
            if cycle_start is None:
                cycle_start = time.perf_counter()
            batch = self._stack(self._select())
            sent = time.monotonic()
            try:
                x_next, x0, seconds = await loop.run_in_executor(self._executor, self._compute, batch)
            except Exception as e:  # a failing network call fails its requests, not the loop
                for req in {lane.request for lane in batch.lanes}:
                    self._drop(req, GenserveError(f"network call failed: {e}"))
                continue
            self._advance(batch, x_next, x0, sent)
            # Wall time from one iteration to the next: the network call plus everything else
            # the replica does meanwhile, which the admission estimate must cover.
            now = time.perf_counter()
            self.pace.observe(sum(ln.rows for ln in batch.lanes), max(now - cycle_start, seconds, 1e-6))
            cycle_start = now
            if self.on_step is not None:
                reqs = len({id(lane.request) for lane in batch.lanes})
                self.on_step(StepStats(int(sum(ln.rows for ln in batch.lanes)), len(batch.lanes), reqs, seconds))

    async def close(self) -> None:
        """Stops the loop, failing whatever is still queued."""
        for req in self._requests():
            self._drop(req, Overloaded("scheduler is shutting down"))
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self._executor.shutdown(wait=False)

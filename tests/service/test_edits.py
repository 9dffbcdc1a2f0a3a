"""Image-to-image (SDEdit) and inpainting in the step scheduler, with the shipped diffusion model:
lanes that start mid-trajectory or keep known pixels share batches with plain ones and stay exact."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service import latents
from service.images import to_uint8
from service.jobs import DiffusionJob, Edit, start_step
from service.registry import LoadedModel, load_model
from service.samplers import make_plan
from service.scheduler import StepScheduler, preview_steps

SHIPPED = Path(__file__).resolve().parents[2] / "exported"


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(SHIPPED / "diffusion", device="cpu")


@pytest.fixture(scope="module")
def digit(model: LoadedModel) -> np.ndarray:
    """A digit 4 from the model itself, quantised to 8 bits as an upload would be: (1, 28, 28)."""
    x = run(model, [DiffusionJob(seed=77, n=1, steps=10, label=4)])[0][0]
    return (to_uint8(x[None])[0].transpose(2, 0, 1).astype(np.float32) / 127.5 - 1).astype(np.float32)


def run(model: LoadedModel, jobs: list[DiffusionJob], max_batch: int = 64) -> list[np.ndarray]:
    async def go() -> list[np.ndarray]:
        s = StepScheduler(model, max_batch=max_batch)
        try:
            return [r.images for r in await asyncio.gather(*(s.submit(j) for j in jobs))]
        finally:
            await s.close()

    return asyncio.run(go())


def test_strength_picks_the_tail_of_the_plan() -> None:
    assert [start_step(20, s) for s in (1.0, 0.6, 0.25, 0.01)] == [0, 8, 15, 19]
    abar = np.linspace(0.9999, 0.0001, 1000)
    full, tail = make_plan("dpmpp_2m", 20, abar), make_plan("dpmpp_2m", 20, abar, start=8)
    assert np.array_equal(tail.timesteps, full.timesteps[8:]) and tail.c[0] == 0.0  # first order at its start
    with pytest.raises(ValueError, match="outside"):
        make_plan("ddim", 20, abar, start=20)
    image = np.zeros((1, 28, 28), np.float32)
    assert DiffusionJob(seed=0, n=3, steps=20, edit=Edit(image, 0.5)).cost == 3 * 10


def test_strength_one_gives_exactly_the_plain_samples_pixels(model: LoadedModel, digit: np.ndarray) -> None:
    plain = DiffusionJob(seed=5, n=2, steps=10, sampler="dpmpp_2m", label=7)
    edited = DiffusionJob(seed=5, n=2, steps=10, sampler="dpmpp_2m", label=7, edit=Edit(digit, 1.0))
    a, b = run(model, [plain, edited])
    assert np.array_equal(a, b)


def test_low_strength_keeps_the_input_and_high_strength_follows_the_label(
    model: LoadedModel, digit: np.ndarray
) -> None:
    jobs = [DiffusionJob(seed=9, n=4, steps=20, label=1, edit=Edit(digit, s)) for s in (0.2, 0.9)]
    low, high = run(model, jobs)
    assert np.abs(low - digit).mean() < 0.5 * np.abs(high - digit).mean()


def test_inpainting_returns_the_kept_pixels_exactly(model: LoadedModel, digit: np.ndarray) -> None:
    mask = np.zeros_like(digit)
    mask[:, :14] = 1.0  # regenerate the top half
    for sampler in ("ddpm", "ddim", "dpmpp_2m"):
        out = run(model, [DiffusionJob(seed=3, n=3, steps=12, sampler=sampler, label=4, edit=Edit(digit, 1.0, mask))])[
            0
        ]
        kept = np.broadcast_to(mask == 0, out.shape)
        assert np.array_equal(out[kept], np.broadcast_to(digit, out.shape)[kept]), sampler
        assert np.array_equal(to_uint8(out)[..., 0][:, 14:], np.repeat(to_uint8(digit[None])[..., 0][:, 14:], 3, 0))
        assert not np.array_equal(out[:, :, :14], np.broadcast_to(digit, out.shape)[:, :, :14])


def test_edit_lanes_share_batches_with_plain_ones_and_match_their_solo_runs(
    model: LoadedModel, digit: np.ndarray
) -> None:
    mask = np.zeros_like(digit)
    mask[:, :, 14:] = 1.0
    jobs = [
        DiffusionJob(seed=1, n=2, steps=20, sampler="ddim", label=2, guidance=2.0),
        DiffusionJob(seed=2, n=3, steps=20, sampler="dpmpp_2m", label=8, edit=Edit(digit, 0.5)),
        DiffusionJob(seed=3, n=2, steps=15, sampler="ddpm", label=4, edit=Edit(digit, 0.8, mask)),
    ]
    together = run(model, jobs, max_batch=64)
    for job, images in zip(jobs, together, strict=True):
        np.testing.assert_allclose(images, run(model, [job], max_batch=3)[0], atol=1e-5)


def test_interpolation_frames_start_from_slerped_noise_and_end_at_the_seeds_samples(model: LoadedModel) -> None:
    shape = model.card.image_shape
    initial = latents.slerp(latents.seed_noise(shape, 11), latents.seed_noise(shape, 12), 4)
    job = DiffusionJob(seed=11, n=4, steps=10, label=5, initial=initial.reshape(4, *shape).astype(np.float32))
    frames, a, b = run(
        model, [job, DiffusionJob(seed=11, n=1, steps=10, label=5), DiffusionJob(seed=12, n=1, steps=10, label=5)]
    )
    assert np.array_equal(frames[0], a[0]) and np.array_equal(frames[-1], b[0])  # dpmpp_2m is deterministic
    assert not np.array_equal(frames[1], frames[2])


def test_a_watcher_sees_every_step_and_previews_spread_evenly(model: LoadedModel) -> None:
    assert preview_steps(20, 3) == {5, 10, 15} and preview_steps(2, 3) == {1} and preview_steps(1, 2) == frozenset()
    seen: list[tuple[int, int]] = []

    async def go() -> np.ndarray:
        s = StepScheduler(model)
        try:
            job = DiffusionJob(seed=4, n=2, steps=12, label=1)
            return (await s.submit(job, lambda i, step, x0: seen.append((i, step)))).images
        finally:
            await s.close()

    images = asyncio.run(go())
    assert sorted(seen) == [(i, step) for i in (0, 1) for step in range(1, 13)]  # every step of every image
    assert np.array_equal(
        images, run(model, [DiffusionJob(seed=4, n=2, steps=12, label=1)])[0]
    )  # watching changes nothing

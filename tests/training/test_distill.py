"""The distilled student: the teacher's trajectory, the DDIM targets, and a few training steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.samplers import make_plan
from training import checkpoint, distill
from training.train import TRAINERS, DiffusionRecipe, default_config, make_unet

RECIPE = DiffusionRecipe(prediction="v_prediction", schedule="cosine", min_snr=5.0, arch="small")


def _teacher(tmp_path: Path) -> Path:
    cfg = default_config("diffusion", steps=2, batch_size=8, checkpoint_dir=tmp_path, recipe=RECIPE)
    TRAINERS["diffusion"](cfg).save_weights(tmp_path / "teacher.safetensors")
    return tmp_path / "teacher.safetensors"


def test_teacher_states_follow_the_serving_sampler(tmp_path: Path) -> None:
    """States at the 4-step grid and the final image equal a step-by-step run of the served plan."""
    teacher, recipe, _ = distill.load_teacher(_teacher(tmp_path), "cpu")
    g = torch.Generator().manual_seed(0)
    noise, labels = torch.randn(3, 1, 28, 28, generator=g), torch.tensor([1, 5, 10])
    states = distill.teacher_states(teacher, recipe, labels, noise)
    assert states.shape == (3, distill.GRID + 1, 1, 28, 28)
    plan = make_plan("dpmpp_2m", distill.TEACHER_STEPS, recipe.alphas_cumprod().numpy().astype(np.float64))
    x, prev, seen = noise.numpy().astype(np.float64), None, []
    for i, t in enumerate(plan.timesteps):
        if t in (999, 749, 499, 249):
            seen.append(x.copy())
        with torch.no_grad():
            v = teacher(torch.from_numpy(x).float(), torch.full((3,), float(t)), labels).double().numpy()
        x0 = plan.alpha[i] * x - plan.sigma[i] * v
        x = plan.a[i] * x + plan.b[i] * x0 + (plan.c[i] * prev if prev is not None else 0.0)
        prev = x0
    seen.append(x)
    np.testing.assert_allclose(states.numpy(), np.stack(seen, axis=1), atol=1e-3)


def test_a_ddim_step_with_the_target_lands_on_the_teachers_next_state() -> None:
    """The student's x0 target is exactly the one that makes DDIM reach the teacher's next state."""
    abar = RECIPE.alphas_cumprod().numpy().astype(np.float64)
    ts, alpha, sigma = distill._grid_coefficients(RECIPE, "cpu")
    rng = np.random.default_rng(0)
    for k in distill.STUDENT_STEPS:
        plan = make_plan("ddim", k, abar)
        stride = distill.GRID // k
        assert plan.timesteps.tolist() == ts[::stride].long().tolist()
        for i in range(k):
            x, x_next = rng.standard_normal(4), rng.standard_normal(4)
            s, e = i * stride, (i + 1) * stride
            c = float(sigma[e] / sigma[s])
            target = (x_next - c * x) / float(alpha[e] - c * alpha[s])
            np.testing.assert_allclose(plan.a[i] * x + plan.b[i] * target, x_next, atol=1e-5)


def test_distillation_trains_resumes_and_starts_as_its_teacher(tmp_path: Path) -> None:
    teacher_path = _teacher(tmp_path)
    cfg = default_config("distilled", steps=2, batch_size=8, checkpoint_dir=tmp_path)
    # Zero steps: the student (any step count) is its teacher, since the step embedding starts at zero.
    fresh = distill.distill(
        default_config("distilled", steps=0, checkpoint_dir=tmp_path / "z"), teacher_path, pool_size=8
    )
    teacher, _, _ = distill.load_teacher(teacher_path, "cpu")
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([999.0, 499.0]), torch.tensor([3, 10])
    with torch.no_grad():
        student_out = fresh.modules["ema"](x, t, y, torch.tensor([1, 4]))
        assert torch.allclose(student_out, teacher(x, t, y), atol=1e-6)
    trainer = distill.distill(cfg, teacher_path, pool_size=8)
    assert trainer.step == 2
    meta = checkpoint.read_meta(tmp_path / "distilled.safetensors")
    assert meta["teacher"]["path"] == str(teacher_path) and meta["recipe"]["prediction"] == "v_prediction"
    trainer.save_weights(tmp_path / "w.safetensors")
    resumed = distill.distill(
        default_config(
            "distilled", steps=3, batch_size=8, checkpoint_dir=tmp_path / "r", resume_from=tmp_path / "w.safetensors"
        ),
        teacher_path,
        pool_size=8,
    )
    assert resumed.step == 3
    net = make_unet(RECIPE, max_steps=4)
    net.load_state_dict(
        checkpoint.module_state(checkpoint.load_tensors(tmp_path / "r" / "distilled.safetensors"), "ema")
    )


def test_a_narrow_student_starts_from_a_slice_of_its_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Width pruning: each layer keeps the teacher's first channels, of each half where an up
    block reads the path from below and the skip side by side; embeddings whole."""
    teacher_path = _teacher(tmp_path)
    teacher, _, _ = distill.load_teacher(teacher_path, "cpu")
    trainer = distill.distill(
        default_config("distilled", steps=0, checkpoint_dir=tmp_path / "n"), teacher_path, pool_size=8, arch="narrow"
    )
    student, t = trainer.modules["model"].state_dict(), teacher.state_dict()
    assert student["conv_in.weight"].shape[0] == 24
    assert torch.equal(student["conv_in.weight"], t["conv_in.weight"][:24])
    assert torch.equal(student["down.1.conv2.weight"], t["down.1.conv2.weight"][:48, :48])
    # up.0 reads mid (64 wide in the teacher, 48 in the student) then the 7x7 skip (64 / 48)
    assert torch.equal(student["up.0.conv1.weight"][:, :48], t["up.0.conv1.weight"][:48, :48])
    assert torch.equal(student["up.0.conv1.weight"][:, 48:], t["up.0.conv1.weight"][:48, 64:112])
    # up.2 reads 64 (48) channels from below, then the 28x28 skip, 32 (24) wide
    assert torch.equal(
        student["up.2.norm1.weight"], torch.cat([t["up.2.norm1.weight"][:48], t["up.2.norm1.weight"][64:88]])
    )
    assert torch.equal(student["up.2.skip.weight"][:, 48:], t["up.2.skip.weight"][:24, 64:88])
    assert torch.equal(student["upsample.1.weight"], t["upsample.1.weight"][:48, :48])
    assert torch.equal(student["conv_out.weight"], t["conv_out.weight"][:, :24])
    for name in ("time_mlp.0.weight", "time_mlp.2.weight", "label_emb.weight"):
        assert torch.equal(student[name], t[name])
    assert not student["steps_emb.weight"].any()

    cfg = default_config("distilled", steps=2, batch_size=8, checkpoint_dir=tmp_path / "n")
    assert distill.distill(cfg, teacher_path, pool_size=8).step == 2  # resumed: no --arch needed
    meta = checkpoint.read_meta(tmp_path / "n" / "distilled.safetensors")
    assert meta["recipe"]["arch"] == "narrow" and meta["teacher"]["arch"] == "small"

    # A run with no steps left (to write the weights out) draws no teacher trajectories.
    def no_teacher(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(distill, "teacher_states", no_teacher)
    assert distill.distill(cfg, teacher_path, pool_size=8).step == 2

"""Training smoke runs (seconds): every family's loss is finite, checkpoints resume where they stopped."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from training.train import TRAINERS, default_config


@pytest.mark.parametrize("family", ["gan", "vae", "diffusion", "classifier"])
def test_a_few_steps_train_and_resume(family: str, tmp_path: Path) -> None:
    trainer = TRAINERS[family](
        default_config(family, steps=3, batch_size=8, checkpoint_dir=tmp_path, checkpoint_every=2)
    )
    assert trainer.step == 3
    state = torch.load(tmp_path / f"{family}.pt", weights_only=True)
    assert state["step"] == 3
    weights = {k: v.clone() for k, v in next(iter(trainer.modules.values())).state_dict().items()}
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    # Resuming continues from step 3 to 5 rather than starting again.
    resumed = TRAINERS[family](default_config(family, steps=5, batch_size=8, checkpoint_dir=tmp_path))
    assert resumed.step == 5
    changed = any(
        not torch.equal(weights[k], v)
        for k, v in next(iter(resumed.modules.values())).state_dict().items()
        if v.is_floating_point()
    )
    assert changed, "resumed training did not update the weights"


def test_diffusion_loss_falls_on_a_tiny_run(tmp_path: Path) -> None:
    losses: list[float] = []
    import training.train as tr

    original = tr.Trainer.run

    def record(self, step_fn, x, y):  # type: ignore[no-untyped-def]
        def wrapped(xb, yb, gen):  # type: ignore[no-untyped-def]
            out = step_fn(xb, yb, gen)
            losses.append(out["loss"])
            return out

        return original(self, wrapped, x, y)

    tr.Trainer.run = record  # type: ignore[method-assign]
    try:
        TRAINERS["diffusion"](default_config("diffusion", steps=12, batch_size=16, checkpoint_dir=tmp_path))
    finally:
        tr.Trainer.run = original  # type: ignore[method-assign]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3

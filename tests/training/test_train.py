"""Training smoke runs (seconds): every family's loss is finite, checkpoints resume where they stopped."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from training import checkpoint
from training.train import TRAINERS, DiffusionRecipe, default_config


@pytest.mark.parametrize("family", ["gan", "vae", "diffusion", "classifier"])
def test_a_few_steps_train_and_resume(family: str, tmp_path: Path) -> None:
    trainer = TRAINERS[family](
        default_config(family, steps=3, batch_size=8, checkpoint_dir=tmp_path, checkpoint_every=2)
    )
    assert trainer.step == 3
    assert checkpoint.read_meta(tmp_path / f"{family}.safetensors")["step"] == 3
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


def test_recipe_variants_train_and_a_resumed_run_keeps_its_recipe(tmp_path: Path) -> None:
    recipe = DiffusionRecipe(prediction="v_prediction", schedule="cosine", min_snr=5.0, arch="base")
    cfg = default_config("diffusion", steps=2, batch_size=8, checkpoint_dir=tmp_path, recipe=recipe, snapshots=(1,))
    TRAINERS["diffusion"](cfg)
    assert (tmp_path / "diffusion-step1.safetensors").exists()
    snapshot = checkpoint.load_tensors(tmp_path / "diffusion-step1.safetensors")
    assert snapshot and all(k.startswith("ema/") for k in snapshot)  # the EMA weights alone
    # Started again with the default (small, epsilon) recipe on the command line: the checkpoint's wins.
    resumed = TRAINERS["diffusion"](default_config("diffusion", steps=3, batch_size=8, checkpoint_dir=tmp_path))
    assert resumed.step == 3 and resumed.cfg.recipe == recipe


def test_checkpoint_round_trip_keeps_weights_and_optimiser_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    checkpoint.save(tmp_path / "c.safetensors", {"net": net}, {"opt": opt}, {"step": 1})
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=5.0)
    meta = checkpoint.restore(tmp_path / "c.safetensors", {"net": net2}, {"opt": opt2})
    assert meta == {"step": 1}
    assert torch.equal(net.weight, net2.weight)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 1e-3
    for i in s1["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(s1["state"][i][key]), torch.as_tensor(s2["state"][i][key]))
    # A weights-only file restores the weights and leaves a fresh optimiser alone.
    checkpoint.save(tmp_path / "w.safetensors", {"net": net}, None, {"step": 1})
    opt3 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    checkpoint.restore(tmp_path / "w.safetensors", {"net": torch.nn.Linear(3, 2)}, {"opt": opt3})
    assert opt3.state_dict()["state"] == {}


def test_a_fine_tune_of_weights_alone_warms_up_again_and_decays_to_zero(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    first = TRAINERS["diffusion"](default_config("diffusion", steps=4, batch_size=8, checkpoint_dir=tmp_path / "a"))
    first.save_weights(weights)  # the committed form: weights, no optimiser state
    # A checkpoint with its optimiser state keeps counting from step 0: past warm-up at step 300.
    first.step = 300
    assert first.opt_start == 0 and first.lr() == first.cfg.lr
    cfg = default_config(
        "diffusion", steps=8, batch_size=8, lr=1e-3, checkpoint_dir=tmp_path / "b", resume_from=weights, lr_decay=True
    )
    tuned = TRAINERS["diffusion"](cfg)
    assert tuned.step == 8 and tuned.opt_start == 4  # fresh Adam moments from step 4
    assert checkpoint.read_meta(tmp_path / "b" / "diffusion.safetensors")["opt_start"] == 4
    rates = []
    for step in (4, 5, 6, 8):
        tuned.step = step
        rates.append(tuned.lr())
    warm = [cfg.lr * (k + 1) / 200 for k in (0, 1, 2)]
    decay = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in (0, 1, 2)]
    assert rates[:3] == pytest.approx([w * d for w, d in zip(warm, decay, strict=True)])
    assert rates[3] == 0.0


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
def test_diffusion_loss_drops_the_share_of_labels_it_is_given(share: float) -> None:
    """`--label-dropout`: the network sees the null label for about that share of the batch."""
    from training import nets
    from training.train import diffusion_loss

    seen: list[torch.Tensor] = []

    def net(xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(y)
        return torch.zeros_like(xt)

    recipe = DiffusionRecipe()
    y = torch.arange(4000) % 10
    loss = diffusion_loss(
        net,  # type: ignore[arg-type]
        recipe,
        recipe.alphas_cumprod(),
        torch.zeros(4000, 1, 2, 2),
        y,
        torch.Generator().manual_seed(0),
        label_dropout=share,
    )
    assert torch.isfinite(loss)
    dropped = seen[0] == nets.NULL_LABEL
    assert abs(dropped.float().mean().item() - share) < 0.03
    assert torch.equal(seen[0][~dropped], y[~dropped])

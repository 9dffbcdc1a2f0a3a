"""Shared fixtures: tiny ONNX generators (built with torch, exported like the real ones) in model folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deployments.loopback import keep_ray_on_loopback

keep_ray_on_loopback()  # before any test module imports ray: every Ray port on loopback

SHIPPED = Path(__file__).resolve().parent.parent / "exported"


def _tiny_latent_net(z_dim: int) -> Any:
    import torch
    from torch import nn

    class TinyLatent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(11, z_dim)
            self.fc = nn.Linear(z_dim, 28 * 28)

        def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.fc(z + self.embed(label))).view(-1, 1, 28, 28)

    torch.manual_seed(0)
    return TinyLatent()


def _tiny_eps_net() -> Any:
    import torch
    from torch import nn

    class TinyEps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, 1, 1)
            self.embed = nn.Embedding(11, 1)

        def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            scale = (t.float() / 1000.0).view(-1, 1, 1, 1)
            return torch.tanh(self.conv(x)) * scale + self.embed(label).view(-1, 1, 1, 1) * 0.1

    torch.manual_seed(0)
    return TinyEps()


def tiny_card(name: str, family: str, **extra: Any) -> dict[str, Any]:
    card: dict[str, Any] = {
        "name": name,
        "family": family,
        "image": {"channels": 1, "height": 28, "width": 28},
        "labels": [str(i) for i in range(10)],
        "null_label": 10,
        "provenance": {"data": "random weights", "training_steps": 0, "command": "tests/conftest.py"},
    }
    card.update(extra)
    return card


def write_tiny_models(root: Path) -> Path:
    """A model directory with a tiny gan, vae and diffusion model (random weights)."""
    import torch

    from training.export import export_onnx

    latent_io = {"file": "model.onnx", "inputs": {"latent": "z", "label": "label"}, "output": "image"}
    for fam in ("gan", "vae"):
        folder = root / f"tiny-{fam}"
        export_onnx(
            _tiny_latent_net(8),
            (torch.randn(2, 8), torch.zeros(2, dtype=torch.long)),
            folder / "model.onnx",
            ["z", "label"],
            ["image"],
        )
        (folder / "model.json").write_text(json.dumps(tiny_card(folder.name, fam, latent_dim=8, onnx=latent_io)))
    folder = root / "tiny-diffusion"
    args = (torch.randn(2, 1, 28, 28), torch.ones(2), torch.zeros(2, dtype=torch.long))
    export_onnx(_tiny_eps_net(), args, folder / "model.onnx", ["x", "t", "label"], ["eps"])
    schedule = {"beta_schedule": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon"}
    io = {"file": "model.onnx", "inputs": {"sample": "x", "timestep": "t", "label": "label"}, "output": "eps"}
    (folder / "model.json").write_text(json.dumps(tiny_card(folder.name, "diffusion", schedule=schedule, onnx=io)))
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_models(tmp_path_factory.mktemp("models"))

"""The serving library imports neither torch nor ray (DESIGN.md: the serving path is torch-free),
nor the model libraries the training side uses (diffusers, transformers, tokenizers)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import service

ROOT = Path(service.__file__).resolve().parent.parent


def test_service_imports_neither_torch_nor_ray() -> None:
    modules = [f"service.{m.name}" for m in pkgutil.iter_modules(service.__path__)]
    assert len(modules) >= 10
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'ray', 'diffusers', 'transformers', 'tokenizers'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"service pulled in {out.stdout.strip()}"


def test_the_serving_path_never_unpickles() -> None:
    """Only ONNX files are loaded when serving: no pickle, torch.load or numpy object arrays."""
    for folder in ("service", "deployments"):
        for path in (ROOT / folder).glob("*.py"):
            text = path.read_text()
            for banned in ("import pickle", "torch.load", "allow_pickle=True", "cloudpickle.load"):
                assert banned not in text, f"{path.name} uses {banned}"

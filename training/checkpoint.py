"""Training checkpoints as safetensors: tensors only, nothing that runs code when loaded.

One file holds every module's weights (`<module>/<param>`), optionally the optimisers' state
(`optim/<name>/<index>/<key>`, with the param groups in the metadata) and a JSON metadata
record (`step`, the run's config, the recipe). A weights-only file (no `optim/` keys) is the
committed form: resuming from it restarts the optimiser moments and keeps everything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

OPTIM = "optim"


def save(
    path: Path,
    modules: dict[str, torch.nn.Module],
    optims: dict[str, torch.optim.Optimizer] | None,
    meta: dict[str, Any],
) -> None:
    """Writes atomically (a temporary file, then a rename), so a killed run leaves the old file."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}/{key}"] = value.detach().to("cpu").contiguous()
    groups: dict[str, Any] = {}
    for name, opt in (optims or {}).items():
        state = opt.state_dict()
        groups[name] = state["param_groups"]
        for index, entry in state["state"].items():
            for key, value in entry.items():
                t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
                tensors[f"{OPTIM}/{name}/{index}/{key}"] = t.detach().to("cpu").contiguous()
    metadata = {"meta": json.dumps(meta), "param_groups": json.dumps(groups)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def read_meta(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        meta: dict[str, Any] = json.loads((f.metadata() or {})["meta"])
    return meta


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def module_state(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """One module's state dict out of a checkpoint's tensors."""
    prefix = f"{name}/"
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise KeyError(f"checkpoint has no module {name!r}")
    return state


def restore(
    path: Path, modules: dict[str, torch.nn.Module], optims: dict[str, torch.optim.Optimizer] | None
) -> dict[str, Any]:
    """Loads weights (and optimiser state where the file has it); returns the metadata."""
    tensors = load_tensors(path)
    for name, module in modules.items():
        module.load_state_dict(module_state(tensors, name))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    groups = json.loads(metadata.get("param_groups", "{}"))
    for name, opt in (optims or {}).items():
        prefix = f"{OPTIM}/{name}/"
        entries: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, field = key[len(prefix) :].split("/", 1)
                entries.setdefault(int(index), {})[field] = value
        if name in groups and entries:
            opt.load_state_dict({"state": entries, "param_groups": groups[name]})
    meta: dict[str, Any] = json.loads(metadata["meta"])
    return meta

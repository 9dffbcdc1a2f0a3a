"""A few-step student distilled from the diffusion teacher's sampling trajectories.

Method: trajectory distillation with step-count conditioning, in the spirit of progressive
distillation (Salimans & Ho 2022), done in one stage rather than a chain of halvings. The
teacher runs DPM-Solver++(2M) for `TEACHER_STEPS` steps from noise (trailing spacing), and
we keep its states at the 4-step grid t = 999, 749, 499, 249 and its final image. The student
is the teacher's UNet plus an embedding of the step count k in {1, 2, 4}; at grid point t_i
of the k-step grid it learns the x0 estimate that makes one plain DDIM step land exactly on
the teacher's state at t_{i+1}. Served with DDIM at k steps, the student reproduces the
teacher's 16-step trajectory in k network calls.

Why this method: the student is an ordinary diffusion network sampled by DDIM, so the server
batches its lanes step by step exactly like the teacher's (per-row timestep and step count);
one network serves 1, 2 and 4 calls; and the targets come from the teacher alone (no
classifier, no adversary), so nothing is trained against the evaluation network. One stage
instead of log2(1000/k) halvings fits the compute here; the loss weight is progressive
distillation's truncated SNR, max(SNR, 1), in x0 space.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from service.samplers import make_plan
from training import nets
from training.train import (
    DiffusionRecipe,
    TrainConfig,
    Trainer,
    _drop_labels,
    _logs,
    _resumed_meta,
    denoiser_update,
    load_unet,
    make_unet,
)

TEACHER_STEPS = 16
STUDENT_STEPS = (1, 2, 4)
GRID = 4  # the finest student grid; coarser grids are every 2nd / 4th point of it
POOL_REFRESH_STEPS = 1000


def load_teacher(path: Path, device: str) -> tuple[nets.UNet, DiffusionRecipe, int]:
    """The teacher's EMA weights and recipe from a diffusion checkpoint (full or weights-only)."""
    net, recipe, meta = load_unet(path)
    return net.to(device).eval().requires_grad_(False), recipe, int(meta["step"])


def x0_hat(
    out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor | float, sigma: torch.Tensor | float, prediction: str
) -> torch.Tensor:
    if prediction == "epsilon":
        return (x - sigma * out) / alpha
    return alpha * x - sigma * out


@torch.no_grad()
def teacher_states(
    teacher: nets.UNet,
    recipe: DiffusionRecipe,
    labels: torch.Tensor,
    noise: torch.Tensor,
    guidance: float = 1.0,
    steps: int = TEACHER_STEPS,
) -> torch.Tensor:
    """(N, GRID + 1, C, H, W): the teacher's states at the 4-step grid points, then its image."""
    abar = recipe.alphas_cumprod().numpy().astype(np.float64)
    plan = make_plan("dpmpp_2m", steps, abar)
    grid = set(make_plan("ddim", GRID, abar).timesteps.tolist())
    if not grid <= set(plan.timesteps.tolist()):
        raise ValueError(f"the teacher's {steps}-step grid must contain the {GRID}-step grid")
    x, prev = noise, None
    states = []
    for i, t in enumerate(plan.timesteps.tolist()):
        if t in grid:
            states.append(x)
        tt = torch.full((len(x),), float(t), device=x.device)
        out = teacher(x, tt, labels)
        if guidance != 1.0:
            uncond = teacher(x, tt, torch.full_like(labels, nets.NULL_LABEL))
            out = uncond + guidance * (out - uncond)
        x0 = x0_hat(out, x, float(plan.alpha[i]), float(plan.sigma[i]), recipe.prediction)
        nxt = float(plan.a[i]) * x + float(plan.b[i]) * x0
        if prev is not None and plan.c[i] != 0.0:
            nxt = nxt + float(plan.c[i]) * prev
        x, prev = nxt.float(), x0
    states.append(x)
    return torch.stack(states, dim=1)


def _grid_coefficients(recipe: DiffusionRecipe, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Timesteps of the 4-step grid and (alpha, sigma) at each point, with the clean end (1, 0) appended."""
    abar = recipe.alphas_cumprod().numpy().astype(np.float64)
    ts = make_plan("ddim", GRID, abar).timesteps
    alpha = np.append(np.sqrt(abar[ts]), 1.0)
    sigma = np.append(np.sqrt(1.0 - abar[ts]), 0.0)
    as_t = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
    return as_t(ts.astype(np.float64)), as_t(alpha), as_t(sigma)


def _kept(name: str, dim: int, t_n: int, s_n: int, teacher: nets.UNet, student: nets.UNet) -> torch.Tensor:
    """Which of the teacher's `t_n` channels along `dim` of parameter `name` the student's `s_n`
    are: the first ones of each part where the layer reads a concatenation (an up block's input:
    the path from below, then the skip, as wide as the block's output; attention's q, k and v),
    else the first."""
    parts = ([t_n], [s_n])
    if name.startswith("up.") and (
        ".norm1." in name or (dim == 1 and name.rsplit(".", 1)[0].endswith((".conv1", ".skip")))
    ):
        j = int(name.split(".")[1])
        t_block, s_block = teacher.up[j], student.up[j]
        assert isinstance(t_block, nets.ResBlock) and isinstance(s_block, nets.ResBlock)
        t_in, t_out = t_block.conv1.in_channels, t_block.conv1.out_channels
        s_in, s_out = s_block.conv1.in_channels, s_block.conv1.out_channels
        parts = ([t_in - t_out, t_out], [s_in - s_out, s_out])
    elif ".qkv." in name and dim == 0:
        parts = ([t_n // 3] * 3, [s_n // 3] * 3)
    offsets = np.cumsum([0, *parts[0][:-1]])
    return torch.cat([torch.arange(int(o), int(o) + n) for o, n in zip(offsets, parts[1], strict=True)])


@torch.no_grad()
def narrowed(teacher: nets.UNet, student: nets.UNet) -> None:
    """Starts a narrower student from its teacher's weights (width pruning before distillation):
    each layer keeps the teacher's first channels (`_kept`), whole GroupNorm groups where the
    student keeps the teacher's group size, and the embeddings whole where their widths match.
    A start, not a copy: the distillation that follows is what makes the student good."""
    t_state = teacher.state_dict()
    for name, value in student.state_dict().items():
        if name not in t_state:  # the step embedding: zero, as for a full-width student
            continue
        w = t_state[name]
        for dim, (t_n, s_n) in enumerate(zip(w.shape, value.shape, strict=True)):
            if t_n != s_n:
                w = w.index_select(dim, _kept(name, dim, t_n, s_n, teacher, student).to(w.device))
        value.copy_(w)


def distill(
    cfg: TrainConfig, teacher_path: Path, guidance: float = 1.0, pool_size: int = 65536, arch: str | None = None
) -> Trainer:
    """Trains the student until `cfg.steps` (or `cfg.minutes`); checkpoints as `cfg.name`. The
    student has the teacher's UNet shape, or `arch` (a key of `nets.UNET_ARCHS`; a resumed run keeps
    the shape it started with)."""
    torch.manual_seed(cfg.seed)
    teacher, teacher_recipe, teacher_step = load_teacher(teacher_path, cfg.device)
    resumed = _resumed_meta(cfg)
    if resumed is not None:
        arch = resumed["recipe"]["arch"]
    recipe = cfg.recipe = replace(teacher_recipe, arch=arch or teacher_recipe.arch)
    student = make_unet(recipe, max_steps=max(STUDENT_STEPS))
    if recipe.arch == teacher_recipe.arch:
        student.load_state_dict(teacher.state_dict(), strict=False)  # all but the zero-initialised step embedding
    else:
        narrowed(teacher, student)
    ema = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    trainer = Trainer(cfg, {"model": student, "ema": ema}, {"opt": opt}, weights="ema")
    ts, alpha, sigma = _grid_coefficients(recipe, cfg.device)
    steps_choice = torch.tensor(STUDENT_STEPS, device=cfg.device)

    gen = torch.Generator(cfg.device).manual_seed(cfg.seed + 7919)
    pool_labels = torch.empty(pool_size, dtype=torch.long, device=cfg.device)
    pool = torch.empty(pool_size, GRID + 1, 1, 28, 28, device=cfg.device)

    def refill() -> None:
        """New teacher trajectories, written into the pool tensors in place (Trainer.run indexes them)."""
        chunk = 8192
        labels = _drop_labels(torch.randint(0, nets.N_LABELS, (pool_size,), generator=gen, device=cfg.device), 0.1, gen)
        for s in range(0, pool_size, chunk):
            lab = labels[s : s + chunk]
            noise = torch.randn(len(lab), 1, 28, 28, generator=gen, device=cfg.device)
            pool[s : s + chunk] = teacher_states(teacher, recipe, lab, noise, guidance)
        pool_labels.copy_(labels)

    def step(batch: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        if trainer.step % POOL_REFRESH_STEPS == 0 and trainer.step > 0:
            refill()
        n = len(batch)
        k = steps_choice[torch.randint(0, len(STUDENT_STEPS), (n,), generator=g, device=cfg.device)]
        stride = GRID // k
        i = (torch.rand(n, generator=g, device=cfg.device) * k).long()  # which of the k steps
        start, end = i * stride, (i + 1) * stride
        rows = torch.arange(n, device=cfg.device)
        x, x_next = batch[rows, start], batch[rows, end]
        a_t, s_t = alpha[start].view(-1, 1, 1, 1), sigma[start].view(-1, 1, 1, 1)
        a_n, s_n = alpha[end].view(-1, 1, 1, 1), sigma[end].view(-1, 1, 1, 1)
        # DDIM: x_next = c * x + (a_n - c * a_t) * x0, with c = s_n / s_t; solve for the x0 that lands on x_next.
        c = s_n / s_t
        target = (x_next - c * x) / (a_n - c * a_t)
        out = student(x, ts[start], y, k)
        pred = x0_hat(out, x, a_t, s_t, recipe.prediction)
        snr = (a_t / s_t).pow(2).view(-1)
        loss = (snr.clamp(min=1.0) * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        denoiser_update(opt, student, ema, loss, trainer.lr(), trainer.step, recipe.ema_decay)
        return _logs(cfg, trainer, loss=loss)

    if resumed is None or int(resumed["step"]) < cfg.steps:  # a run with steps left to train
        refill()
    trainer.extra_meta["teacher"] = {
        "path": str(teacher_path),
        "step": teacher_step,
        "arch": teacher_recipe.arch,
        "guidance": guidance,
        "pool_size": pool_size,
    }
    trainer.run(step, pool, pool_labels)
    return trainer

"""Training loops for the three generators and the evaluation classifier.

Each loop is resumable: it writes `checkpoints/<run>.safetensors` (kept out of git; `run`
defaults to the family) every `checkpoint_every` steps and on exit, and picks up from it when
started again, or from `resume_from` (a committed weights-only file) when it has none yet.
Loops run on the CPU or, with `device="cuda"`, on a GPU; `minutes` bounds a run's wall time.
"""

from __future__ import annotations

import copy
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from tqdm import tqdm

from service.schedules import alphas_cumprod_for, betas_for
from training import checkpoint, nets
from training.data import load_split

CHECKPOINT_DIR = Path("checkpoints")
# The noise schedule of the first shipped diffusion model (DDPM's); a recipe may pick cosine.
DIFFUSION_SCHEDULE: dict[str, Any] = {
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
}


@dataclass
class DiffusionRecipe:
    """The choices docs/training.md measures: what the UNet predicts, the schedule, the loss weight."""

    prediction: str = "epsilon"  # or "v_prediction"
    schedule: str = "linear"  # or "cosine"
    min_snr: float | None = None  # Min-SNR-gamma loss weighting (Hang et al. 2023); None: plain MSE
    arch: str = "small"  # a key of nets.UNET_ARCHS
    ema_decay: float = 0.999

    def noise_schedule(self) -> dict[str, Any]:
        """The card's `schedule` block for a model trained with this recipe."""
        return {**DIFFUSION_SCHEDULE, "beta_schedule": self.schedule, "prediction_type": self.prediction}

    def alphas_cumprod(self) -> torch.Tensor:
        s = self.noise_schedule()
        betas = betas_for(s["beta_schedule"], s["num_train_timesteps"], s["beta_start"], s["beta_end"])
        return torch.from_numpy(alphas_cumprod_for(betas)).float()


@dataclass
class TrainConfig:
    """What a training run needs to know; defaults are those of the shipped models."""

    family: str
    steps: int
    batch_size: int = 128
    lr: float = 2e-4
    seed: int = 0
    checkpoint_every: int = 250
    checkpoint_dir: Path = CHECKPOINT_DIR
    threads: int | None = None
    run: str | None = None  # checkpoint name; defaults to the family
    device: str = "cpu"
    minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    snapshots: tuple[int, ...] = ()  # also keep the EMA weights alone at these steps
    resume_from: Path | None = None
    lr_decay: bool = False  # cosine decay of the learning rate to zero at `steps` (denoisers)
    label_dropout: float = 0.1  # share of labels replaced by the null label (CFG and unconditional sampling)
    vae_arch: str = "small"  # the VAE's shape, a key of nets.VAE_ARCHS
    recipe: DiffusionRecipe = field(default_factory=DiffusionRecipe)

    @property
    def name(self) -> str:
        return self.run or self.family


StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], dict[str, float]]


class Trainer:
    """Holds modules, optimisers and the step count; saves and restores all of them."""

    def __init__(
        self,
        cfg: TrainConfig,
        modules: dict[str, torch.nn.Module],
        optims: dict[str, torch.optim.Optimizer],
        weights: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.modules = {k: m.to(cfg.device) for k, m in modules.items()}
        self.optims = optims
        self.weights = weights  # the module a snapshot keeps (the EMA), if any
        self.step = 0
        self.opt_start = 0  # the step the optimiser moments started from (warm-up and decay count from it)
        self.history: list[dict[str, Any]] = []  # the runs these weights went through before this one
        self.path = cfg.checkpoint_dir / f"{cfg.name}.safetensors"
        self.extra_meta: dict[str, Any] = {}  # e.g. a distilled student's teacher

    def meta(self) -> dict[str, Any]:
        return {
            "family": self.cfg.family,
            "step": self.step,
            "opt_start": self.opt_start,
            "history": self.history,
            "config": {k: str(v) for k, v in vars(self.cfg).items() if k != "recipe"},
            "recipe": vars(self.cfg.recipe) if self.cfg.family in ("diffusion", "distilled") else {},
            **self.extra_meta,
        }

    def save(self) -> None:
        checkpoint.save(self.path, self.modules, self.optims, self.meta())

    def save_weights(self, path: Path, only: str | None = None) -> None:
        """A weights-only file (no optimiser state): the form that is committed or exported."""
        modules = {only: self.modules[only]} if only else self.modules
        checkpoint.save(path, modules, None, self.meta())

    def maybe_resume(self) -> None:
        source = self.path if self.path.exists() else self.cfg.resume_from
        if source is None or not source.exists():
            return
        meta = checkpoint.restore(source, self.modules, self.optims)
        self.step = int(meta["step"])
        # Weights without optimiser state (a committed file) start fresh Adam moments: warm up again.
        restored = all(opt.state for opt in self.optims.values())
        self.opt_start = int(meta.get("opt_start", 0)) if restored else self.step
        # Every earlier invocation, this run's own (an interrupted run resumed) or other weights'.
        self.history = lineage(meta, source)
        print(f"{self.cfg.name}: resumed at step {self.step} from {source}")

    def lr(self, warmup: int = 200) -> float:
        """The learning rate of this step: linear warm-up from the optimiser's start, then constant,
        or with `cfg.lr_decay` a cosine decay to zero at `cfg.steps`."""
        done = self.step - self.opt_start
        scale = min(1.0, (done + 1) / warmup)
        if self.cfg.lr_decay:
            scale *= 0.5 * (1 + math.cos(math.pi * min(1.0, done / max(1, self.cfg.steps - self.opt_start))))
        return self.cfg.lr * scale

    def run(self, step_fn: StepFn, x: torch.Tensor, y: torch.Tensor) -> None:
        """Runs `step_fn` on random batches until `cfg.steps`, checkpointing on the way.

        SIGTERM (and Ctrl-C) stop after the current step with a checkpoint, so nothing is lost.
        """
        self.maybe_resume()
        x, y = x.to(self.cfg.device), y.to(self.cfg.device)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        gen = torch.Generator(self.cfg.device).manual_seed(self.cfg.seed + self.step)
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc=f"train {self.cfg.name}", mininterval=5)
        t0 = time.time()
        deadline = t0 + 60 * self.cfg.minutes if self.cfg.minutes else float("inf")
        try:
            while self.step < self.cfg.steps and time.time() < deadline:
                idx = torch.randint(0, len(x), (self.cfg.batch_size,), generator=gen, device=self.cfg.device)
                logs = step_fn(x[idx], y[idx], gen)
                self.step += 1
                bar.update(1)
                if self.step % 50 == 0:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
                if self.step % self.cfg.checkpoint_every == 0:
                    self.save()
                if self.step in self.cfg.snapshots and self.weights:
                    self.save_weights(self.path.with_name(f"{self.cfg.name}-step{self.step}.safetensors"), self.weights)
        except KeyboardInterrupt:
            print(f"{self.cfg.name}: interrupted at step {self.step}; checkpoint saved, run again to resume")
        finally:
            self.save()
            bar.close()
            signal.signal(signal.SIGTERM, previous)
        print(f"{self.cfg.name}: {self.step} steps, {time.time() - t0:.0f}s this run, checkpoint {self.path}")


def _run_record(meta: dict[str, Any]) -> dict[str, Any]:
    """One run in a checkpoint's history: the steps it reached, its configuration, its recipe (a
    diffusion run's) and (a distilled student's run) the teacher it learnt from."""
    keys = ("note", "teacher", "recipe")
    return {"step": meta["step"], "config": meta["config"]} | {k: meta[k] for k in keys if k in meta}


def lineage(meta: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """Every run that made the checkpoint `meta` (read from `path`), oldest first, its last one
    included; a run that trained no steps (one that only wrote the weights out) is left out."""
    runs: list[dict[str, Any]] = []
    before = meta["history"] if "history" in meta else _lineage_from_config(meta, path)
    for run in [*before, _run_record(meta)]:
        if not runs or run["step"] != runs[-1]["step"]:
            runs.append(run)
    return runs


def _lineage_from_config(meta: dict[str, Any], own: Path) -> list[dict[str, Any]]:
    """The history of a checkpoint written before checkpoints kept one: the file its run was
    resumed from, read now (right while that file is still the one the run started from)."""
    source = meta["config"].get("resume_from", "None")
    if source == "None" or not Path(source).exists() or Path(source).resolve() == own.resolve():
        return []
    return lineage(checkpoint.read_meta(Path(source)), Path(source))


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    split = load_split()
    return torch.from_numpy(split.train_x), torch.from_numpy(split.train_y)


def _logs(cfg: TrainConfig, trainer: Trainer, **values: torch.Tensor) -> dict[str, float]:
    """Loss values as floats: every step on the CPU, every 50th on a GPU (`.item()` waits for the GPU)."""
    if cfg.device == "cpu" or trainer.step % 50 == 49:
        return {k: v.item() for k, v in values.items()}
    return {}


def _drop_labels(y: torch.Tensor, p: float, gen: torch.Generator, null: int = nets.NULL_LABEL) -> torch.Tensor:
    """Replaces a share p of labels with the null label (for CFG / unconditional sampling)."""
    mask = torch.rand(y.shape, generator=gen, device=y.device) < p
    return torch.where(mask, torch.full_like(y, null), y)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """EMA of the weights with the usual warm-up: decay = min(max_decay, (1+s)/(10+s))."""
    d = min(max_decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - d)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)


def diffusion_loss(
    model: torch.nn.Module,
    recipe: DiffusionRecipe,
    abar: torch.Tensor,
    x0: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    null_label: int = nets.NULL_LABEL,
    label_dropout: float = 0.1,
) -> torch.Tensor:
    """The denoising loss at uniformly drawn t: epsilon or v target, optionally Min-SNR weighted; a share
    `label_dropout` of the labels is replaced by the null label, which trains the unconditional mode."""
    t = torch.randint(0, len(abar), (len(x0),), generator=gen, device=x0.device)
    eps = torch.randn(x0.shape, generator=gen, device=x0.device)
    a = abar[t].view(-1, 1, 1, 1)
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    xt = alpha * x0 + sigma * eps
    out = model(xt, t, _drop_labels(y, label_dropout, gen, null_label))
    target = eps if recipe.prediction == "epsilon" else alpha * eps - sigma * x0
    per_image = (out - target).pow(2).mean(dim=(1, 2, 3))
    if recipe.min_snr is not None:
        snr = (abar[t] / (1 - abar[t])).clamp(min=1e-8)
        clipped = snr.clamp(max=recipe.min_snr)
        # Min-SNR-gamma in each target's own units: eps loss = snr * x0 loss, v loss = (snr+1) * x0 loss.
        per_image = per_image * (clipped / snr if recipe.prediction == "epsilon" else clipped / (snr + 1))
    return per_image.mean()


def denoiser_update(
    opt: torch.optim.Optimizer,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    loss: torch.Tensor,
    lr: float,
    step: int,
    ema_decay: float,
) -> None:
    """One optimiser step of a diffusion network or student at learning rate `lr` (`Trainer.lr`): clip at 1, EMA."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ema_update(ema, model, step, ema_decay)


def _resumed_meta(cfg: TrainConfig) -> dict[str, Any] | None:
    """The metadata of what the run resumes from: its own checkpoint, else `--resume-from` (as
    `Trainer.maybe_resume` picks), or None for a fresh run."""
    for source in (cfg.checkpoint_dir / f"{cfg.name}.safetensors", cfg.resume_from):
        if source is not None and source.exists():
            return checkpoint.read_meta(source)
    return None


def _saved_recipe(cfg: TrainConfig) -> DiffusionRecipe | None:
    """A resumed run keeps the recipe it started with, whatever the command line says now."""
    meta = _resumed_meta(cfg)
    if meta is None:
        return None
    recipe = DiffusionRecipe(**meta["recipe"])
    if recipe != cfg.recipe:
        print(f"{cfg.name}: resuming with the checkpoint's recipe {recipe}")
    return recipe


def load_unet(path: Path, max_steps: int = 0) -> tuple[nets.UNet, DiffusionRecipe, dict[str, Any]]:
    """A diffusion checkpoint's EMA weights in the UNet its recipe names, with the checkpoint's metadata."""
    meta = checkpoint.read_meta(path)
    recipe = DiffusionRecipe(**meta["recipe"])
    net = make_unet(recipe, max_steps)
    net.load_state_dict(checkpoint.module_state(checkpoint.load_tensors(path), "ema"))
    return net, recipe, meta


def make_unet(recipe: DiffusionRecipe, max_steps: int = 0) -> nets.UNet:
    return nets.UNet(**nets.UNET_ARCHS[recipe.arch], max_steps=max_steps)  # type: ignore[arg-type]


def train_diffusion(cfg: TrainConfig) -> Trainer:
    """DDPM objective with the recipe's target, schedule and weighting; `cfg.label_dropout` of labels
    dropped to the null label (10% by default), EMA weights."""
    torch.manual_seed(cfg.seed)
    cfg.recipe = recipe = _saved_recipe(cfg) or cfg.recipe
    model = make_unet(recipe)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    trainer = Trainer(cfg, {"model": model, "ema": ema}, {"opt": opt}, weights="ema")
    abar = recipe.alphas_cumprod().to(cfg.device)

    def step(x0: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        loss = diffusion_loss(model, recipe, abar, x0, y, gen, label_dropout=cfg.label_dropout)
        denoiser_update(opt, model, ema, loss, trainer.lr(), trainer.step, recipe.ema_decay)
        return _logs(cfg, trainer, loss=loss)

    trainer.run(step, *_data())
    return trainer


def train_gan(cfg: TrainConfig) -> Trainer:
    """Hinge-loss conditional GAN with a spectral-norm projection discriminator, EMA generator."""
    torch.manual_seed(cfg.seed)
    gen_net, disc = nets.GanGenerator(), nets.GanDiscriminator()
    ema = copy.deepcopy(gen_net).requires_grad_(False)
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=cfg.lr, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2 * cfg.lr, betas=(0.0, 0.9))
    trainer = Trainer(cfg, {"generator": gen_net, "discriminator": disc, "ema": ema}, {"g": opt_g, "d": opt_d})

    def step(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        y = _drop_labels(y, 0.1, gen)
        z = torch.randn(len(x), gen_net.z_dim, generator=gen, device=x.device)
        fake = gen_net(z, y)
        d_loss = F.relu(1 - disc(x, y)).mean() + F.relu(1 + disc(fake.detach(), y)).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = -disc(fake, y).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        ema_update(ema, gen_net, trainer.step, 0.999)
        return {"d": d_loss.item(), "g": g_loss.item()}

    trainer.run(step, *_data())
    return trainer


def train_vae(cfg: TrainConfig) -> Trainer:
    """Conditional VAE of shape `cfg.vae_arch`: Bernoulli pixel likelihood plus KL, 10% of labels dropped to null."""
    torch.manual_seed(cfg.seed)
    resumed = _resumed_meta(cfg)
    if resumed is not None:  # a resumed run keeps the shape it started with
        cfg.vae_arch = resumed["config"].get("vae_arch", "small")
    vae = nets.Vae(**nets.VAE_ARCHS[cfg.vae_arch])
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    trainer = Trainer(cfg, {"vae": vae}, {"opt": opt}, weights="vae")

    def step(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        y = _drop_labels(y, 0.1, gen)
        mu, logvar = vae.encoder(x, y)
        z = mu + torch.randn(mu.shape, generator=gen, device=mu.device) * (0.5 * logvar).exp()
        logits = vae.decoder.logits(z, y)
        rec = F.binary_cross_entropy_with_logits(logits, (x + 1) / 2, reduction="sum") / len(x)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / len(x)
        loss = rec + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return _logs(cfg, trainer, rec=rec, kl=kl)

    trainer.run(step, *_data())
    return trainer


def train_classifier(cfg: TrainConfig) -> Trainer:
    """The evaluation classifier, with small random shifts as augmentation."""
    torch.manual_seed(cfg.seed)
    clf = nets.DigitClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=cfg.lr)
    trainer = Trainer(cfg, {"classifier": clf}, {"opt": opt})

    def step(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen, device=x.device))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        logits, _ = clf(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "acc": (logits.argmax(1) == y).float().mean().item()}

    trainer.run(step, *_data())
    return trainer


TRAINERS: dict[str, Callable[[TrainConfig], Trainer]] = {
    "diffusion": train_diffusion,
    "gan": train_gan,
    "vae": train_vae,
    "classifier": train_classifier,
}

# Defaults of the shipped models: (steps, batch size, learning rate).
DEFAULTS: dict[str, tuple[int, int, float]] = {
    "diffusion": (5000, 128, 6e-4),
    "gan": (3000, 64, 2e-4),
    "vae": (4000, 128, 1e-3),
    "classifier": (2000, 128, 1e-3),
    "distilled": (20000, 256, 1e-4),
    "text2image": (40000, 64, 3e-4),
    "emoji-classifier": (1500, 128, 1e-3),
    "emoji-category": (5000, 128, 6e-4),
}


def default_config(family: str, **overrides: Any) -> TrainConfig:
    steps, batch, lr = DEFAULTS[family]
    kwargs: dict[str, Any] = {"family": family, "steps": steps, "batch_size": batch, "lr": lr}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kwargs)

"""Training loops for the three generators and the evaluation classifier.

Each loop is resumable: it writes `checkpoints/<family>.pt` (kept out of git) every
`checkpoint_every` steps and on exit, and picks up from it when started again.
"""

from __future__ import annotations

import copy
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from tqdm import tqdm

from service.schedules import alphas_cumprod_for, betas_for
from training import nets
from training.data import load_split

CHECKPOINT_DIR = Path("checkpoints")
# The noise schedule the diffusion model trains with; export writes it into the card.
DIFFUSION_SCHEDULE: dict[str, Any] = {
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
}


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


StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], dict[str, float]]


class Trainer:
    """Holds modules, optimisers and the step count; saves and restores all of them."""

    def __init__(
        self, cfg: TrainConfig, modules: dict[str, torch.nn.Module], optims: dict[str, torch.optim.Optimizer]
    ) -> None:
        self.cfg = cfg
        self.modules = modules
        self.optims = optims
        self.step = 0
        self.path = cfg.checkpoint_dir / f"{cfg.family}.pt"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "config": {k: str(v) for k, v in vars(self.cfg).items()},
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optims": {k: o.state_dict() for k, o in self.optims.items()},
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)

    def maybe_resume(self) -> None:
        if not self.path.exists():
            return
        state = torch.load(self.path, weights_only=True)
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optims.items():
            o.load_state_dict(state["optims"][k])
        self.step = int(state["step"])

    def run(self, step_fn: StepFn, x: torch.Tensor, y: torch.Tensor) -> None:
        """Runs `step_fn` on random batches until `cfg.steps`, checkpointing on the way.

        SIGTERM (and Ctrl-C) stop after the current step with a checkpoint, so nothing is lost.
        """
        self.maybe_resume()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        gen = torch.Generator().manual_seed(self.cfg.seed + self.step)
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc=f"train {self.cfg.family}", mininterval=5)
        t0 = time.time()
        try:
            while self.step < self.cfg.steps:
                idx = torch.randint(0, len(x), (self.cfg.batch_size,), generator=gen)
                logs = step_fn(x[idx], y[idx], gen)
                self.step += 1
                bar.update(1)
                if self.step % 50 == 0:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
                if self.step % self.cfg.checkpoint_every == 0:
                    self.save()
        except KeyboardInterrupt:
            print(f"{self.cfg.family}: interrupted at step {self.step}; checkpoint saved, run again to resume")
        finally:
            self.save()
            bar.close()
            signal.signal(signal.SIGTERM, previous)
        print(f"{self.cfg.family}: {self.step} steps, {time.time() - t0:.0f}s this run, checkpoint {self.path}")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    split = load_split()
    return torch.from_numpy(split.train_x), torch.from_numpy(split.train_y)


def _drop_labels(y: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Replaces a share p of labels with the null label (for CFG / unconditional sampling)."""
    mask = torch.rand(y.shape, generator=gen) < p
    return torch.where(mask, torch.full_like(y, nets.NULL_LABEL), y)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """EMA of the weights with the usual warm-up: decay = min(max_decay, (1+s)/(10+s))."""
    d = min(max_decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.mul_(d).add_(pm.detach(), alpha=1 - d)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)


def train_diffusion(cfg: TrainConfig) -> Trainer:
    """Epsilon-prediction DDPM objective, 10% label dropout, EMA weights (`ema` module)."""
    torch.manual_seed(cfg.seed)
    model = nets.UNet()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    trainer = Trainer(cfg, {"model": model, "ema": ema}, {"opt": opt})
    abar = torch.from_numpy(alphas_cumprod_for(betas_for(*DIFFUSION_SCHEDULE.values()))).float()
    T = len(abar)

    def step(x0: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        t = torch.randint(0, T, (len(x0),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        warm = min(1.0, (trainer.step + 1) / 200)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * warm
        loss = F.mse_loss(model(xt, t, _drop_labels(y, 0.1, gen)), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, trainer.step, 0.999)
        return {"loss": loss.item()}

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
        z = torch.randn(len(x), gen_net.z_dim, generator=gen)
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
    """Conditional VAE: Bernoulli pixel likelihood plus KL, 10% of labels dropped to null."""
    torch.manual_seed(cfg.seed)
    vae = nets.Vae()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    trainer = Trainer(cfg, {"vae": vae}, {"opt": opt})

    def step(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        y = _drop_labels(y, 0.1, gen)
        mu, logvar = vae.encoder(x, y)
        z = mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp()
        logits = vae.decoder.logits(z, y)
        rec = F.binary_cross_entropy_with_logits(logits, (x + 1) / 2, reduction="sum") / len(x)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / len(x)
        loss = rec + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"rec": rec.item(), "kl": kl.item()}

    trainer.run(step, *_data())
    return trainer


def train_classifier(cfg: TrainConfig) -> Trainer:
    """The evaluation classifier, with small random shifts as augmentation."""
    torch.manual_seed(cfg.seed)
    clf = nets.DigitClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=cfg.lr)
    trainer = Trainer(cfg, {"classifier": clf}, {"opt": opt})

    def step(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
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
}


def default_config(family: str, **overrides: Any) -> TrainConfig:
    steps, batch, lr = DEFAULTS[family]
    kwargs: dict[str, Any] = {"family": family, "steps": steps, "batch_size": batch, "lr": lr}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kwargs)

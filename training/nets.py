"""The torch networks: conditional GAN, conditional VAE, diffusion UNet and the evaluation classifier.

All work on (N, 1, 28, 28) images in [-1, 1]. Label index 10 is the "no label" class: the
unconditional GAN/VAE sample and the null label of classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

N_LABELS = 10
NULL_LABEL = 10


# ---------------------------------------------------------------- GAN
class GanGenerator(nn.Module):
    """DCGAN-style generator: (z, label) -> image; label 10 means unconditional.

    GroupNorm rather than BatchNorm: each image is normalised on its own, so eval-mode output
    matches training and does not depend on the rest of the batch.
    """

    def __init__(self, z_dim: int = 64, ch: int = 32) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.ch = ch
        self.embed = nn.Embedding(N_LABELS + 1, z_dim)
        self.fc = nn.Sequential(nn.Linear(2 * z_dim, 4 * ch * 7 * 7), nn.ReLU())
        self.body = nn.Sequential(
            nn.ConvTranspose2d(4 * ch, 2 * ch, 4, 2, 1), nn.GroupNorm(8, 2 * ch), nn.ReLU(),
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1), nn.GroupNorm(8, ch), nn.ReLU(),
            nn.Conv2d(ch, 1, 3, 1, 1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(label)], dim=1))
        return self.body(h.view(-1, 4 * self.ch, 7, 7))


class GanDiscriminator(nn.Module):
    """Spectral-norm discriminator with a projection head for the label (Miyato & Koyama 2018)."""

    def __init__(self, ch: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(1, ch, 3, 1, 1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(ch, 2 * ch, 4, 2, 1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(2 * ch, 2 * ch, 3, 1, 1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(2 * ch, 4 * ch, 4, 2, 1)), nn.LeakyReLU(0.1),
        )  # fmt: skip
        self.head = spectral_norm(nn.Linear(4 * ch * 7 * 7, 1))
        self.proj = spectral_norm(nn.Embedding(N_LABELS + 1, 4 * ch * 7 * 7))

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.body(x).flatten(1)
        return self.head(h).squeeze(1) + (self.proj(label) * h).sum(1)


# ---------------------------------------------------------------- VAE
class ConvRes(nn.Module):
    """x + conv(silu(conv(silu(x)))): a residual 3x3 block that keeps the channels and size."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


# VAE shapes by name (`genserve train vae --arch`): "small" is the first shipped VAE; "res" adds
# a residual block at both resolutions of the encoder and of the decoder.
VAE_ARCHS: dict[str, dict[str, int]] = {
    "small": {"ch": 32, "blocks": 0},
    "res": {"ch": 32, "blocks": 1},
}


class VaeEncoder(nn.Module):
    """(image, label) -> (mu, logvar) of q(z | x, y)."""

    def __init__(self, z_dim: int = 16, ch: int = 32, blocks: int = 0) -> None:
        super().__init__()
        self.embed = nn.Embedding(N_LABELS + 1, 28 * 28)
        self.body = nn.Sequential(
            nn.Conv2d(2, ch, 4, 2, 1), nn.SiLU(),
            *[ConvRes(ch) for _ in range(blocks)],
            nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.SiLU(),
            *[ConvRes(2 * ch) for _ in range(blocks)],
            nn.Flatten(), nn.Linear(2 * ch * 7 * 7, 256), nn.SiLU(),
        )  # fmt: skip
        self.mu = nn.Linear(256, z_dim)
        self.logvar = nn.Linear(256, z_dim)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.embed(label).view(-1, 1, 28, 28)
        h = self.body(torch.cat([x, y], dim=1))
        return self.mu(h), self.logvar(h)


class VaeDecoder(nn.Module):
    """(z, label) -> image in [-1, 1] (the logits of Bernoulli pixels, mapped to the range)."""

    def __init__(self, z_dim: int = 16, ch: int = 32, blocks: int = 0) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.ch = ch
        self.embed = nn.Embedding(N_LABELS + 1, z_dim)
        self.fc = nn.Sequential(nn.Linear(2 * z_dim, 256), nn.SiLU(), nn.Linear(256, 2 * ch * 7 * 7), nn.SiLU())
        self.body = nn.Sequential(
            *[ConvRes(2 * ch) for _ in range(blocks)],
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1), nn.SiLU(),
            *[ConvRes(ch) for _ in range(blocks)],
            nn.ConvTranspose2d(ch, 1, 4, 2, 1),
        )  # fmt: skip

    def logits(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(label)], dim=1)).view(-1, 2 * self.ch, 7, 7)
        return self.body(h)

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return torch.tanh(0.5 * self.logits(z, label))  # == 2 * sigmoid(logits) - 1


class Vae(nn.Module):
    """Encoder and decoder trained together; exported separately."""

    def __init__(self, z_dim: int = 16, ch: int = 32, blocks: int = 0) -> None:
        super().__init__()
        self.encoder = VaeEncoder(z_dim, ch, blocks)
        self.decoder = VaeDecoder(z_dim, ch, blocks)


# ---------------------------------------------------------------- diffusion UNet
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in Ho et al. 2020."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time/label embedding added in between."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual, written with plain matmuls for ONNX."""

    def __init__(self, ch: int, groups: int = 8) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        self.scale = ch**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) * self.scale, dim=-1)  # (b, hw, hw)
        o = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.out(o)


class UNet(nn.Module):
    """Small UNet for 28x28 images: levels at 28, 14 and 7 pixels (or 32, 16, 8 for 32x32).

    `attention` adds self-attention at the 7x7 level (49 positions: cheap); `max_steps` > 0
    adds an embedding of the sampler's step count (1..max_steps), the extra input a distilled
    few-step student takes so that one network serves 1, 2 and 4 network calls. `groups` is every
    GroupNorm's group count and `emb_ch` the width of the time embedding (its MLP and the
    conditioning vector are 4 * emb_ch wide; default `ch`): a narrower student keeps its teacher's
    embedding and group size, so that it can start from a slice of the teacher's weights
    (`training.distill.narrowed`).
    """

    def __init__(
        self,
        ch: int = 32,
        mults: tuple[int, ...] = (1, 2, 2),
        attention: bool = False,
        max_steps: int = 0,
        channels: int = 1,
        labels: int = N_LABELS,
        groups: int = 8,
        emb_ch: int | None = None,
    ) -> None:
        super().__init__()
        self.emb_ch = emb_ch or ch
        emb_dim = 4 * self.emb_ch
        self.time_mlp = nn.Sequential(nn.Linear(self.emb_ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(labels + 1, emb_dim)  # the last row: the null label
        self.steps_emb: nn.Embedding | None = None
        if max_steps:
            self.steps_emb = nn.Embedding(max_steps + 1, emb_dim)
            nn.init.zeros_(self.steps_emb.weight)  # a student starts as its teacher
        self.conv_in = nn.Conv2d(channels, ch, 3, 1, 1)
        widths = [ch * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        cin = ch
        for i, w in enumerate(widths):
            self.down.append(ResBlock(cin, w, emb_dim, groups))
            cin = w
            self.downsample.append(nn.Conv2d(w, w, 3, 2, 1) if i < len(widths) - 1 else nn.Identity())
        self.mid = ResBlock(cin, cin, emb_dim, groups)
        self.mid_attn: nn.Module = SelfAttention(cin, groups) if attention else nn.Identity()
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(ResBlock(cin + w, w, emb_dim, groups))
            cin = w
            self.upsample.append(nn.ConvTranspose2d(w, w, 4, 2, 1) if i > 0 else nn.Identity())
        self.norm_out = nn.GroupNorm(groups, cin)
        self.conv_out = nn.Conv2d(cin, channels, 3, 1, 1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor, num_steps: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.emb_ch)) + self.label_emb(label)
        if self.steps_emb is not None:
            if num_steps is None:
                raise ValueError("this network is a few-step student: pass num_steps")
            emb = emb + self.steps_emb(num_steps)
        h = self.conv_in(x)
        skips = []
        for block, down in zip(self.down, self.downsample, strict=True):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid_attn(self.mid(h, emb))
        for block, up in zip(self.up, self.upsample, strict=True):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# The UNet shapes a training run can ask for by name (recorded in the checkpoint and the card).
UNET_ARCHS: dict[str, dict[str, object]] = {
    "small": {"ch": 32, "mults": (1, 2, 2), "attention": False},
    "base": {"ch": 32, "mults": (1, 2, 4), "attention": True},
    # 3/4 of small's width with its group size and time embedding: a distilled student's shape
    # that starts from a slice of a small teacher (what it costs: docs/bench-core.md's cost table)
    "narrow": {"ch": 24, "mults": (1, 2, 2), "attention": False, "groups": 6, "emb_ch": 32},
}


# ---------------------------------------------------------------- evaluation classifier
class DigitClassifier(nn.Module):
    """LeNet-like classifier; `features` (128-d, penultimate) feed FID and precision/recall."""

    FEATURE_DIM = 128

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, self.FEATURE_DIM), nn.ReLU(),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.FEATURE_DIM, N_LABELS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits, features)."""
        f = self.body(x)
        return self.head(self.dropout(f)), f

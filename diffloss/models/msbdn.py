"""MSBDN-DFF: the Multi-Scale Boosted Dehazing Network with Dense Feature Fusion.

Re-implementation of Dong et al., "Multi-Scale Boosted Dehazing Network with Dense Feature
Fusion", CVPR 2020, following the architecture of the authors' released model (written from a
description of it, not copied). It is the restoration network ``g`` that DiffLoss trains.

Layout (``width = 16`` gives channels 16, 32, 64, 128, 256 at scales 1, 1/2, 1/4, 1/8, 1/16)::

    x ─ conv11×11 ─ f1 ─ RB×3 + f1 ──────────────────────────────────────────── skip1
                   ↓ conv3×3/2 ─ DFF(enc) ─ RB×3 + · ─────────────────────── skip2
                                 ↓ conv3×3/2 ─ DFF(enc) ─ RB×3 + · ──────── skip3
                                               ↓ conv3×3/2 ─ DFF(enc) ─ RB×3 + · ── skip4
                                                             ↓ conv3×3/2 ─ DFF(enc) = f
    bottleneck:  b = RB×18(2f) + 2f − f
    decoder (level 4 → 1):  u = up(prev); s = u + skip; out = RB×3(s) + s − u; DFF(dec)
    output:  conv3×3 (width → 3), no activation, no global residual

The two ideas of the paper, as they appear in the code:

**Strengthen–operate–subtract boosting (SOS).** Each decoder level receives the upsampled,
already-restored coarser estimate ``u`` and the encoder skip ``skip`` (the hazy feature at that
scale). It *strengthens* the estimate by adding the skip (``s = u + skip``), *operates* on the
strengthened feature with a refinement unit (three residual blocks, used as ``RB(s) + s``), and
*subtracts* the previous estimate (``out = RB(s) + s − u``). Boosting algorithms in image
denoising (e.g. "SOS boosting", Romano & Elad 2015) work the same way: the refinement only has to
model what is still missing from ``u``. The bottleneck uses the same rule with the level-5 feature
``f`` as both estimate and skip: ``RB18(2f) + 2f − f``.

**Dense feature fusion by back-projection (DFF).** Every encoder level fuses its new feature with
*all* earlier (finer) encoder features, and every decoder level with all earlier (coarser)
decoder features. The fusion is an iterative back-projection, as in DBPN: for each earlier
feature ``f_i`` (encoder: finest first; decoder: coarsest first), project the current fused
feature to ``f_i``'s scale with strided (de)convolutions, take the *error* against ``f_i``,
project the error back to the current scale and add it::

    fused = current
    for f_i in memory:
        err = project_to(f_i.scale, fused) − f_i
        fused = fused + project_back(err)

The projection layers are owned by the fusion module and shared by all earlier features: an
encoder fusion at ``C`` channels with ``n`` earlier features owns ``n`` pairs
``up_k``: ConvTranspose 4×4/2 (``C/2^k → C/2^(k+1)``) + PReLU and ``down_k``: Conv 4×4/2 back +
PReLU; reaching ``f_i`` ``m`` scales finer uses ``up_0 … up_{m−1}`` and then
``down_{m−1} … down_0``. The decoder fusion is the mirror image (``down`` first, to the coarser
earlier features, then ``up``).

The full network (``MSBDN()``) has 31,353,061 parameters (the paper reports 31.35 M);
``MSBDN.small()`` (width 4, 4 bottleneck blocks) has 929,899 and runs the same code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSBDN", "ResidualBlock", "EncoderDFF", "DecoderDFF"]

NUM_LEVELS = 5
"""Scales 1, 1/2, 1/4, 1/8, 1/16."""

MIN_PADDED_SIZE = 32
"""Smallest padded side: the 1/16 scale must be at least 2 pixels for the reflection padding
(pad 1 needs a side of at least 2) of the 3×3 convolutions in the bottleneck."""


class ConvLayer(nn.Module):
    """A "plain" convolution: reflection padding of ``k // 2``, then a biased Conv2d."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ResidualBlock(nn.Module):
    """``x + 0.1 · conv3×3(PReLU(conv3×3(x)))`` with a single-parameter PReLU."""

    def __init__(self, channels: int, scale: float = 0.1) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.act = nn.PReLU()
        self.conv2 = ConvLayer(channels, channels, 3)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x))) * self.scale


def _res_blocks(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(channels) for _ in range(n)])


def _up(in_ch: int, out_ch: int) -> nn.Sequential:
    """×2 upsampling projection of the DFF module: ConvTranspose 4×4/2, padding 1, + PReLU."""
    return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=True), nn.PReLU())


def _down(in_ch: int, out_ch: int) -> nn.Sequential:
    """×1/2 downsampling projection of the DFF module: Conv 4×4/2, padding 1, + PReLU."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=True), nn.PReLU())


class EncoderDFF(nn.Module):
    """Dense feature fusion of an encoder feature with all earlier (finer) encoder features.

    Args:
        channels: channels ``C`` of the current (coarsest) feature.
        n_earlier: number ``n`` of earlier features; the ``i``-th (0-based, finest first) is
            ``n − i`` scales finer and has ``C / 2^(n−i)`` channels.

    For each earlier feature ``f_i``, finest first, the current fused feature is projected up
    to ``f_i``'s scale (``up_0 … up_{m−1}``), the error ``projection − f_i`` is projected back
    down (``down_{m−1} … down_0``) and added to the fused feature (back-projection).
    """

    def __init__(self, channels: int, n_earlier: int) -> None:
        super().__init__()
        if channels % (2**n_earlier):
            raise ValueError(f"channels={channels} is not divisible by 2**{n_earlier}")
        self.n_earlier = n_earlier
        self.up = nn.ModuleList(_up(channels >> k, channels >> (k + 1)) for k in range(n_earlier))
        self.down = nn.ModuleList(
            _down(channels >> (k + 1), channels >> k) for k in range(n_earlier)
        )

    def forward(self, x: torch.Tensor, memory: list[torch.Tensor]) -> torch.Tensor:
        if len(memory) != self.n_earlier:
            raise ValueError(f"expected {self.n_earlier} earlier features, got {len(memory)}")
        fused = x
        for i, earlier in enumerate(memory):
            m = self.n_earlier - i  # scales between the current feature and ``earlier``
            proj = fused
            for k in range(m):
                proj = self.up[k](proj)
            err = proj - earlier
            for k in reversed(range(m)):
                err = self.down[k](err)
            fused = fused + err
        return fused


class DecoderDFF(nn.Module):
    """Dense feature fusion of a decoder feature with all earlier (coarser) decoder features.

    The mirror image of :class:`EncoderDFF`: ``down_k`` (Conv 4×4/2 + PReLU,
    ``C·2^k → C·2^(k+1)``) projects the fused feature to a coarser earlier feature's scale,
    ``up_k`` (ConvTranspose 4×4/2 + PReLU) brings the error back. Earlier features are visited
    from the coarsest (the bottleneck output) on.
    """

    def __init__(self, channels: int, n_earlier: int) -> None:
        super().__init__()
        self.n_earlier = n_earlier
        self.down = nn.ModuleList(
            _down(channels << k, channels << (k + 1)) for k in range(n_earlier)
        )
        self.up = nn.ModuleList(_up(channels << (k + 1), channels << k) for k in range(n_earlier))

    def forward(self, x: torch.Tensor, memory: list[torch.Tensor]) -> torch.Tensor:
        if len(memory) != self.n_earlier:
            raise ValueError(f"expected {self.n_earlier} earlier features, got {len(memory)}")
        fused = x
        for i, earlier in enumerate(memory):
            m = self.n_earlier - i  # scales between ``earlier`` and the current feature
            proj = fused
            for k in range(m):
                proj = self.down[k](proj)
            err = proj - earlier
            for k in reversed(range(m)):
                err = self.up[k](err)
            fused = fused + err
        return fused


class MSBDN(nn.Module):
    """MSBDN-DFF (Dong et al., CVPR 2020): an image-to-image network on ``[0, 1]`` images.

    Args:
        width: channels at full resolution; level ``l`` (1…5) has ``width · 2^(l−1)`` channels.
            16 is the paper's network.
        depth: residual blocks in the bottleneck at 1/16 scale (paper: 18).
        level_blocks: residual blocks per encoder/decoder level (paper: 3).
        in_channels: input channels (3, RGB).
        out_channels: output channels (3, RGB).

    ``MSBDN()`` is the paper's network (31,353,061 parameters); :meth:`small` is a narrow, shallow
    preset (929,899 parameters) for CPU experiments. The output has no activation and no global
    residual; train it on targets in ``[0, 1]`` and clamp for display/metrics.

    ``forward`` takes ``B × C × H × W`` of any size: the input is reflect-padded (bottom/right)
    to a multiple of 16 and at least 32 per side, and the output cropped back to ``H × W``.
    Where reflection is impossible (a pad not smaller than the side, i.e. sides below 16)
    replicate padding is used instead.
    """

    def __init__(
        self,
        width: int = 16,
        depth: int = 18,
        level_blocks: int = 3,
        in_channels: int = 3,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        if width < 1 or depth < 0 or level_blocks < 0:
            raise ValueError(
                f"need width >= 1, depth >= 0, level_blocks >= 0; got {width}, {depth}, "
                f"{level_blocks}"
            )
        self.width = width
        self.depth = depth
        self.level_blocks = level_blocks
        self.in_channels = in_channels
        self.out_channels = out_channels
        ch = [width << lvl for lvl in range(NUM_LEVELS)]  # 16, 32, 64, 128, 256

        self.conv_input = ConvLayer(in_channels, ch[0], 11)
        self.enc_blocks = nn.ModuleList([_res_blocks(ch[0], level_blocks)])
        self.enc_down = nn.ModuleList()
        self.enc_fusion = nn.ModuleList()
        for lvl in range(1, NUM_LEVELS):
            self.enc_down.append(ConvLayer(ch[lvl - 1], ch[lvl], 3, stride=2))
            self.enc_fusion.append(EncoderDFF(ch[lvl], n_earlier=lvl))
            if lvl < NUM_LEVELS - 1:  # level 5 has no residual blocks of its own
                self.enc_blocks.append(_res_blocks(ch[lvl], level_blocks))

        self.bottleneck = _res_blocks(ch[-1], depth)

        # Decoder, listed from level 4 (1/8 scale) down to level 1 (full scale).
        self.dec_up = nn.ModuleList()
        self.dec_blocks = nn.ModuleList()
        self.dec_fusion = nn.ModuleList()
        for j, lvl in enumerate(range(NUM_LEVELS - 2, -1, -1)):
            self.dec_up.append(nn.ConvTranspose2d(ch[lvl + 1], ch[lvl], 3, stride=2, bias=True))
            self.dec_blocks.append(_res_blocks(ch[lvl], level_blocks))
            self.dec_fusion.append(DecoderDFF(ch[lvl], n_earlier=j + 1))

        self.conv_output = ConvLayer(ch[0], out_channels, 3)

    @classmethod
    def small(cls, **kwargs: int) -> MSBDN:
        """The CPU preset: width 4 (channels 4…64), 4 bottleneck blocks, 3 blocks per level.

        929,899 parameters, same code path as the paper's network. Keyword arguments override
        the preset (e.g. ``MSBDN.small(depth=8)``).
        """
        cfg: dict[str, int] = {"width": 4, "depth": 4, "level_blocks": 3}
        cfg.update(kwargs)
        return cls(**cfg)

    @staticmethod
    def padded_size(size: int) -> int:
        """The side length ``forward`` pads ``size`` to: a multiple of 16, at least 32."""
        mult = 2 ** (NUM_LEVELS - 1)
        return max(MIN_PADDED_SIZE, math.ceil(size / mult) * mult)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MSBDN expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"MSBDN expects a 4-D tensor B×C×H×W, got shape {tuple(x.shape)}"
                + (" (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else "")
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"MSBDN expects {self.in_channels} input channels, got {x.shape[1]} "
                f"(shape {tuple(x.shape)}; images are B×C×H×W)"
            )
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"empty image, shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"MSBDN expects a floating-point tensor in [0, 1], got {x.dtype}")

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = self.padded_size(h) - h, self.padded_size(w) - w
        # Reflection needs pad < side; a side too short for it is replicate-padded instead.
        if ph:
            x = F.pad(x, (0, 0, 0, ph), mode="reflect" if ph < h else "replicate")
        if pw:
            x = F.pad(x, (0, pw, 0, 0), mode="reflect" if pw < w else "replicate")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Restore ``x`` (``B × C × H × W`` in ``[0, 1]``); returns the same shape."""
        self._check_input(x)
        h, w = x.shape[-2:]
        x = self._pad(x)

        # Encoder with dense feature fusion.
        f1 = self.conv_input(x)
        enc_memory = [f1]
        feat = self.enc_blocks[0](f1) + f1
        skips = [feat]
        for lvl in range(1, NUM_LEVELS):
            feat = self.enc_down[lvl - 1](feat)
            feat = self.enc_fusion[lvl - 1](feat, enc_memory)
            if lvl < NUM_LEVELS - 1:
                enc_memory.append(feat)
                feat = self.enc_blocks[lvl](feat) + feat
                skips.append(feat)

        # Bottleneck, SOS form with the level-5 feature as both estimate and skip.
        strengthened = 2 * feat
        feat = self.bottleneck(strengthened) + strengthened - feat
        dec_memory = [feat]

        # Decoder: strengthen (u + skip), operate (RB), subtract (u), then fuse.
        for j in range(NUM_LEVELS - 1):
            skip = skips[NUM_LEVELS - 2 - j]
            u = self.dec_up[j](feat)
            if u.shape[-2:] != skip.shape[-2:]:
                u = F.interpolate(u, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            s = u + skip
            feat = self.dec_blocks[j](s) + s - u
            feat = self.dec_fusion[j](feat, dec_memory)
            dec_memory.append(feat)

        out = self.conv_output(feat)
        return out[..., :h, :w]

    def extra_repr(self) -> str:
        return f"width={self.width}, depth={self.depth}, level_blocks={self.level_blocks}"


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

"""IAT: the Illumination-Adaptive Transformer for low-light enhancement.

Re-implementation of Cui et al., "You Only Need 90K Parameters to Adapt Light: a Light Weight
Transformer for Image Enhancement and Exposure Correction", BMVC 2022, written from the paper and
a description of the authors' released network (the ``lol`` configuration, 91,154 parameters),
not copied. It is the restorer the DiffLoss authors train for low light.

The network predicts how to *re-light* the input rather than the output itself::

    local branch (full resolution, 16 channels):
        f = LeakyReLU(conv3×3(y))
        M = ReLU(conv3×3(PEB×3(f) + f))        per-pixel multiplication map
        A = tanh(conv3×3(PEB'×3(f) + f))       per-pixel addition map
        z_local = y·M + A
    global branch (from y, stride 4, 64 channels):
        10 learned queries attend to the image's tokens → γ (from query 1), a 3×3 colour
        matrix C (from queries 2–10), each added to its identity base (γ₀ = 1, C₀ = I)
    output:  z = clamp(C·z_local, 1e-8, 1)^γ      (C applied to every pixel's RGB vector)

A pixel-wise enhancement block (PEB, the paper's Fig. 3) replaces a transformer's attention by
convolutions: ``x += dwconv3×3(x)``; ``x += s₁·pw(dw5×5(pw(N₁(x))))``;
``x += s₂·MLP(N₂(x))`` (the last two branches with stochastic depth in training) with per-channel scales ``s`` initialised to 1e-4 and the normalisation
``N(x) = (C·x)·α + β`` (a learned channel-mixing matrix ``C``, initialised to the identity,
then a per-channel affine map). The global branch's query block is ``x += dwconv3×3(x)``;
``t = Attn(queries, LN(x))`` (no residual: the 10 query tokens replace the image's tokens);
``t += MLP(LN(t))``.

Both clamps, ``M = ReLU(·) ≥ 0`` and ``clamp(·, 1e-8, 1)``, give a pixel past them zero gradient
through that pixel from every loss: only the shared weights can bring it back, and once most
pixels are there, little does. ``IAT(train_clamp=...)`` changes that in
training only; in evaluation every mode is the authors' network, the same bits:

* ``"hard"`` (default): the authors' clamps;
* ``"straight-through"``: both clamps keep their values and pass the gradient as if they were the
  identity (the straight-through estimator, Bengio et al. 2013); the output clamp's gradient is
  then ``g·x^(g−1)`` at the clamped value, which for ``x = 1e-8`` and ``g < 1`` is very large;
* ``"leaky"``: ``M``'s ReLU as in ``"straight-through"``; the output is
  ``clamp(x)^g + (x − clamp(x))`` with ``x = C·(y·M + A)``: the same value inside the range, and
  past it the overshoot itself, so that its gradient there is 1 (never ``g·x^(g−1)``), and L1
  pulls it back;
* ``"straight-through-output"``, ``"leaky-output"``: the output clamp alone, ``M``'s ReLU hard.

Parameter names are this module's own; :func:`iat_state_dict_from_official` maps the names of
the authors' checkpoints (``best_Epoch_lol_v1.pth``) onto them.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from ..weights import IAT_LOL_V1_SHA256, IAT_LOL_V1_URL, fetch_iat_lol_weights, iat_weights_path

__all__ = ["IAT", "IAT_LOL_V1_SHA256", "IAT_LOL_V1_URL", "TRAIN_CLAMPS", "fetch_iat_lol_weights",
           "iat_weights_path", "iat_state_dict_from_official", "straight_through"]

#: How IAT's two clamps pass gradient in training (module docstring): ``"hard"`` (the authors'),
#: ``"straight-through"``, ``"leaky"``, or either for the output clamp alone (``"...-output"``).
TRAIN_CLAMPS: tuple[str, ...] = ("hard", "straight-through-output", "straight-through", "leaky-output",
                                 "leaky")


def straight_through(raw: Tensor, clamped: Tensor) -> Tensor:
    """``clamped``'s value, bit for bit, with ``raw``'s gradient: ``clamped.detach() + (raw −
    raw.detach())``, so that ``∂out/∂raw = 1`` everywhere, inside the clamp's range and past it.
    (``raw + (clamped − raw).detach()`` would round: 1e-8 − 0.3 + 0.3 is 0 in float32.)"""
    return clamped.detach() + (raw - raw.detach())


class ChannelAffine(nn.Module):
    """``N(x) = (x·Cᵀ)·α + β`` over the last (channel) dimension: a learned channel-mixing
    matrix ``C`` (identity at initialisation), then a per-channel scale and shift."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))
        self.mix = nn.Parameter(torch.eye(dim))

    def forward(self, tokens: Tensor) -> Tensor:  # B×N×C
        return (tokens @ self.mix.t()) * self.alpha + self.beta


def _normalise_map(norm: ChannelAffine, x: Tensor) -> Tensor:
    """Apply a token-wise normalisation to a B×C×H×W map."""
    b, c, h, w = x.shape
    return norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)


class PixelEnhancementBlock(nn.Module):
    """PEB (paper Fig. 3): convolutional "attention" and MLP, each with a normalisation and a
    small learned per-channel scale (1e-4 at initialisation), residual throughout."""

    def __init__(self, dim: int = 16, mlp_ratio: float = 4.0, init_scale: float = 1e-4,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.drop_path = StochasticDepth(drop_path, "row")  # per-image, in training only
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = ChannelAffine(dim)
        self.pw1 = nn.Conv2d(dim, dim, 1)
        self.dw = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.pw2 = nn.Conv2d(dim, dim, 1)
        self.scale1 = nn.Parameter(torch.full((1, dim, 1, 1), init_scale))
        self.norm2 = ChannelAffine(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))
        self.scale2 = nn.Parameter(torch.full((1, dim, 1, 1), init_scale))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos(x)
        x = x + self.drop_path(self.scale1 * self.pw2(self.dw(self.pw1(_normalise_map(self.norm1, x)))))
        return x + self.drop_path(self.scale2 * self.mlp(_normalise_map(self.norm2, x)))


class LocalBranch(nn.Module):
    """Full-resolution branch: the multiplication map ``M`` and the addition map ``A``. Each
    body's three blocks drop their residual branches with probabilities 0.01, 0.05 and 0.1 in
    training (stochastic depth), as the authors train them."""

    def __init__(self, in_channels: int = 3, dim: int = 16,
                 drop_paths: tuple[float, ...] = (0.01, 0.05, 0.1)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.mul_body = nn.Sequential(*(PixelEnhancementBlock(dim, drop_path=p) for p in drop_paths))
        self.add_body = nn.Sequential(*(PixelEnhancementBlock(dim, drop_path=p) for p in drop_paths))
        self.mul_head = nn.Conv2d(dim, 3, 3, padding=1)
        self.add_head = nn.Conv2d(dim, 3, 3, padding=1)
        for m in self.modules():  # He-style normal init on fan-out, as the authors initialise
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)

    def forward(self, y: Tensor, straight_through_mul: bool = False) -> tuple[Tensor, Tensor]:
        f = F.leaky_relu(self.stem(y), 0.2)
        raw = self.mul_head(self.mul_body(f) + f)
        mul = F.relu(raw)                                      # M ≥ 0
        if straight_through_mul:                               # same M, gradient also where M = 0
            mul = straight_through(raw, mul)
        add = torch.tanh(self.add_head(self.add_body(f) + f))  # A ∈ (−1, 1)
        return mul, add


class QueryBlock(nn.Module):
    """``n_queries`` learned queries attend to the image tokens; the result has one token per
    query (no residual to the image tokens), then an MLP with a residual."""

    def __init__(self, dim: int = 64, heads: int = 4, n_queries: int = 10,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads, self.n_queries = heads, n_queries
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.ones(1, n_queries, dim))
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:  # B×C×h×w → B×n_queries×C
        x = x + self.pos(x)
        tokens = self.norm1(x.flatten(2).transpose(1, 2))
        b, n, c = tokens.shape

        def heads(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], -1, self.heads, c // self.heads).transpose(1, 2)

        q = heads(self.queries.expand(b, -1, -1))
        attn = F.scaled_dot_product_attention(q, heads(self.k(tokens)), heads(self.v(tokens)))
        t = self.proj(attn.transpose(1, 2).reshape(b, self.n_queries, c))
        return t + self.mlp(self.norm2(t))


class GlobalBranch(nn.Module):
    """From the image at 1/4 resolution: the gamma ``γ`` (B×1) and the colour matrix ``C``
    (B×3×3), each predicted as a change of its identity base."""

    def __init__(self, in_channels: int = 3, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.gamma_base = nn.Parameter(torch.ones(1))
        self.color_base = nn.Parameter(torch.eye(3))
        self.embed = nn.Sequential(
            nn.Conv2d(in_channels, dim // 2, 3, stride=2, padding=1), nn.BatchNorm2d(dim // 2),
            nn.GELU(), nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim))
        self.query_block = QueryBlock(dim, heads)
        self.gamma_head = nn.Linear(dim, 1)
        self.color_head = nn.Linear(dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.query_block.v.weight)  # starts at γ = 1, C = I

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        t = self.query_block(self.embed(y))                              # B×10×C
        gamma = self.gamma_head(t[:, :1]).squeeze(-1) + self.gamma_base   # B×1
        color = self.color_head(t[:, 1:]).squeeze(-1).view(-1, 3, 3) + self.color_base
        return gamma, color


class IAT(nn.Module):
    """The Illumination-Adaptive Transformer (module docstring): ``z = clamp(C·(y·M + A))^γ``.

    ``IAT()`` is the authors' ``lol`` network, 91,154 parameters. Input and output are images
    in [0, 1] of any size (B×3×H×W). :meth:`components` also returns ``M`` and ``A``.
    ``train_clamp`` (:data:`TRAIN_CLAMPS`) changes the gradient of the clamps in training only.
    """

    def __init__(self, in_channels: int = 3, with_global: bool = True, train_clamp: str = "hard") -> None:
        super().__init__()
        if train_clamp not in TRAIN_CLAMPS:
            raise ValueError(f"IAT: train_clamp must be one of {', '.join(TRAIN_CLAMPS)}, got {train_clamp!r}")
        self.train_clamp = train_clamp
        self.local_branch = LocalBranch(in_channels)
        self.global_branch = GlobalBranch(in_channels) if with_global else None

    def stages(self, y: Tensor) -> dict[str, Tensor]:
        """Every intermediate of ``z = clamp(C·(y·M + A), 1e-8, 1)^γ``: ``mul`` (M), ``add`` (A),
        ``local`` (y·M + A), ``mixed`` (C·local, what the clamp acts on), ``gamma``, ``color``
        (C) and ``z``; without the global branch, ``z`` is ``local``."""
        mode = self.train_clamp if self.training else "hard"
        mul, add = self.local_branch(y, straight_through_mul=mode in ("straight-through", "leaky"))
        local = y * mul + add
        if self.global_branch is None:
            return {"mul": mul, "add": add, "local": local, "z": local}
        gamma, color = self.global_branch(y)
        mixed = torch.einsum("bij,bjhw->bihw", color, local)          # C applied per pixel
        clamped = mixed.clamp(1e-8, 1.0)
        if mode.startswith("straight-through"):                        # same z, gradient past the clamp
            clamped = straight_through(mixed, clamped)
        z = clamped ** gamma.view(-1, 1, 1, 1)                         # then the gamma
        if mode.startswith("leaky"):                                   # + the overshoot: 0 inside the range
            z = z + (mixed - clamped)
        return {"mul": mul, "add": add, "local": local, "mixed": mixed, "gamma": gamma,
                "color": color, "z": z}

    def components(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(M, A, z)``: the multiplication and addition maps and the enhanced image."""
        s = self.stages(y)
        return s["mul"], s["add"], s["z"]

    def forward(self, y: Tensor) -> Tensor:
        return self.components(y)[2]

    @classmethod
    def from_official_checkpoint(cls, path: str | os.PathLike | None = None) -> IAT:
        """IAT with the authors' weights: from ``path`` (their ``.pth`` state dict), or, when
        ``None``, their LOL v1 checkpoint from the torch hub cache, downloaded once
        (:func:`fetch_iat_lol_weights`)."""
        if path is None:
            state = fetch_iat_lol_weights()
        else:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"no such IAT checkpoint: {path}")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unpickling error: one clear message
                from ..pt_files import describe_unreadable

                raise ValueError(f"{path} {describe_unreadable(path, exc)}; IAT.from_official_checkpoint "
                                 "reads the authors' state dict (best_Epoch_lol_v1.pth)") from None
        net = cls()
        net.load_state_dict(iat_state_dict_from_official(state))
        return net


#: Official parameter-name patterns (the authors' ``IAT``) → this module's names.
_OFFICIAL_NAMES: tuple[tuple[str, str], ...] = (
    (r"^local_net\.conv1\.", "local_branch.stem."),
    (r"^local_net\.(mul|add)_blocks\.(\d)\.", r"local_branch.\1_body.\2."),
    (r"^local_net\.(mul|add)_end\.0\.", r"local_branch.\1_head."),
    (r"^global_net\.conv_large\.proj\.", "global_branch.embed."),
    (r"^global_net\.generator\.pos_embed\.", "global_branch.query_block.pos."),
    (r"^global_net\.generator\.attn\.q$", "global_branch.query_block.queries"),
    (r"^global_net\.generator\.attn\.", "global_branch.query_block."),
    (r"^global_net\.generator\.mlp\.fc1\.", "global_branch.query_block.mlp.0."),
    (r"^global_net\.generator\.mlp\.fc2\.", "global_branch.query_block.mlp.2."),
    (r"^global_net\.generator\.", "global_branch.query_block."),
    (r"^global_net\.gamma_linear\.", "global_branch.gamma_head."),
    (r"^global_net\.color_linear\.", "global_branch.color_head."),
    (r"^global_net\.", "global_branch."),
)
#: Inside a PEB: official → ours.
_BLOCK_NAMES: tuple[tuple[str, str], ...] = (
    (r"\.pos_embed\.", ".pos."), (r"\.norm(\d)\.color$", r".norm\1.mix"),
    (r"\.conv1\.", ".pw1."), (r"\.attn\.", ".dw."), (r"\.conv2\.", ".pw2."),
    (r"\.gamma_1$", ".scale1"), (r"\.gamma_2$", ".scale2"),
    (r"\.mlp\.fc1\.", ".mlp.0."), (r"\.mlp\.fc2\.", ".mlp.2."),
)


def iat_state_dict_from_official(state: dict[str, Any]) -> dict[str, Tensor]:
    """The authors' IAT state dict (``best_Epoch_lol_v1.pth``: names like
    ``local_net.mul_blocks.0.attn.weight``, ``global_net.generator.attn.q``; a ``module.``
    prefix from ``DataParallel`` is dropped) with this module's names, for
    ``IAT().load_state_dict``. An unknown name is a ``KeyError`` naming it."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        key = name.removeprefix("module.")
        for pattern, repl in _OFFICIAL_NAMES:
            new = re.sub(pattern, repl, key)
            if new != key:
                key = new
                break
        else:
            raise KeyError(f"{name!r} is not a parameter of the official IAT (lol)")
        if key.startswith("local_branch.") and "_body." in key:
            for pattern, repl in _BLOCK_NAMES:
                key = re.sub(pattern, repl, key)
        out[key] = value
    return out

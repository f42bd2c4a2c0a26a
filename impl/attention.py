"""Multi-head self-attention on (B, H, W, C) token grids and the Pre-LN transformer block of ViTDet (seed §3.2.1).

Promises (spec: spec/attention/):
- `Attention` computes softmax(Q·Kᵀ·scale)·V per head, merges the heads and applies `proj`. The explicit (manual) and
  the fused (`F.scaled_dot_product_attention`) computation sit behind one flag, `fused_attn`, and agree to float32
  rounding; fused is the default: on CPU it is no slower on the 8×8 grid and about 2× faster at 32×32
  (reports/attention.md, `nox -s bench`), and on CUDA it dispatches to the flash / memory-efficient kernels, which
  never store the L×L matrix.
- `window_partition` / `window_unpartition` follow ViTDet: zero-pad bottom/right to multiples of the window, split into
  (B·nW, ws, ws, C) windows; unpartition puts them back and crops, so the round trip is the identity.
- `TransformerBlock` is Pre-LN, `x + drop_path(attn(norm1(x)))` then `x + drop_path(mlp(norm2(x)))`, with windowed
  attention when `window_size > 0`. Windowing pads *after* norm1, so pad tokens enter attention as zero vectors: they
  are keys every query of a border window attends to (see spec/attention for why this differs from masked attention).

Reference: Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection" (ViTDet), arXiv:2203.16527.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "Attention", "DropPath", "PatchEmbed", "TransformerBlock", "window_partition", "window_unpartition"]


def _check_grid(x: torch.Tensor, what: str, channels: int | None = None) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what} expects a (B, H, W, C) tensor, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{what} was built for C={channels} channels, input has shape {tuple(x.shape)}")


class Attention(nn.Module):
    """Multi-head self-attention over all H·W tokens of a (B, H, W, C) grid (course interface).

    `fused_attn=True` calls `F.scaled_dot_product_attention` (flash / memory-efficient kernels, no L×L matrix kept for
    backward on CUDA); `False` spells out softmax(Q·Kᵀ·scale)·V. Both use the same parameters and are interchangeable.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, *, fused_attn: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be a positive multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_grid(x, "Attention", self.qkv.in_features)
        B, H, W, C = x.shape
        L = H * W
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)  # (3,B,nH,L,hd)
        q, k, v = qkv.unbind(0)  # each (B, nH, L, hd)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, nH, L, hd)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, nH, L, L)
            x = attn.softmax(dim=-1) @ v  # (B, nH, L, hd)
        x = x.transpose(1, 2).reshape(B, H, W, C)  # heads merged: channel = head·hd + d
        return self.proj(x)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, fused_attn={self.fused_attn}"


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a (B, H, W, C) grid into (B·nW, ws, ws, C) windows, zero-padded bottom/right; returns them and (Hp, Wp)."""
    _check_grid(x, "window_partition")
    if window_size < 1:
        raise ValueError(f"window_size must be >= 1, got {window_size}")
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # pads C by (0, 0), W by (0, pad_w), H by (0, pad_h)
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)  # (B·nW, ws, ws, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: (B·nW, ws, ws, C) windows back to the (B, H, W, C) grid, padding cropped."""
    _check_grid(windows, "window_unpartition")
    Hp, Wp = pad_hw
    H, W = hw
    if window_size < 1:
        raise ValueError(f"window_size must be >= 1, got {window_size}")
    if Hp % window_size or Wp % window_size or Hp < H or Wp < W:
        raise ValueError(f"pad_hw={pad_hw} must be multiples of window_size={window_size} and cover hw={hw}")
    n_windows = (Hp // window_size) * (Wp // window_size)
    if windows.shape[0] % n_windows or windows.shape[1:3] != (window_size, window_size):
        raise ValueError(
            f"windows of shape {tuple(windows.shape)} are not B·{n_windows} windows of {window_size}x{window_size} "
            f"for pad_hw={pad_hw}"
        )
    B = windows.shape[0] // n_windows
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)  # (B, Hp, Wp, C)
    return x[:, :H, :W, :].contiguous()


class DropPath(nn.Module):
    """Stochastic depth: in training, zero each sample's residual branch with probability `drop_prob`, else scale it
    by 1/keep_prob so its expectation is unchanged; identity in eval and at drop_prob = 0."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1], got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)  # one draw per sample
        return x * mask / keep_prob if keep_prob > 0 else x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class MLP(nn.Module):
    """Two-layer perceptron applied per token: fc1 → act → fc2."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Image to patch embedding: a strided convolution, (B, C_in, H, W) → (B, H', W', embed_dim)."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = (16, 16),
        stride: tuple[int, int] = (16, 16),
        padding: tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.proj.in_channels:
            raise ValueError(
                f"PatchEmbed expects (B, {self.proj.in_channels}, H, W) images, got shape {tuple(x.shape)}"
            )
        return self.proj(x).permute(0, 2, 3, 1)  # (B, C, H', W') -> (B, H', W', C)


class TransformerBlock(nn.Module):
    """Pre-LN transformer block with global (window_size = 0) or ViTDet windowed (window_size > 0) attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0 = global attention), got {window_size}")
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = MLP(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_grid(x, "TransformerBlock")
        y = self.norm1(x)
        if self.window_size > 0:
            H, W = y.shape[1], y.shape[2]
            windows, pad_hw = window_partition(y, self.window_size)  # (B·nW, ws, ws, C)
            y = window_unpartition(self.attn(windows), self.window_size, pad_hw, (H, W))  # (B, H, W, C)
        else:
            y = self.attn(y)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}"

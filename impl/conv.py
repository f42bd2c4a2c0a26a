"""2D convolution as an autograd Function with a hand-written backward (seed §3.1.1). Spec: spec/conv/.

Two exact algorithms, chosen by one switch, `algorithm`:

- ``"unfold"`` — the seed's: im2col with ``F.unfold``, one GEMM with the flattened weight; backward computes
  Wᵀ·dY and folds it back (``F.fold``), and dW = Σ_n dY·colsᵀ. It saves the columns, K_h·K_w times the input.
- ``"fast"`` (default of :class:`CustomConv2d`) — saves only the input and the weight (what the native convolution
  saves) and works in the input's own layout. On channels-last input an activation is a (rows, C) matrix:

  * stride 1 (every SimpleNet layer but the stem) needs no im2col. Flatten the padded input to rows
    r = (n·Hp + h)·Wp + w: kernel tap (a, b) of output row r reads input row r + a·Wp + b, so a tap is one GEMM of
    a contiguous row slice with the tap's (C, C_out) weight, accumulated into an output laid out on the padded grid;
    one copy keeps each sample's Ho×Wo window. grad_input is the adjoint (dY on the same grid, each tap adds
    dY·W_ab at rows r + offset, the padding is cut); grad_weight takes a kernel row at a time against the input
    widened to Kw·C columns (a Kw-fold copy, in batch chunks), Kh GEMMs with Kw·C outputs instead of K² thin ones.
    The grid costs (Hp·Wp)/(Ho·Wo) more GEMM rows (1.13× at 32², 1.27× at 16² for 3×3); a 1×1 conv is one GEMM
    on views. This replaced a K²-fold im2col copy and a K²-step col2im loop that cost more than the GEMMs.
  * stride > 1 (the 7×7/2 stem): channels-last im2col as a strided view in batch chunks under
    ``COLUMN_BUDGET_BYTES``, one GEMM per chunk, recomputed in backward (col2im only when the input needs a grad).
  * NCHW input (the course's layout) keeps NCHW throughout, so no layer pays a layout copy: a sample is a
    (C, H·W) matrix and every GEMM is oriented as out[n] = W·X[n] on views. A 1×1 conv is one batched GEMM with
    no copy at all; a stride-1 K×K conv runs the shifted-GEMM trick per sample on the padded (C, Hp·Wp) plane, a
    kernel row at a time against the sample widened to Kw·C rows (batch chunks), and its grad_input is the same
    correlation run on dY with the flipped kernel; the stem writes Wmat·colsᵀ straight into the NCHW output.

  Layout: the output and grad_input keep the input's layout, as ``F.conv2d`` does (course code calls ``.view`` on
  conv outputs); channels-last inputs take the row paths above, NCHW inputs the plane paths.

  Speed and memory against native are in reports/conv.md and reports/memory.md (``nox -s bench``). What limits
  speed on CPU is the GEMMs: ``torch.mm``/``bmm`` (MKL) run the thin K×K shapes slower than the oneDNN kernels
  behind ``F.conv2d``, while 1×1 layers (one batched GEMM on views, no reorder) beat it. The saved state is
  native's (input + weight). Memory: on the NCHW path (and the stem) a call allocates only its outputs; every
  transient (padded chunk, im2col columns, widened planes, the output grid, per-sample weight-gradient products,
  kernel-row copies) is a view of one per-thread workspace (``_scratch``, ≥ ``COLUMN_BUDGET_BYTES``) reused by
  every call, so a training step makes no transient allocations for the C allocator to fragment.

No convolution function is used inside: only unfold/fold, strided views, matmul and elementwise ops.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import FunctionCtx, once_differentiable

Algorithm = Literal["unfold", "fast"]
ALGORITHMS: tuple[Algorithm, ...] = ("unfold", "fast")

# The transient buffers of one batch chunk in the fast path (padded input, columns or widened planes, the output
# grid) are kept under this size together: large enough for efficient GEMMs, small next to a training step's
# activations. They live in a per-thread workspace (`_scratch`) that is allocated once and reused by every call, so
# a training step makes no large transient allocations for the C allocator to strand (glibc keeps freed heap chunks
# mapped: with per-call buffers a SimpleNet step's process peak was 1.7x native's).
COLUMN_BUDGET_BYTES = 32 * 2**20

_WORKSPACES = threading.local()

Pair = tuple[int, int]


def _pair(value: Any, name: str, minimum: int) -> Pair:
    """Validate an int-or-pair hyper-parameter (stride, padding) and return it as a pair."""
    items = tuple(value) if isinstance(value, tuple | list) else (value, value)
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return items[0], items[1]


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def check_conv_args(input_feats: Any, weight: Any, bias: Any, stride: Any, padding: Any) -> tuple[Pair, Pair, Pair]:
    """Raise a ValueError naming the shapes if the arguments do not describe a valid convolution.

    Returns (stride, padding, output (H, W)).
    """
    if not isinstance(input_feats, Tensor) or input_feats.dim() != 4:
        shape = tuple(input_feats.shape) if isinstance(input_feats, Tensor) else type(input_feats).__name__
        raise ValueError(f"input must be a 4-D (N, C, H, W) tensor, got {shape}")
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 4-D (C_out, C_in, K_h, K_w) tensor, got {shape}")
    stride_hw = _pair(stride, "stride", 1)
    pad_hw = _pair(padding, "padding", 0)
    n, c, h, w = input_feats.shape
    c_out, c_in, kh, kw = weight.shape
    if c != c_in:
        raise ValueError(
            f"weight {tuple(weight.shape)} expects {c_in} input channels, input {tuple(input_feats.shape)} has {c}"
        )
    if kh > h + 2 * pad_hw[0] or kw > w + 2 * pad_hw[1]:
        raise ValueError(
            f"kernel {kh}x{kw} is larger than the padded input {h + 2 * pad_hw[0]}x{w + 2 * pad_hw[1]} "
            f"(input {tuple(input_feats.shape)}, padding {pad_hw})"
        )
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (c_out,)):
        shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"bias must have shape ({c_out},) to match weight {tuple(weight.shape)}, got {shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != input_feats.dtype or t.device != input_feats.device):
            raise ValueError(f"{name} is {t.dtype} on {t.device}, input is {input_feats.dtype} on {input_feats.device}")
    out_hw = (_out_size(h, kh, stride_hw[0], pad_hw[0]), _out_size(w, kw, stride_hw[1], pad_hw[1]))
    return stride_hw, pad_hw, out_hw


# ---------------------------------------------------------------------------------------------------------------
# "unfold": the seed's algorithm.


def _unfold_forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, pad: Pair, out_hw: Pair):
    n, c_out = x.shape[0], weight.shape[0]
    cols = F.unfold(x, weight.shape[2:], padding=pad, stride=stride)  # (N, C·Kh·Kw, L)
    out = x.new_empty(n, c_out, *out_hw)
    # Written into a fresh tensor (not returned as a view of the GEMM), so in-place ops may follow.
    torch.matmul(weight.reshape(c_out, -1), cols, out=out.view(n, c_out, out_hw[0] * out_hw[1]))  # (N, C_out, L)
    if bias is not None:
        out += bias.view(1, c_out, 1, 1)
    return out, cols


def _unfold_backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
    weight, cols = ctx.saved_tensors
    c_out = ctx.weight_shape[0]
    dy = grad_out.reshape(grad_out.shape[0], c_out, ctx.out_hw[0] * ctx.out_hw[1])  # (N, C_out, L); N may be 0
    grad_input = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_cols = weight.reshape(c_out, -1).t().matmul(dy)  # (N, C·Kh·Kw, L)
        grad_input = F.fold(grad_cols, ctx.input_shape[2:], ctx.weight_shape[2:], padding=ctx.pad, stride=ctx.stride)
    if ctx.needs_input_grad[1]:
        grad_weight = torch.bmm(dy, cols.transpose(1, 2)).sum(0).view(ctx.weight_shape)  # Σ_n dY·colsᵀ
    return grad_input, grad_weight


# ---------------------------------------------------------------------------------------------------------------
# "fast": channels-last (NHWC) rows; only the input and the weight are saved, as by the native convolution.


def _nhwc_padded(x: Tensor, pad: Pair) -> Tensor:
    """(N, C, H, W) -> (N, H+2Ph, W+2Pw, C) contiguous; no copy when x is channels_last and unpadded."""
    x = x.permute(0, 2, 3, 1)
    if pad != (0, 0):
        x = F.pad(x, (0, 0, pad[1], pad[1], pad[0], pad[0]))
    return x.contiguous()


def _columns_view(xp: Tensor, kernel: Pair, stride: Pair, out_hw: Pair) -> Tensor:
    """im2col of a padded NHWC chunk as a strided view: (n, Hp, Wp, C) -> (n, Ho, Wo, Kh, Kw, C)."""
    s_n, s_h, s_w, s_c = xp.stride()
    size = (xp.shape[0], *out_hw, *kernel, xp.shape[3])
    return xp.as_strided(size, (s_n, s_h * stride[0], s_w * stride[1], s_h, s_w, s_c))


def _scratch(like: Tensor, *shapes: tuple[int, ...]) -> list[Tensor]:
    """Disjoint, uninitialised views of this thread's workspace for like's (device, dtype), one per shape.

    The workspace grows to the largest request (at least COLUMN_BUDGET_BYTES) and is reused by the next call: its
    views are transient, valid until the next `_scratch` call on this thread, and never saved for backward nor
    returned (outputs are fresh tensors the views are copied into). Per thread, so concurrent calls cannot share it.
    """
    align = max(1, 64 // like.element_size())
    sizes = [math.prod(shape) for shape in shapes]
    total = sum(-(-size // align) * align for size in sizes)
    buffers = _WORKSPACES.__dict__.setdefault("buffers", {})
    key = (like.device, like.dtype)
    if key not in buffers or buffers[key].numel() < total:
        buffers.pop(key, None)  # free the old buffer before the larger one is made
        numel = max(total, COLUMN_BUDGET_BYTES // like.element_size())
        buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    flat, views, start = buffers[key], [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        views.append(flat[start : start + size].view(shape))
        start += -(-size // align) * align
    return views


def _pad_into(dst: Tensor, src: Tensor, pad: Pair) -> Tensor:
    """Write src (k, C, H, W) zero-padded into dst (k, C, H + 2Ph, W + 2Pw) (any strides) and return dst."""
    (ph, pw), (h, w) = pad, src.shape[2:]
    if ph:
        dst[:, :, :ph].zero_()
        dst[:, :, ph + h :].zero_()
    if pw:
        dst[:, :, ph : ph + h, :pw].zero_()
        dst[:, :, ph : ph + h, pw + w :].zero_()
    dst[:, :, ph : ph + h, pw : pw + w].copy_(src)
    return dst


def _add_batch_sum(acc: Tensor, batch: Tensor, total: Tensor) -> None:
    """acc += Σ_n batch[n], the sum written into the workspace view `total` (acc's shape) instead of a new tensor."""
    torch.sum(batch, 0, out=total)
    acc += total


def _chunk(n: int, row_bytes: int) -> int:
    """How many samples go into one chunk so that its transient copy (columns, widened input) fits the budget."""
    return max(1, min(n, COLUMN_BUDGET_BYTES // max(1, row_bytes)))


def _weight_matrix(weight: Tensor) -> Tensor:
    """(C_out, C, Kh, Kw) -> (C_out, Kh·Kw·C), the column order of the channels-last im2col."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _fast_forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, pad: Pair, out_hw: Pair) -> Tensor:
    if stride != (1, 1):
        return _im2col_forward(x, weight, bias, stride, pad, out_hw)
    if not is_channels_last(x):
        return _nchw_forward(x, weight, bias, pad, out_hw)
    return _shift_forward(x, weight, bias, pad, out_hw)


def _fast_backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
    if ctx.stride != (1, 1):
        return _im2col_backward(ctx, grad_out)
    if not ctx.channels_last:
        return _nchw_backward(ctx, grad_out.contiguous())
    return _shift_backward(ctx, grad_out)


# Stride 1: the kernel taps as shifted row blocks of the padded input.
#
# Flatten the padded NHWC input to rows r = (n·Hp + h)·Wp + w. Tap (a, b) of output row r reads input row
# r + a·Wp + b, so one tap is one GEMM of a contiguous row slice (no im2col copy at all) with the (C, C_out) slice
# of the weight, and the K² taps accumulate into an output computed on the padded (N, Hp, Wp) grid. Rows outside the
# Ho×Wo window of each sample are junk (never read); rows r < m = T - offset of the last tap hold every valid output.


def _channels_last_empty(like: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def _taps(kernel: Pair, wp: int) -> list[tuple[int, int, int]]:
    """(a, b, row offset a·Wp + b) of every kernel tap."""
    return [(a, b, a * wp + b) for a in range(kernel[0]) for b in range(kernel[1])]


def _valid_rows(grid: Tensor, out_hw: Pair) -> Tensor:
    """(N, Hp, Wp, C) grid -> its (N, Ho, Wo, C) window of valid outputs (a view)."""
    return grid[:, : out_hw[0], : out_hw[1]]


def _shift_forward(x: Tensor, weight: Tensor, bias: Tensor | None, pad: Pair, out_hw: Pair) -> Tensor:
    c_out, kernel = weight.shape[0], (weight.shape[2], weight.shape[3])
    xp = _nhwc_padded(x, pad)  # (N, Hp, Wp, C)
    n, hp, wp, c = xp.shape
    x_rows = xp.view(-1, c)  # (T, C)
    w_taps = weight.permute(2, 3, 1, 0).contiguous()  # (Kh, Kw, C, C_out)
    taps = _taps(kernel, wp)
    m = x_rows.shape[0] - taps[-1][2]
    grid_nchw = _channels_last_empty(x, (n, c_out, hp, wp))
    grid = grid_nchw.permute(0, 2, 3, 1)  # (N, Hp, Wp, C_out), contiguous
    y_rows = grid.view(-1, c_out)[:m]  # (m, C_out)
    for i, (a, b, off) in enumerate(taps):
        if i > 0:
            y_rows.addmm_(x_rows[off : off + m], w_taps[a, b])
        elif bias is None:
            torch.mm(x_rows[:m], w_taps[a, b], out=y_rows)
        else:
            torch.addmm(bias, x_rows[:m], w_taps[a, b], out=y_rows)
    if (hp, wp) == out_hw:  # 1×1, no padding: the grid is the output
        return grid_nchw
    out = _channels_last_empty(x, (n, c_out, *out_hw))
    out.permute(0, 2, 3, 1).copy_(_valid_rows(grid, out_hw))
    return out


def _grad_grid(grad_out: Tensor, grid_hw: Pair) -> Tensor:
    """dY (N, C_out, Ho, Wo) placed on the padded (N, Hp, Wp, C_out) grid, zero on the junk rows."""
    n, c_out, ho, wo = grad_out.shape
    dy_nhwc = grad_out.permute(0, 2, 3, 1)
    if (ho, wo) == grid_hw:
        return dy_nhwc.contiguous()  # no copy when dY is channels_last
    grid = grad_out.new_empty(n, *grid_hw, c_out)
    grid[:, ho:].zero_()
    grid[:, :ho, wo:].zero_()
    _valid_rows(grid, (ho, wo)).copy_(dy_nhwc)
    return grid


def _shift_backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
    x, weight = ctx.saved_tensors
    grad_input = grad_weight = None
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return grad_input, grad_weight
    _, _, h, w = ctx.input_shape
    grid_hw = (h + 2 * ctx.pad[0], w + 2 * ctx.pad[1])
    dy = _grad_grid(grad_out, grid_hw)  # (N, Hp, Wp, C_out): the forward's grid, zero on its junk rows
    if ctx.needs_input_grad[0]:
        grad_input = _shift_grad_input(dy, weight, ctx.pad, (h, w))
    if ctx.needs_input_grad[1]:
        grad_weight = _shift_grad_weight(_nhwc_padded(x, ctx.pad), dy, ctx.weight_shape[2:])
    return grad_input, grad_weight


def _shift_grad_input(dy: Tensor, weight: Tensor, pad: Pair, in_hw: Pair) -> Tensor:
    """The adjoint of the forward: tap (a, b) adds dY·W_ab back at input rows r + off; then the padding is cut."""
    n, hp, wp, c_out = dy.shape
    c, kernel = weight.shape[1], (weight.shape[2], weight.shape[3])
    taps = _taps(kernel, wp)
    m = n * hp * wp - taps[-1][2]
    dy_rows = dy.view(-1, c_out)[:m]  # (m, C_out): the rows every tap reads
    grid_nchw = _channels_last_empty(dy, (n, c, hp, wp))
    grid = grid_nchw.permute(0, 2, 3, 1)  # (N, Hp, Wp, C), contiguous
    gx_rows = grid.view(-1, c)  # (T, C)
    w_taps = weight.permute(2, 3, 0, 1).contiguous()  # (Kh, Kw, C_out, C)
    torch.mm(dy_rows, w_taps[0, 0], out=gx_rows[:m])  # the first tap (offset 0) covers rows [0, m)
    gx_rows[m:].zero_()
    for a, b, off in taps[1:]:
        gx_rows[off : off + m].addmm_(dy_rows, w_taps[a, b])
    if pad == (0, 0):
        return grid_nchw
    cropped = grid[:, pad[0] : pad[0] + in_hw[0], pad[1] : pad[1] + in_hw[1]].permute(0, 3, 1, 2)
    return cropped.contiguous(memory_format=torch.channels_last)


def _shift_grad_weight(xp: Tensor, dy: Tensor, kernel: Pair) -> Tensor:
    """dW_ab = Σ_r dY[r]ᵀ·X[r + a·Wp + b], a kernel row at a time: the input widened to Kw·C columns (row r holds
    rows r .. r+Kw-1) makes Kh GEMMs with Kw·C outputs, faster than K² with C outputs. Batch chunks keep the
    widened copy under COLUMN_BUDGET_BYTES; junk rows of dY are zero, so what they meet does not count."""
    n, hp, wp, c = xp.shape
    c_out, (kh, kw) = dy.shape[-1], kernel
    last = (kh - 1) * wp + kw - 1  # offset of the last tap
    grad_rows = dy.new_zeros(kh, c_out, kw * c)  # (Kh, C_out, Kw·C)
    step = _chunk(n, hp * wp * kw * c * xp.element_size())
    for i in range(0, n, step):
        x_wide = _widened(xp[i : i + step].reshape(-1, c), kw)  # (rows - Kw + 1, Kw·C)
        dy_rows = dy[i : i + step].reshape(-1, c_out)  # (rows, C_out)
        m = dy_rows.shape[0] - last
        for a in range(kh):
            grad_rows[a].addmm_(dy_rows[:m].t(), x_wide[a * wp : a * wp + m])
    return grad_rows.view(kh, c_out, kw, c).permute(1, 3, 0, 2).contiguous()  # (C_out, C, Kh, Kw)


def _widened(rows: Tensor, kw: int) -> Tensor:
    """(R, C) -> (R - Kw + 1, Kw·C), row r holding rows r .. r+Kw-1 side by side; a copy unless Kw = 1."""
    r, c = rows.shape
    return rows.as_strided((r - kw + 1, kw * c), (c, 1)).contiguous()


# Stride > 1: channels-last im2col as a strided view, in batch chunks whose columns stay under COLUMN_BUDGET_BYTES.


def _padded_chunk(x: Tensor, i: int, k: int, pad: Pair, dst: Tensor) -> Tensor:
    """Samples i .. i+k of x, zero-padded channels-last into the workspace view dst (k, Hp, Wp, C)."""
    return _pad_into(dst.permute(0, 3, 1, 2), x[i : i + k], pad).permute(0, 2, 3, 1)


def _im2col_shapes(k: int, in_shape: tuple[int, ...], kernel: Pair, pad: Pair, out_hw: Pair) -> tuple[tuple, tuple]:
    """Workspace shapes of a k-sample chunk: the padded channels-last input and its (k·L, Kh·Kw·C) columns."""
    c, h, w = in_shape[1:]
    return (k, h + 2 * pad[0], w + 2 * pad[1], c), (k * out_hw[0] * out_hw[1], kernel[0] * kernel[1] * c)


def _im2col_forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, pad: Pair, out_hw: Pair) -> Tensor:
    n, c, h, w = x.shape
    c_out, kernel = weight.shape[0], (weight.shape[2], weight.shape[3])
    w_mat = _weight_matrix(weight)  # (C_out, Kh·Kw·C)
    rows = out_hw[0] * out_hw[1]
    if is_channels_last(x):
        out = _channels_last_empty(x, (n, c_out, *out_hw))
        out_rows = out.permute(0, 2, 3, 1).view(n * rows, c_out)  # (N·L, C_out), shares out's storage
    else:  # NCHW: sample n's output is W·colsᵀ, written in place through transposed views
        out = x.new_empty(n, c_out, *out_hw)
        out_planes = out.view(n, c_out, rows)
    per_sample = (rows * w_mat.shape[1] + (h + 2 * pad[0]) * (w + 2 * pad[1]) * c) * x.element_size()
    step = _chunk(n, per_sample)
    xp_ws, cols_ws = _scratch(x, *_im2col_shapes(step, x.shape, kernel, pad, out_hw))
    for i in range(0, n, step):
        k = min(step, n - i)
        xp, cols = xp_ws[:k], cols_ws[: k * rows]
        cols.view(k, *out_hw, *kernel, c).copy_(_columns_view(_padded_chunk(x, i, k, pad, xp), kernel, stride, out_hw))
        if is_channels_last(x):
            torch.mm(cols, w_mat.t(), out=out_rows[i * rows : (i + k) * rows])
        else:
            torch.matmul(w_mat, cols.view(k, rows, -1).transpose(1, 2), out=out_planes[i : i + k])
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def _im2col_backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
    x, weight = ctx.saved_tensors
    n, c, h, w = ctx.input_shape
    c_out, _, kh, kw = ctx.weight_shape
    (sh, sw), (ph, pw), (ho, wo) = ctx.stride, ctx.pad, ctx.out_hw
    rows, taps_c = ho * wo, kh * kw * c
    if ctx.channels_last:
        dy = grad_out.permute(0, 2, 3, 1).reshape(n * rows, c_out)  # (N·L, C_out); no copy if grad is channels_last
    else:
        dy = grad_out.contiguous().view(n, c_out, rows)  # (N, C_out, L)
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_input = grad_weight = None
    if need_x:
        w_mat = _weight_matrix(weight)
        grad_xp = grad_out.new_zeros(n, h + 2 * ph, w + 2 * pw, c)  # padded, channels last
    if need_w:
        grad_w_mat = grad_out.new_zeros(c_out, taps_c)
    per_sample = (rows * taps_c + (h + 2 * ph) * (w + 2 * pw) * c + c_out * taps_c) * grad_out.element_size()
    step = _chunk(n, per_sample)
    xp_shape, cols_shape = _im2col_shapes(step, ctx.input_shape, (kh, kw), ctx.pad, ctx.out_hw)
    xp_ws, cols_ws, prod_ws, total = _scratch(grad_out, xp_shape, cols_shape, (step, c_out, taps_c), (c_out, taps_c))
    for i in range(0, n, step):
        k = min(step, n - i)
        j = i + k
        xp, cols, prod = xp_ws[:k], cols_ws[: k * rows], prod_ws[:k]
        if need_w:
            window = _columns_view(_padded_chunk(x, i, k, ctx.pad, xp), (kh, kw), ctx.stride, ctx.out_hw)
            cols.view(k, ho, wo, kh, kw, c).copy_(window)
            if ctx.channels_last:
                grad_w_mat.addmm_(dy[i * rows : j * rows].t(), cols)  # Σ dYᵀ·cols
            else:
                _add_batch_sum(grad_w_mat, torch.bmm(dy[i:j], cols.view(k, rows, -1), out=prod), total)
        if need_x:
            if ctx.channels_last:
                torch.mm(dy[i * rows : j * rows], w_mat, out=cols)
            else:
                torch.bmm(dy[i:j].transpose(1, 2), w_mat.expand(k, c_out, taps_c), out=cols.view(k, rows, taps_c))
            grad_cols = cols.view(k, ho, wo, kh, kw, c)
            for a in range(kh):  # col2im: each kernel tap adds its columns back at its strided offsets
                for b in range(kw):
                    grad_xp[i:j, a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw] += grad_cols[
                        :, :, :, a, b
                    ]
    if need_x:
        grad_input = grad_xp[:, ph : ph + h, pw : pw + w].permute(0, 3, 1, 2)
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        grad_input = grad_input.contiguous(memory_format=layout)
    if need_w:
        grad_weight = grad_w_mat.view(c_out, kh, kw, c).permute(0, 3, 1, 2).contiguous()
    return grad_input, grad_weight


# ---------------------------------------------------------------------------------------------------------------
# "fast" on NCHW (the course's layout): the same GEMMs oriented so that no layout copy is needed. A sample of an
# NCHW tensor is a (C, H·W) matrix, so every conv is a batch of per-sample GEMMs W·X[n] on views.


def _nchw_forward(x: Tensor, weight: Tensor, bias: Tensor | None, pad: Pair, out_hw: Pair) -> Tensor:
    if weight.shape[2:] == (1, 1) and pad == (0, 0):
        n, c, h, w = x.shape
        out = x.new_empty(n, weight.shape[0], h, w)
        w_mat = weight.view(weight.shape[0], c).expand(n, -1, c)
        torch.bmm(w_mat, x.view(n, c, h * w), out=out.view(n, -1, h * w))  # W·X[n]
    else:
        out = _plane_shift_forward(x, weight, pad, out_hw)
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def _nchw_backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
    x, weight = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_x or need_w):
        return None, None
    n, c_out, ho, wo = grad_out.shape
    if ctx.weight_shape[2:] == (1, 1) and ctx.pad == (0, 0):
        c, dy = ctx.input_shape[1], grad_out.view(n, c_out, ho * wo)  # (N, C_out, L)
        grad_input = None
        if need_x:  # Wᵀ·dY[n] per sample (a batched GEMM: matmul would fold the batch through two full copies)
            grad_input = grad_out.new_empty(ctx.input_shape)
            torch.bmm(weight.view(c_out, c).t().expand(n, c, c_out), dy, out=grad_input.view(n, c, ho * wo))
        grad_weight = None
        if need_w:  # Σ_n dY[n]·X[n]ᵀ, the per-sample products in batch chunks of the workspace
            grad_weight = grad_out.new_zeros(c_out, c)
            x_t = x.view(n, c, ho * wo).transpose(1, 2)
            step = _chunk(n, c_out * c * grad_out.element_size())
            prod, total = _scratch(grad_out, (step, c_out, c), (c_out, c))
            for i in range(0, n, step):
                k = min(step, n - i)
                _add_batch_sum(grad_weight, torch.bmm(dy[i : i + k], x_t[i : i + k], out=prod[:k]), total)
            grad_weight = grad_weight.view(ctx.weight_shape)
        return grad_input, grad_weight
    return _plane_shift_backward(ctx, x, weight, grad_out)


# Stride 1, K > 1 on NCHW: the padded sample flattened to a plane of L = Hp·Wp positions p = h·Wp + w. Output p reads
# input p + a·Wp + b for tap (a, b); positions p < m = L - ((Kh-1)·Wp + Kw-1) hold every valid output. A kernel row
# is one GEMM against the sample "widened" to Kw·C rows (row b·C + c holds channel c shifted by b), so the Kh·Kw taps
# cost Kh GEMMs with Kw·C-long dot products instead of K² thin ones; batch chunks keep the widened copy under
# COLUMN_BUDGET_BYTES. The grid's junk columns (w >= Wo) are dropped by one copy into the output.


def _widen_into(wide: Tensor, planes: Tensor, kw: int) -> Tensor:
    """(k, C, L) -> wide (k, Kw·C, L - Kw + 1) in the workspace, row b·C + c holding planes[:, c, b:]."""
    k, c, length = planes.shape
    view = planes.as_strided((k, kw, c, length - kw + 1), (planes.stride(0), 1, planes.stride(1), 1))
    wide.view(k, kw, c, length - kw + 1).copy_(view)
    return wide


def _kernel_rows(weight: Tensor, dst: Tensor, flipped: bool = False) -> Tensor:
    """(C_out, C, Kh, Kw) -> dst (Kh, C_out, Kw·C): kernel row a as the matrix the widened rows multiply. With
    `flipped`, the rows of the flipped, transposed kernel (Kh, C, Kw·C_out) that the grad_input correlation uses."""
    c_out, c, kh, kw = weight.shape
    if not flipped:
        dst.view(kh, c_out, kw, c).copy_(weight.permute(2, 0, 3, 1))
        return dst
    tiles = dst.view(kh, c, kw, c_out)
    for a in range(kh):
        for b in range(kw):
            tiles[a, :, b].copy_(weight[:, :, kh - 1 - a, kw - 1 - b].t())
    return dst


def _plane_correlate(dst: Tensor, wide: Tensor, rows: Tensor, wp: int) -> Tensor:
    """dst[n, :, p] = Σ_a rows[a] · wide[n, :, p + a·Wp] for p < m: wide (k, Kw·C, ·) -> dst (k, C_out, m)."""
    k, c_out, m = dst.shape
    kh, _, kwc = rows.shape
    torch.bmm(rows[0].expand(k, c_out, kwc), wide[:, :, :m], out=dst)
    for a in range(1, kh):
        dst.baddbmm_(rows[a].expand(k, c_out, kwc), wide[:, :, a * wp : a * wp + m])
    return dst


def _grid_window(grid: Tensor, hw: Pair, wp: int) -> Tensor:
    """(n, C, m) plane of row width Wp -> its (n, C, H, W) window of valid positions (a view)."""
    n, c, m = grid.shape
    return grid.as_strided((n, c, *hw), (c * m, m, wp, 1))


def _plane_shift_forward(x: Tensor, weight: Tensor, pad: Pair, out_hw: Pair) -> Tensor:
    """Per batch chunk, in the workspace: pad, widen, Kh GEMMs onto the grid, then copy its window into the output."""
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    hp, wp = h + 2 * pad[0], w + 2 * pad[1]
    length = hp * wp
    m = length - (kh - 1) * wp - (kw - 1)
    out = x.new_empty(n, c_out, *out_hw)
    step = _chunk(n, (c * length + kw * c * (length - kw + 1) + c_out * m) * x.element_size())
    shapes = (kh, c_out, kw * c), (step, c, hp, wp), (step, kw * c, length - kw + 1), (step, c_out, m)
    rows, xp_ws, wide_ws, grid_ws = _scratch(x, *shapes)
    rows = _kernel_rows(weight, rows)
    for i in range(0, n, step):
        k = min(step, n - i)
        xp, wide, grid = xp_ws[:k], wide_ws[:k], grid_ws[:k]
        planes = _pad_into(xp, x[i : i + k], pad).view(k, c, length)
        _plane_correlate(grid, _widen_into(wide, planes, kw), rows, wp)
        out[i : i + k].copy_(_grid_window(grid, out_hw, wp))
    return out


def _plane_shift_backward(ctx: Any, x: Tensor, weight: Tensor, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """grad_input is the forward's correlation run on dY with the flipped, transposed kernel: dY is placed on a
    zero plane of row width Wp, shifted by the last tap's offset, so that input position q reads dY at
    q + offset(flipped tap). The same plane, read at the forward's alignment, gives grad_weight. Both per batch
    chunk in the workspace; the widened copy of dY (for grad_input) and of X (for grad_weight) share its space."""
    n, c, h, w = ctx.input_shape
    c_out, _, kh, kw = ctx.weight_shape
    (ph, pw), (ho, wo) = ctx.pad, ctx.out_hw
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    hp, wp = h + 2 * ph, w + 2 * pw
    last = (kh - 1) * wp + kw - 1  # offset of the last tap
    m = hp * wp - last  # the forward's plane length
    m_in = (h - 1) * wp + w  # positions from input pixel (0, 0) to (H-1, W-1)
    shift = last - (ph * wp + pw)  # where dY's (0, 0) sits relative to input pixel (0, 0)
    front = max(0, -shift)  # padding wider than the kernel puts dY's first rows before input (0, 0)
    length = front + max(m_in + last, shift + m)
    wide_x = (kw * c_out, m_in + last - kw + 1) if need_x else (0, 0)
    wide_w = (kw * c, hp * wp - kw + 1) if need_w else (0, 0)
    wide_numel = max(math.prod(wide_x), math.prod(wide_w))
    grad_input = grad_out.new_empty(n, c, h, w) if need_x else None
    grad_weight = grad_out.new_empty(ctx.weight_shape) if need_w else None  # both outputs first, as native does
    per_sample = c_out * length + wide_numel
    per_sample += (c * m_in if need_x else 0) + (c * hp * wp + c_out * kw * c if need_w else 0)
    step = _chunk(n, per_sample * grad_out.element_size())
    grid_x, rows_x = ((step, c, m_in), (kh, c, kw * c_out)) if need_x else ((0,), (0,))
    xp_w, prod_w = ((step, c, hp, wp), (step, c_out, kw * c)) if need_w else ((0,), (0,))
    rows_w = (kh, c_out, kw * c) if need_w else (0,)
    shapes = (step, c_out, length), (step * wide_numel,), grid_x, xp_w, prod_w, rows_x, (c_out, kw * c), rows_w
    plane_ws, wide, grid_ws, xp_ws, prod_ws, rows_t, total, grad_rows = _scratch(grad_out, *shapes)
    grad_rows.zero_()  # (Kh, C_out, Kw·C)
    if need_x:
        rows_t = _kernel_rows(weight, rows_t, flipped=True)  # (Kh, C, Kw·C_out)
    for i in range(0, n, step):
        k = min(step, n - i)
        plane, grid, xp, prod = plane_ws[:k], grid_ws[:k], xp_ws[:k], prod_ws[:k]
        plane.zero_()
        dy_view = (k, c_out, ho, wo), (c_out * length, length, wp, 1), plane.storage_offset() + front + shift
        plane.as_strided(*dy_view).copy_(grad_out[i : i + k])
        if need_x:
            planes = plane[:, :, front : front + m_in + last]
            wide_dy = _widen_into(wide[: k * math.prod(wide_x)].view(k, *wide_x), planes, kw)
            grad_input[i : i + k].copy_(_grid_window(_plane_correlate(grid, wide_dy, rows_t, wp), (h, w), wp))
        if need_w:
            planes = _pad_into(xp, x[i : i + k], ctx.pad).view(k, c, hp * wp)
            wide_x_ = _widen_into(wide[: k * math.prod(wide_w)].view(k, *wide_w), planes, kw)
            dy = plane[:, :, front + shift : front + shift + m]  # dY at the forward's alignment, zero on junk
            for a in range(kh):
                _add_batch_sum(grad_rows[a], torch.bmm(dy, wide_x_[:, :, a * wp : a * wp + m].mT, out=prod), total)
    if need_w:
        grad_weight.copy_(grad_rows.view(kh, c_out, kw, c).permute(1, 3, 0, 2))  # (C_out, C, Kh, Kw)
    return grad_input, grad_weight


# ---------------------------------------------------------------------------------------------------------------
# The autograd Functions.


def _forward(
    ctx: Any, algorithm: Algorithm, input_feats: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any
) -> Tensor:
    stride_hw, pad_hw, out_hw = check_conv_args(input_feats, weight, bias, stride, padding)
    ctx.algorithm = algorithm
    ctx.input_shape, ctx.weight_shape = tuple(input_feats.shape), tuple(weight.shape)
    ctx.stride, ctx.pad, ctx.out_hw = stride_hw, pad_hw, out_hw
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if algorithm == "unfold":
        out, cols = _unfold_forward(input_feats, weight, bias, stride_hw, pad_hw, out_hw)
        ctx.save_for_backward(weight if need_x else None, cols if need_w else None)
    else:
        # Like F.conv2d, the output (and later grad_input) keeps the input's layout: a channels-last network stays
        # copy-free, and an NCHW caller gets NCHW tensors (course code calls `.view` on them).
        ctx.channels_last = is_channels_last(input_feats)
        x = input_feats if ctx.channels_last else input_feats.contiguous()
        out = _fast_forward(x, weight, bias, stride_hw, pad_hw, out_hw)
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
    return out


def is_channels_last(x: Tensor) -> bool:
    """True when x is laid out NHWC (and not also plain-contiguous, as a C=1 or 1×1 tensor is)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
    backward = _unfold_backward if ctx.algorithm == "unfold" else _fast_backward
    grad_input, grad_weight = backward(ctx, grad_output)
    if grad_input is not None and ctx.algorithm == "fast" and not ctx.channels_last:
        grad_input = grad_input.contiguous()
    grad_bias = grad_output.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
    return grad_input, grad_weight, grad_bias, None, None


class CustomConv2DFunction(Function):
    """The course's Function: the seed's unfold + GEMM algorithm, course signature
    ``forward(ctx, input_feats, weight, bias, stride=1, padding=0)``."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        input_feats: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: int | Pair = 1,
        padding: int | Pair = 0,
    ) -> Tensor:
        return _forward(ctx, "unfold", input_feats, weight, bias, stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        return _backward(ctx, grad_output)


class FastConv2DFunction(CustomConv2DFunction):
    """The fast algorithm behind the same signature (see the module docstring); backward is shared, dispatched on
    the algorithm recorded in ctx."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        input_feats: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: int | Pair = 1,
        padding: int | Pair = 0,
    ) -> Tensor:
        return _forward(ctx, "fast", input_feats, weight, bias, stride, padding)


_FUNCTIONS: dict[str, type[Function]] = {"unfold": CustomConv2DFunction, "fast": FastConv2DFunction}


def custom_conv2d(
    input_feats: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    algorithm: Algorithm = "unfold",
) -> Tensor:
    """Functional form; ``algorithm`` is the one switch between the two exact implementations."""
    if algorithm not in _FUNCTIONS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    return _FUNCTIONS[algorithm].apply(input_feats, weight, bias, stride, padding)


class CustomConv2d(nn.Module):
    """Drop-in for ``nn.Conv2d`` (same arguments, parameter shapes, init and state_dict keys) running
    :func:`custom_conv2d`. ``algorithm="fast"`` by default; ``"unfold"`` is the seed's algorithm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Pair,
        stride: int | Pair = 1,
        padding: int | Pair = 0,
        dilation: int | Pair = 1,
        groups: int = 1,
        bias: bool = True,
        algorithm: Algorithm = "fast",
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if _pair(dilation, "dilation", 1) != (1, 1):
            raise NotImplementedError(f"CustomConv2d supports dilation=1 only, got dilation={dilation!r}")
        if groups != 1:
            raise NotImplementedError(f"CustomConv2d supports groups=1 only, got groups={groups!r}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride, self.padding = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
        self.dilation, self.groups, self.algorithm = (1, 1), 1, algorithm
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's initialisation: Kaiming-uniform weight (a=√5), uniform bias in ±1/√fan_in."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input_feats: Tensor) -> Tensor:
        return custom_conv2d(input_feats, self.weight, self.bias, self.stride, self.padding, self.algorithm)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.bias is not None}, algorithm={self.algorithm!r}"
        )

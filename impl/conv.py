"""2D convolution as an autograd Function with a hand-written backward (seed §3.1.1). Spec: spec/conv/.

Two exact algorithms, chosen by one switch, `algorithm`:

- ``"unfold"`` — the seed's: im2col with ``F.unfold``, one GEMM with the flattened weight; backward computes
  Wᵀ·dY and folds it back (``F.fold``), and dW = Σ_n dY·colsᵀ. It saves the columns, K_h·K_w times the input.
- ``"fast"`` (default of :class:`CustomConv2d`) — saves only the input and the weight (what the native convolution
  saves), keeps the input's layout, and runs every GEMM through :func:`gemm`, whose one switch ``GEMM`` picks
  oneDNN's matmul (``"onednn"``, the default on CPU for float32/bfloat16) or torch.mm (``"blas"``; also CUDA and
  float64). On this AMD CPU torch.mm is MKL's sgemm, 2-3x slower than oneDNN on these shapes, which is most of what
  the earlier GEMM-based versions lost against ``F.conv2d``. oneDNN's matmul wants its first operand contiguous with
  K along rows (it copies a strided one); its second may have any 2-D strides, but with two threads it ran 10-20x
  slower on a big second operand whose rows are contiguous (cols or dY as (N, K)) than on the transpose of a
  contiguous matrix or a small one. So every GEMM is oriented that way:

  * K > 1 or stride > 1: im2col in batch chunks, one GEMM per chunk. The columns are rows (k·L, Kh·Kw·C), copied
    from the chunk zero-padded channels-last (for an NCHW input, that copy is its transposition), and
    cols·W_matᵀ (+ bias) are the chunk's output rows, copied into the output in the input's layout.
    grad_input, stride 1: the same correlation run on dY with the flipped kernel, channels swapped, padding K-1-P
    (a negative one crops dY). Stride > 1: grad columns dY·W_mat, added back tap by tap (col2im) on a padded chunk.
    grad_weight: Σ_chunks dY (C_out, k·L), copied channel-major, times the columns (their transpose, as is); on
    channels-last input at stride 1 instead a kernel row at a time against the input rows widened to Kw·C columns
    (a Kw-fold copy instead of the Kh·Kw-fold columns: `_shift_grad_weight`).
  * 1×1, stride 1, no padding: a GEMM on views. Channels-last rows (N·H·W, C)·Wᵀ, copied into the output; NCHW one
    batched W·X[n] (torch.bmm: oneDNN's matmul has no batched form and would need a copy per sample).

  Transients (padded chunks, columns, channel-major dY, widened rows) of a batch chunk stay under
  ``COLUMN_BUDGET_BYTES``, as views of one buffer per call (``_scratch``) large enough that glibc maps it on its
  own and unmaps it when the call ends, so nothing transient stays resident or stranded.

  Where speed and memory go against native: reports/conv.md and reports/memory.md (``python -m bench.conv.run``).
  The GEMMs themselves run at about native's speed; what is left is the im2col copy (Kh·Kw times the input) and
  the transposing copies an NCHW input and output pay around it.

No convolution function is used inside: only unfold/fold, strided views, matmul and elementwise ops.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import FunctionCtx, once_differentiable

Algorithm = Literal["unfold", "fast"]
ALGORITHMS: tuple[Algorithm, ...] = ("unfold", "fast")

# The transient buffers of one batch chunk in the fast path (padded input, columns, channel-major dY, widened rows)
# are kept under this size together, so that a chunk's columns are still in cache when its GEMM reads them: on the
# 2-core EPYC of reports/conv.md a 3x3 forward ran 1.6-1.9x native's time at 2-8 MiB and 2.2-2.4x at 16 MiB (one
# sample per chunk where a sample alone is larger). The price is more parallel regions per call (four per chunk:
# pad, im2col, GEMM, output copy), each of which waits for a descheduled pool thread on an oversubscribed CPU:
# beside a test run (and two busy processes) the SimpleNet step ran 1.5-1.8x native's time here, where copies kept
# on the calling thread at 16 MiB (one region per chunk) ran 1.2-1.3x; idle, those ran 1.24x and these 1.05x.
COLUMN_BUDGET_BYTES = 4 * 2**20

# A call's transients are views of one buffer at least this large, allocated per call. glibc serves an allocation
# this size with its own mmap and unmaps it when it is freed (its dynamic mmap threshold stops at 32 MiB), so only
# the pages a call touches are resident, only while it runs, and no freed heap chunk is left for the allocator to
# strand. (Per-call buffers under the threshold made a SimpleNet step's process peak 1.7x native's; a persistent
# workspace counts in every peak.)
MMAP_BYTES = 33 * 2**20

Gemm = Literal["onednn", "blas"]
GEMMS: tuple[Gemm, ...] = ("onednn", "blas")
# The one switch between the fast path's two GEMM routines (the spec flips it and compares both with torch's conv).
# torch.mm on CPU is MKL's sgemm, which on this AMD CPU runs these shapes 2-3x slower than oneDNN's matmul (the
# library behind F.conv2d); "onednn" applies where it can (see `gemm`) and falls back to torch.mm elsewhere.
GEMM: Gemm = "onednn"

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
    empty = [
        name
        for name, size in zip(
            ("output channels", "input channels", "kernel rows", "kernel columns"), weight.shape, strict=True
        )
        if size == 0
    ]
    if empty:
        raise ValueError(f"weight {tuple(weight.shape)} has no {' and no '.join(empty)}")
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
# The GEMM routine of the fast path, behind one switch.


def _onednn_matmul() -> Any:
    """oneDNN's matmul on dense tensors (x·wᵀ + b), or None when this torch build has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_MATMUL = _onednn_matmul()


def _onednn_takes(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs this dtype here, asked at call time: `torch.backends.mkldnn.flags(enabled=False)` turns
    it off as it does for native convolutions, and bfloat16 only where the CPU has native bf16 kernels (elsewhere
    oneDNN falls back to a slow reference one)."""
    if not torch.backends.mkldnn.enabled:
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def gemm(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a (M, K) · b (N, K)ᵀ (+ bias (N,)) as a new (M, N) tensor, by the routine `GEMM` names.

    "onednn" applies on CPU to float32/bfloat16 with `a` contiguous (oneDNN copies a strided `a`; `b` may have any
    2-D strides, oneDNN reorders it anyway); anything else (CUDA, float64, a strided `a`, "blas") runs torch.mm.
    """
    if (
        GEMM == "onednn"
        and _ONEDNN_MATMUL is not None
        and a.device.type == "cpu"
        and a.is_contiguous()
        and a.numel() > 0
        and b.numel() > 0
        and _onednn_takes(a.dtype)
    ):
        # oneDNN reads the bias as dense whatever its strides (a strided or expanded one gave wrong sums)
        return _ONEDNN_MATMUL(a, b, None if bias is None else bias.contiguous(), "none", [], "")
    return torch.mm(a, b.t()) if bias is None else torch.addmm(bias, a, b.t())


# ---------------------------------------------------------------------------------------------------------------
# "fast": only the input and the weight are saved, as by the native convolution; transients live in the workspace.


def _scratch(like: Tensor, *sizes: int) -> list[Tensor]:
    """Disjoint, uninitialised flat views of one new buffer for like's (device, dtype), one per size, of at least
    MMAP_BYTES once it holds 1 MiB (untouched pages cost nothing). They are transient: freed with the call, never
    saved for backward nor returned (outputs are fresh tensors the views are copied into)."""
    align = max(1, 64 // like.element_size())
    total = sum(-(-size // align) * align for size in sizes)
    # CPU only: glibc's heap is what strands pages; on CUDA the padding would only inflate max_memory_allocated
    if like.device.type == "cpu" and total * like.element_size() >= 2**20:
        total = max(total, MMAP_BYTES // like.element_size())
    flat = torch.empty(total, dtype=like.dtype, device=like.device)
    views, start = [], 0
    for size in sizes:
        views.append(flat[start : start + size])
        start += -(-size // align) * align
    return views


def _grad_accumulator(like: Tensor, *shape: int) -> Tensor:
    """Zeros for a weight gradient summed over batch chunks: float32 for half types (a bfloat16 running sum rounds
    once per chunk, 3-7x native's error at one sample per chunk), else like's dtype. Cast back with `.to`."""
    low = like.dtype in (torch.float16, torch.bfloat16)
    return like.new_zeros(shape, dtype=torch.float32 if low else like.dtype)


def _chunk(n: int, sample_bytes: int) -> int:
    """How many samples go into one chunk so that its transients (columns, padded input) fit the budget."""
    return max(1, min(n, COLUMN_BUDGET_BYTES // max(1, sample_bytes)))


def _pad_into(dst: Tensor, src: Tensor, pad: Pair) -> Tensor:
    """Write src (k, C, H, W) into dst (k, C, H + 2Ph, W + 2Pw) (any strides), zero-padded where a pad is positive
    and cropped where it is negative, and return dst."""
    (ph, pw), (h, w) = pad, src.shape[2:]
    src = src[:, :, max(0, -ph) : h - max(0, -ph), max(0, -pw) : w - max(0, -pw)]
    (ph, pw), (h, w) = (max(0, ph), max(0, pw)), src.shape[2:]
    if ph:
        dst[:, :, :ph].zero_()
        dst[:, :, ph + h :].zero_()
    if pw:
        dst[:, :, ph : ph + h, :pw].zero_()
        dst[:, :, ph : ph + h, pw + w :].zero_()
    dst[:, :, ph : ph + h, pw : pw + w].copy_(src)
    return dst


def _padded_rows(x: Tensor, i: int, k: int, pad: Pair, flat: Tensor) -> Tensor:
    """Samples i .. i+k of x (any layout), padded channels-last into the workspace: (k, Hp, Wp, C)."""
    c, h, w = x.shape[1:]
    rows = flat[: k * (h + 2 * pad[0]) * (w + 2 * pad[1]) * c].view(k, h + 2 * pad[0], w + 2 * pad[1], c)
    return _pad_into(rows.permute(0, 3, 1, 2), x[i : i + k], pad).permute(0, 2, 3, 1)


def _columns(
    x: Tensor, i: int, k: int, kernel: Pair, stride: Pair, pad: Pair, out_hw: Pair, ws: list[Tensor]
) -> Tensor:
    """im2col of samples i .. i+k (any layout) as contiguous (k·L, Kh·Kw·C) rows in the workspace (ws: padded input,
    columns), K ordered (a, b, c) like :func:`_weight_matrix`: copied from the zero-padded channels-last chunk, whose
    copy is the only transposition an NCHW input pays."""
    c, (kh, kw), (ho, wo), (sh, sw) = x.shape[1], kernel, out_hw, stride
    xp = _padded_rows(x, i, k, pad, ws[0])
    s_n, s_h, s_w, s_c = xp.stride()
    window = xp.as_strided((k, ho, wo, kh, kw, c), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))
    cols = ws[1][: k * ho * wo * kh * kw * c].view(k, ho, wo, kh, kw, c)
    return cols.copy_(window).view(k * ho * wo, kh * kw * c)


def _weight_matrix(weight: Tensor) -> Tensor:
    """(C_out, C, Kh, Kw) -> (C_out, Kh·Kw·C), the column order of the channels-last im2col."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _layout_empty(like: Tensor, shape: tuple[int, int, int, int], rows: bool) -> Tensor:
    layout = torch.channels_last if rows else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)


def _im2col_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, pad: Pair, out_hw: Pair, rows: bool
) -> Tensor:
    """The convolution as im2col + one GEMM per batch chunk, cols (k·L, K)·W_matᵀ (+ bias), whose (k·L, C_out) rows
    are copied into the output, channels-last if `rows`, else NCHW. A negative pad crops (the stride-1 grad_input
    runs this on dY)."""
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    length, taps = out_hw[0] * out_hw[1], c * kh * kw
    out = _layout_empty(x, (n, c_out, *out_hw), rows)
    plane = (h + 2 * pad[0]) * (w + 2 * pad[1]) * c
    step = _chunk(n, (plane + taps * length) * x.element_size())
    ws = _scratch(x, step * plane, step * taps * length)
    w_mat = _weight_matrix(weight)  # (C_out, Kh·Kw·C)
    for i in range(0, n, step):
        k = min(step, n - i)
        y = gemm(_columns(x, i, k, (kh, kw), stride, pad, out_hw, ws), w_mat, bias)  # (k·L, C_out)
        out[i : i + k].copy_(y.view(k, *out_hw, c_out).permute(0, 3, 1, 2))
    return out


def _im2col_grad_weight(x: Tensor, grad_out: Tensor, kernel: Pair, stride: Pair, pad: Pair) -> Tensor:
    """dW = Σ_chunks dY (C_out, k·L), copied channel-major into the workspace, times the chunk's columns."""
    n, c, h, w = x.shape
    c_out, ho, wo = grad_out.shape[1:]
    (kh, kw), length = kernel, ho * wo
    plane = (h + 2 * pad[0]) * (w + 2 * pad[1]) * c
    step = _chunk(n, (plane + (c * kh * kw + c_out) * length) * x.element_size())
    ws = _scratch(x, step * plane, step * c * kh * kw * length, step * c_out * length)
    grad_w = _grad_accumulator(grad_out, c_out, kh * kw * c)
    for i in range(0, n, step):
        k = min(step, n - i)
        cols = _columns(x, i, k, kernel, stride, pad, (ho, wo), ws)  # (k·L, K)
        dy = ws[2][: c_out * k * length].view(c_out, k, ho, wo)
        dy.copy_(grad_out[i : i + k].transpose(0, 1))
        grad_w += gemm(dy.view(c_out, k * length), cols.t())  # oneDNN takes the columns' transpose as is
    return grad_w.to(x.dtype).view(c_out, kh, kw, c).permute(0, 3, 1, 2).contiguous()


def _shift_grad_weight(x: Tensor, grad_out: Tensor, kernel: Pair, pad: Pair) -> Tensor:
    """Stride-1 dW of a channels-last input with no im2col, a kernel row at a time, per batch chunk on its padded
    rows r = (n·Hp + h)·Wp + w (T of them): dY is placed on the same grid (zero where no output is), the input rows
    are widened to Kw·C columns (row r holds rows r .. r+Kw-1), and kernel row a is one GEMM,
    dW_a (C_out, Kw·C) = dY (C_out, m) · widened[a·Wp : a·Wp + m], m = T - ((Kh-1)·Wp + Kw-1). A Kw-fold copy
    instead of the Kh·Kw-fold columns, for (Hp·Wp)/(Ho·Wo) more GEMM rows."""
    n, c, h, w = x.shape
    c_out, ho, wo = grad_out.shape[1:]
    (kh, kw), hp, wp = kernel, h + 2 * pad[0], w + 2 * pad[1]
    last = (kh - 1) * wp + kw - 1  # offset of the last tap
    step = _chunk(n, (c * (1 + kw) + c_out) * hp * wp * x.element_size())
    rows_ws, wide_ws, dy_ws = _scratch(x, step * c * hp * wp, step * kw * c * hp * wp, step * c_out * hp * wp)
    grad_rows = _grad_accumulator(grad_out, kh, c_out, kw * c)
    for i in range(0, n, step):
        k = min(step, n - i)
        t = k * hp * wp
        m = t - last
        rows = _padded_rows(x, i, k, pad, rows_ws).view(t, c)
        wide = wide_ws[: (t - kw + 1) * kw * c].view(t - kw + 1, kw * c)
        wide.copy_(rows.as_strided((t - kw + 1, kw * c), (c, 1)))  # row r: rows r .. r+Kw-1 side by side
        dy = dy_ws[: c_out * m].view(c_out, m).zero_()
        dy.as_strided((c_out, k, ho, wo), (m, hp * wp, wp, 1)).copy_(grad_out[i : i + k].transpose(0, 1))
        for a in range(kh):  # the widened rows' slice is contiguous, so oneDNN takes its transpose as is
            grad_rows[a] += gemm(dy, wide[a * wp : a * wp + m].t())
    grad_rows = grad_rows.to(x.dtype)
    return grad_rows.view(kh, c_out, kw, c).permute(1, 3, 0, 2).contiguous()  # (C_out, C, Kh, Kw)


def _col2im_grad_input(
    grad_out: Tensor, weight: Tensor, in_shape: tuple[int, ...], stride: Pair, pad: Pair, rows: bool
):
    """Strided grad_input per batch chunk: grad columns dY·W_mat (rows layout), each kernel tap added back at its
    strided offsets on a padded chunk in the workspace, whose interior is copied into grad_input."""
    n, c, h, w = in_shape
    c_out, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (ho, wo) = stride, pad, grad_out.shape[2:]
    length, hp, wp = ho * wo, h + 2 * ph, w + 2 * pw
    grad_input = _layout_empty(grad_out, (n, c, h, w), rows)
    w_mat = _weight_matrix(weight)  # (C_out, Kh·Kw·C)
    step = _chunk(n, (hp * wp * c + length * (c_out + kh * kw * c)) * grad_out.element_size())
    padded_ws, dy_ws = _scratch(grad_out, step * hp * wp * c, step * length * c_out)
    for i in range(0, n, step):
        k = min(step, n - i)
        dy = dy_ws[: k * length * c_out].view(k, ho, wo, c_out)
        dy.copy_(grad_out[i : i + k].permute(0, 2, 3, 1))
        grad_cols = gemm(dy.view(k * length, c_out), w_mat.t()).view(k, ho, wo, kh, kw, c)
        grad_xp = padded_ws[: k * hp * wp * c].view(k, hp, wp, c).zero_()
        for a in range(kh):
            for b in range(kw):
                grad_xp[:, a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw] += grad_cols[:, :, :, a, b]
        grad_input[i : i + k].copy_(grad_xp[:, ph : ph + h, pw : pw + w].permute(0, 3, 1, 2))
    return grad_input


def _is_pointwise(weight_shape: tuple[int, ...], stride: Pair, pad: Pair) -> bool:
    return tuple(weight_shape[2:]) == (1, 1) and stride == (1, 1) and pad == (0, 0)


def _pointwise_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1×1 conv is a GEMM on views: channels-last rows (N·H·W, C)·Wᵀ, copied into the output; on NCHW one
    batched W·X[n] (torch.bmm: oneDNN's matmul has no batched form and would need a copy per sample)."""
    n, c, h, w = x.shape
    c_out = weight.shape[0]
    if is_channels_last(x):
        y = gemm(x.permute(0, 2, 3, 1).reshape(n * h * w, c), weight.view(c_out, c), bias)  # (N·H·W, C_out)
        # Copied, not returned as a view: autograd forbids in-place ops (ReLU) on a view made inside a Function.
        return _layout_empty(x, (n, c_out, h, w), True).copy_(y.view(n, h, w, c_out).permute(0, 3, 1, 2))
    out = x.new_empty(n, c_out, h, w)
    torch.bmm(weight.view(c_out, c).expand(n, c_out, c), x.view(n, c, h * w), out=out.view(n, c_out, h * w))
    if bias is not None:
        out += bias.view(1, c_out, 1, 1)
    return out


def _pointwise_backward(ctx: Any, x: Tensor, weight: Tensor, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
    n, c_out, h, w = grad_out.shape
    c = ctx.input_shape[1]
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_input = grad_weight = None
    if ctx.channels_last:
        dy = grad_out.permute(0, 2, 3, 1).reshape(n * h * w, c_out)  # no copy when dY is channels_last
        if need_x:
            grad_input = gemm(dy, weight.view(c_out, c).t()).view(n, h, w, c).permute(0, 3, 1, 2)
        if need_w:  # both operands have the pixels strided: torch.mm's transposed GEMM
            grad_weight = gemm(dy.t(), x.permute(0, 2, 3, 1).reshape(n * h * w, c).t()).view(ctx.weight_shape)
        return grad_input, grad_weight
    dy = grad_out.view(n, c_out, h * w)  # (N, C_out, L)
    if need_x:  # Wᵀ·dY[n] per sample (a batched GEMM: matmul would fold the batch through two full copies)
        grad_input = grad_out.new_empty(ctx.input_shape)
        torch.bmm(weight.view(c_out, c).t().expand(n, c, c_out), dy, out=grad_input.view(n, c, h * w))
    if need_w:  # Σ_n dY[n]·X[n]ᵀ, the per-sample products in batch chunks of the workspace
        grad_weight = _grad_accumulator(grad_out, c_out, c)
        x_t = x.view(n, c, h * w).transpose(1, 2)
        step = _chunk(n, c_out * c * grad_out.element_size())
        (prod,) = _scratch(grad_out, step * c_out * c)
        for i in range(0, n, step):
            k = min(step, n - i)
            grad_weight += torch.bmm(dy[i : i + k], x_t[i : i + k], out=prod[: k * c_out * c].view(k, c_out, c)).sum(0)
        grad_weight = grad_weight.to(grad_out.dtype).view(ctx.weight_shape)
    return grad_input, grad_weight


def _fast_forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, pad: Pair, out_hw: Pair) -> Tensor:
    if _is_pointwise(weight.shape, stride, pad):
        return _pointwise_forward(x, weight, bias)
    return _im2col_forward(x, weight, bias, stride, pad, out_hw, rows=is_channels_last(x))


def _fast_backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
    x, weight = ctx.saved_tensors
    if not ctx.channels_last:
        grad_out = grad_out.contiguous()
    if _is_pointwise(ctx.weight_shape, ctx.stride, ctx.pad):
        return _pointwise_backward(ctx, x, weight, grad_out)
    (kh, kw), (ph, pw), rows = ctx.weight_shape[2:], ctx.pad, ctx.channels_last
    grad_input = grad_weight = None
    if ctx.needs_input_grad[0] and ctx.stride == (1, 1):
        # The stride-1 grad_input is a correlation of dY with the flipped kernel, channels swapped, padding K-1-P.
        flipped = weight.flip(2, 3).transpose(0, 1)
        grad_input = _im2col_forward(
            grad_out, flipped, None, (1, 1), (kh - 1 - ph, kw - 1 - pw), ctx.input_shape[2:], rows
        )
    elif ctx.needs_input_grad[0]:
        grad_input = _col2im_grad_input(grad_out, weight, ctx.input_shape, ctx.stride, ctx.pad, rows)
    if ctx.needs_input_grad[1] and ctx.stride == (1, 1) and rows:
        grad_weight = _shift_grad_weight(x, grad_out, (kh, kw), ctx.pad)
    elif ctx.needs_input_grad[1]:
        grad_weight = _im2col_grad_weight(x, grad_out, (kh, kw), ctx.stride, ctx.pad)
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

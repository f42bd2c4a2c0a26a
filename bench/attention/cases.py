"""The timed steps of the attention benchmark, importable on their own so a memory probe can rebuild them in a fresh
process (`bench.device.process_memory_mib`).

Candidates, all forward+backward on the same weights and input:
- `manual`: `Attention(fused_attn=False)`, the explicit softmax(Q·Kᵀ·scale)·V;
- `fused`: `Attention()` as shipped (the default path, `F.scaled_dot_product_attention` inside);
- `sdpa`: the same function written directly with `F.linear` → `F.scaled_dot_product_attention` → `F.linear`, the
  least work PyTorch can do for it — the baseline the default path is held to (target: within 1.1x);
- `sdpa-core`: `F.scaled_dot_product_attention` alone on ready q, k, v (no projections): how much of the step is
  attention proper.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from impl.attention import Attention

CANDIDATES = ("manual", "fused", "sdpa", "sdpa-core")
DIM, HEADS = 192, 4  # the default SimpleViT's width and heads


def batch_for(side: int, device: torch.device) -> int:
    """Images per step: the ViT's 8x8 grid at a training batch; the 32x32 grid smaller (its L×L matrix is 256x)."""
    if device.type == "cuda":
        return 256 if side <= 8 else 32
    return 32 if side <= 8 else 2


def make_attention_step(candidate: str, side: int, batch: int, device: str | torch.device) -> Callable[[], object]:
    """One forward+backward of `candidate` on a (batch, side, side, 192) grid with 4 heads."""
    if candidate not in CANDIDATES:
        raise ValueError(f"unknown candidate {candidate!r}; choose from {CANDIDATES}")
    device = torch.device(device)
    torch.manual_seed(0)
    attn = Attention(DIM, num_heads=HEADS, fused_attn=candidate != "manual").to(device)
    x = torch.randn(batch, side, side, DIM, device=device, requires_grad=True)
    params = (attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias)
    L, hd = side * side, DIM // HEADS

    if candidate in ("manual", "fused"):
        inputs: tuple[torch.Tensor, ...] = (x, *params)

        def forward() -> torch.Tensor:
            return attn(x)

    elif candidate == "sdpa":
        inputs = (x, *params)

        def forward() -> torch.Tensor:
            qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).view(batch, L, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, nH, L, hd)
            return F.linear(out.transpose(1, 2).reshape(batch, side, side, DIM), attn.proj.weight, attn.proj.bias)

    else:
        q, k, v = (torch.randn(batch, HEADS, L, hd, device=device, requires_grad=True) for _ in range(3))
        inputs = (q, k, v)

        def forward() -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v)

    def step() -> tuple[torch.Tensor, ...]:
        out = forward()
        return torch.autograd.grad(out, inputs, torch.ones_like(out))

    return step


def make_vit_train_step(fused_attn: bool, batch: int, device: str | torch.device) -> Callable[[], object]:
    """One AdamW training step of the default SimpleViT on random 128x128 images."""
    from impl.models.vit import SimpleViT

    device = torch.device(device)
    torch.manual_seed(0)
    model = SimpleViT().to(device).train()
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused_attn
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, 128, 128, device=device)
    labels = torch.randint(0, 100, (batch,), device=device)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        return loss

    return step

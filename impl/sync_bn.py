"""BatchNorm with the global batch's statistics under torch.distributed, on any device. Spec: spec/train/test_ddp_bn.py.

Under DistributedDataParallel each rank sees batch_size / world_size images, so a plain BatchNorm normalizes with
per-rank statistics and N ranks no longer train like one process. `torch.nn.SyncBatchNorm` fixes that on CUDA only (it
refuses CPU tensors), so `convert_sync_batchnorm` uses it on CUDA and `GlobalBatchNorm2d` elsewhere: per-channel sums
all-reduced, then the sums of squared deviations from the global mean (two passes, stable in float32 whatever the
offset; statistics in float32 at least, also for bf16 input), through the differentiable
`torch.distributed.nn.functional.all_reduce`, whose backward all-reduces the gradient, so the statistics' gradient is
the global batch's too. Outside training, or without a process group of two or more ranks, both are a plain BatchNorm2d
(same state_dict keys, same parameters and buffers).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode mean and variance are those of the batch summed over all ranks."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.track_running_stats and _distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        stat_dtype = torch.promote_types(x.dtype, torch.float32)  # bf16/fp16 under autocast: statistics in float32
        xs = x.to(stat_dtype)
        count = torch.tensor([x.numel() // c], dtype=stat_dtype, device=x.device)
        total = all_reduce(torch.cat([xs.sum(dim=(0, 2, 3)), count]))  # (C + 1,)
        n = total[-1]
        mean = total[:c] / n
        # two passes, not E[x²] − E[x]²: that cancels catastrophically in float32 when |mean| ≫ std
        centred = xs - mean.view(1, c, 1, 1)
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / n  # biased: what normalizes the batch
        self._update_running_stats(mean.detach(), var.detach(), n.item())
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        y = centred * scale.view(1, c, 1, 1)
        y = y + self.bias.view(1, c, 1, 1) if self.affine else y
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: float) -> None:
        """As nn.BatchNorm2d does: an exponential (or, with momentum None, cumulative) average, unbiased variance."""
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_((var * (n / max(n - 1.0, 1.0))).to(self.running_var.dtype), factor)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> int:
    """Replace every BatchNorm2d below `module`, in place, by one that syncs statistics (torch's on CUDA, else
    GlobalBatchNorm2d), sharing its parameters and buffers; returns how many were replaced."""
    replaced = 0
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = _sync_like(child, device)
            setattr(module, name, sync)
            replaced += 1
        else:
            replaced += convert_sync_batchnorm(child, device)
    return replaced


def _sync_like(bn: nn.BatchNorm2d, device: torch.device) -> nn.Module:
    kind = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm2d
    sync = kind(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        sync.weight, sync.bias = bn.weight, bn.bias  # the same Parameters: an optimizer built earlier still steps them
    if bn.track_running_stats:
        sync.running_mean, sync.running_var = bn.running_mean, bn.running_var
        sync.num_batches_tracked = bn.num_batches_tracked
    sync.train(bn.training)
    return sync

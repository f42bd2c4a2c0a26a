"""The course's given helpers (the starter's custom_blocks.py), written a second way for the corpus: the same
contract (zero-padded row-major windows, per-sample stochastic depth rescaled by 1/keep), other tensor operations."""

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, kernel_size=(16, 16), stride=(16, 16), padding=(0, 0), in_chans=3, embed_dim=768):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride, padding)

    def forward(self, x):
        return self.proj(x).movedim(1, -1)  # (B, C, H, W) -> (B, H, W, C)


def window_partition(x, window_size):
    B, H, W, C = x.shape
    ws = window_size
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    rows = x.reshape(B, Hp // ws, ws, Wp // ws, ws, C).transpose(2, 3)  # (B, nh, nw, ws, ws, C)
    return rows.reshape(-1, ws, ws, C), (Hp, Wp)


def window_unpartition(windows, window_size, pad_hw, hw):
    (Hp, Wp), (H, W), ws = pad_hw, hw, window_size
    C = windows.shape[-1]
    x = windows.reshape(-1, Hp // ws, Wp // ws, ws, ws, C).transpose(2, 3).reshape(-1, Hp, Wp, C)
    return x[:, :H, :W].contiguous()


class MLP(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


def drop_path(x, drop_prob=0.0, training=False):
    if not training or not drop_prob:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, drop_prob=None):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """N(mean, std²) truncated to [a, b], by redrawing the values that fall outside."""
    with torch.no_grad():
        tensor.normal_(mean, std)
        outside = (tensor < a) | (tensor > b)
        while outside.any():
            tensor[outside] = torch.empty_like(tensor[outside]).normal_(mean, std)
            outside = (tensor < a) | (tensor > b)
        return tensor

"""Corpus: a second correct course-style student_code.py that makes other valid choices than correct_a.

Its choices: the convolution pads explicitly (F.pad) and unfolds without padding, folds its input gradient onto the
padded grid and crops it; attention loops over the heads; the ViT pools with a flatten-mean and builds its drop-path
rates by hand; PGD recomputes the least-confident target at every step (a reading the readme allows), clips to the
ε-ball only (no pixel box) and leaves the model's modes to the caller (main.py calls model.eval() first). No bonus.
"""

import math

import torch
import torch.nn.functional as F
from custom_blocks import MLP, DropPath, PatchEmbed, trunc_normal_, window_partition, window_unpartition
from torch import nn
from torch.autograd import Function
from torchvision import transforms
from torchvision.utils import make_grid

NORMALIZE = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


class CustomConv2DFunction(Function):
    @staticmethod
    def forward(ctx, input_feats, weight, bias, stride=1, padding=0):
        k = weight.shape[-1]
        padded = F.pad(input_feats, (padding,) * 4)
        hp, wp = padded.shape[-2:]
        h_out, w_out = (hp - k) // stride + 1, (wp - k) // stride + 1
        cols = F.unfold(padded, k, stride=stride)  # (N, Ci·K·K, L)
        out = weight.flatten(1) @ cols  # (N, Co, L)
        if bias is not None:
            out = out + bias[None, :, None]
        ctx.save_for_backward(padded, weight)
        ctx.geometry = (stride, padding, hp, wp)
        return out.reshape(out.shape[0], -1, h_out, w_out).clone(memory_format=torch.contiguous_format)

    @staticmethod
    def backward(ctx, grad_output):
        padded, weight = ctx.saved_tensors
        stride, padding, hp, wp = ctx.geometry
        k = weight.shape[-1]
        dy = grad_output.flatten(2)  # (N, Co, L)
        grads = [None, None, None, None, None]
        if ctx.needs_input_grad[0]:
            dcols = torch.einsum("ok,nol->nkl", weight.flatten(1), dy)
            dpadded = F.fold(dcols, (hp, wp), k, stride=stride)
            grads[0] = dpadded[:, :, padding : hp - padding, padding : wp - padding].contiguous()
        if ctx.needs_input_grad[1]:
            cols = F.unfold(padded, k, stride=stride)
            grads[1] = torch.einsum("nol,nkl->ok", dy, cols).view_as(weight)
        if ctx.needs_input_grad[2]:
            grads[2] = dy.sum((0, 2))
        return tuple(grads)


custom_conv2d = CustomConv2DFunction.apply


class CustomConv2d(nn.Module):
    """The same interface as torch.nn.Conv2d (the starter's wrapper)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.groups = dilation, groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * self.kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return custom_conv2d(input, self.weight, self.bias, self.stride, self.padding)


class SimpleNet(nn.Module):
    def __init__(self, conv_op=nn.Conv2d, num_classes=100):
        super().__init__()
        layers = []
        convs = [(3, 64, 7, 2, 3), "pool", (64, 64, 1, 1, 0), (64, 64, 3, 1, 1), (64, 256, 1, 1, 0), "pool"]
        convs += [(256, 128, 1, 1, 0), (128, 128, 3, 1, 1), (128, 512, 1, 1, 0)]
        for spec in convs:
            if spec == "pool":
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
            else:
                c_in, c_out, k, s, p = spec
                layers += [conv_op(c_in, c_out, kernel_size=k, stride=s, padding=p), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


default_cnn_model = SimpleNet


class Attention(nn.Module):
    """Multi-head self-attention, one head at a time."""

    def __init__(self, dim, num_heads=8, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, C).unbind(2)  # each (B, L, C), heads side by side
        hd = C // self.num_heads
        heads = []
        for h in range(self.num_heads):
            cut = slice(h * hd, (h + 1) * hd)
            weights = torch.softmax(q[..., cut] @ k[..., cut].transpose(1, 2) * self.scale, dim=-1)  # (B, L, L)
            heads.append(weights @ v[..., cut])
        return self.proj(torch.cat(heads, dim=-1).reshape(B, H, W, C))


class TransformerBlock(nn.Module):
    def __init__(
        self,
        dim,
        num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path=0.0,
        norm_layer=nn.LayerNorm,
        act_layer=nn.GELU,
        window_size=0,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = MLP(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.window_size = window_size

    def _attend(self, x):
        if not self.window_size:
            return self.attn(x)
        windows, pad_hw = window_partition(x, self.window_size)
        return window_unpartition(self.attn(windows), self.window_size, pad_hw, x.shape[1:3])

    def forward(self, x):
        x = x + self.drop_path(self._attend(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SimpleViT(nn.Module):
    def __init__(
        self,
        img_size=128,
        num_classes=100,
        patch_size=16,
        in_chans=3,
        embed_dim=192,
        depth=4,
        num_heads=4,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=0.1,
        norm_layer=nn.LayerNorm,
        act_layer=nn.GELU,
        use_abs_pos=True,
        window_size=4,
        window_block_indexes=(0, 2),
    ):
        super().__init__()
        grid = img_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim)) if use_abs_pos else None
        self.patch_embed = PatchEmbed(
            (patch_size, patch_size), (patch_size, patch_size), in_chans=in_chans, embed_dim=embed_dim
        )
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(
            *(
                TransformerBlock(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias,
                    rate,
                    norm_layer,
                    act_layer,
                    window_size if i in window_block_indexes else 0,
                )
                for i, rate in enumerate(rates)
            )
        )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x.flatten(1, 2).mean(1))


default_vit_model = SimpleViT


def get_train_transforms():
    return transforms.Compose(
        [transforms.RandomResizedCrop(128), transforms.RandomHorizontalFlip(), transforms.ToTensor(), NORMALIZE]
    )


def get_val_transforms():
    return transforms.Compose([transforms.Resize(144), transforms.CenterCrop(128), transforms.ToTensor(), NORMALIZE])


class PGDAttack:
    def __init__(self, loss_fn, num_steps=10, step_size=0.01, epsilon=0.1):
        self.loss_fn = loss_fn
        self.num_steps = num_steps
        self.step_size = step_size
        self.epsilon = epsilon

    def perturb(self, model, input):
        """PGD descending the loss of the currently least confident label, inside the ε-ball of the input."""
        clean = input.detach()
        output = clean.clone()
        with torch.enable_grad():
            for _ in range(self.num_steps):
                output.requires_grad_(True)
                logits = model(output)
                loss = self.loss_fn(logits, logits.argmin(dim=1).detach())
                (grad,) = torch.autograd.grad(loss, output)
                with torch.no_grad():
                    output = output - self.step_size * grad.sign()
                    output = clean + (output - clean).clamp(-self.epsilon, self.epsilon)
        return output.detach()


default_attack = PGDAttack


def default_visfunction(input, n_rows=10):
    std = torch.tensor([0.229, 0.224, 0.225], device=input.device).view(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406], device=input.device).view(1, 3, 1, 1)
    return make_grid((input.detach() * std + mean).clamp(0, 1), nrow=n_rows)

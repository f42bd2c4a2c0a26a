"""Corpus: a correct course-style student_code.py, written for the spec (not from impl/ or a student's file).

Its choices: the unfold convolution pads inside unfold/fold and saves only what the needed gradients use; batched
multi-head attention (the starter's reshapes); the starter's SimpleViT layout (final LayerNorm, mean over tokens,
(1, H, W, C) positions); PGD with the least-confident target fixed from the clean input, the ε clip and the valid
normalized-pixel box, parameters frozen while attacking and the model's modes restored; the bonus as an
adversarially training SimpleNet (default_cnn_model). The mutants in spec/corpus/mutants.py are one-line edits of it.
"""

import math

import torch
import torch.nn.functional as F
from custom_blocks import MLP, DropPath, PatchEmbed, trunc_normal_, window_partition, window_unpartition
from torch import nn
from torch.autograd import Function
from torchvision import transforms
from torchvision.utils import make_grid

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CustomConv2DFunction(Function):
    @staticmethod
    def forward(ctx, input_feats, weight, bias, stride=1, padding=0):
        assert weight.size(2) == weight.size(3), "square kernels only"
        n, _, h, w = input_feats.shape
        c_out, k = weight.size(0), weight.size(2)
        h_out = (h + 2 * padding - k) // stride + 1
        w_out = (w + 2 * padding - k) // stride + 1
        ctx.stride, ctx.padding, ctx.input_hw = stride, padding, (h, w)
        ctx.save_for_backward(input_feats if ctx.needs_input_grad[1] else None, weight)
        cols = F.unfold(input_feats, k, padding=padding, stride=stride)  # (N, Ci·K·K, L)
        out = weight.reshape(c_out, -1) @ cols  # (N, Co, L)
        out = out.view(n, c_out, h_out, w_out)
        if bias is not None:  # noqa: SIM108 (two lines: the corpus mutates each)
            out = out + bias.view(1, -1, 1, 1)
        else:
            out = out.clone()  # a Function must not return a view of its own tensor: ReLU(inplace=True) follows
        return out

    @staticmethod
    def backward(ctx, grad_output):
        input_feats, weight = ctx.saved_tensors
        c_out, k = weight.size(0), weight.size(2)
        dy = grad_output.reshape(grad_output.size(0), c_out, -1)  # (N, Co, L)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            dcols = weight.reshape(c_out, -1).t() @ dy  # (N, Ci·K·K, L)
            grad_input = F.fold(dcols, ctx.input_hw, k, padding=ctx.padding, stride=ctx.stride)
        if ctx.needs_input_grad[1]:
            cols = F.unfold(input_feats, k, padding=ctx.padding, stride=ctx.stride)
            grad_weight = (dy @ cols.transpose(1, 2)).sum(0).view_as(weight)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None


custom_conv2d = CustomConv2DFunction.apply


class CustomConv2d(nn.Module):
    """The same interface as torch.nn.Conv2d (the starter's wrapper)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__()
        assert isinstance(kernel_size, int), "We only support squared filters"
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.groups = dilation, groups  # not used (for compatibility)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return custom_conv2d(input, self.weight, self.bias, self.stride, self.padding)


class SimpleNet(nn.Module):
    def __init__(self, conv_op=nn.Conv2d, num_classes=100):
        super().__init__()
        self.features = nn.Sequential(
            conv_op(3, 64, kernel_size=7, stride=2, padding=3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            conv_op(64, 64, kernel_size=1, stride=1, padding=0),
            nn.ReLU(inplace=True),
            conv_op(64, 64, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            conv_op(64, 256, kernel_size=1, stride=1, padding=0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            conv_op(256, 128, kernel_size=1, stride=1, padding=0),
            nn.ReLU(inplace=True),
            conv_op(128, 128, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            conv_op(128, 512, kernel_size=1, stride=1, padding=0),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.fc(x.view(x.size(0), -1))


class AdversarialSimpleNet(SimpleNet):
    """The bonus: in training mode each forward first moves its batch with a short PGD, then classifies it."""

    def __init__(self, conv_op=nn.Conv2d, num_classes=100, num_steps=2, step_size=0.02, epsilon=0.05):
        super().__init__(conv_op, num_classes)
        self.attack = PGDAttack(nn.CrossEntropyLoss(), num_steps=num_steps, step_size=step_size, epsilon=epsilon)

    def forward(self, x):
        if self.training:
            x = self.attack.perturb(super().forward, x, modules=self)
        return super().forward(x)


default_cnn_model = AdversarialSimpleNet


class Attention(nn.Module):
    """Multi-head self-attention on (B, H, W, C) token grids."""

    def __init__(self, dim, num_heads=8, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, nH, L, hd)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B·nH, L, L)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


class TransformerBlock(nn.Module):
    """Pre-LN block: x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x))); windowed when ws > 0."""

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

    def forward(self, x):
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + self.drop_path(x)
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
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, img_size // patch_size, img_size // patch_size, embed_dim))
        else:
            self.pos_embed = None
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=dpr[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                window_size=window_size if i in window_block_indexes else 0,
            )
            for i in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward(self, x):
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).mean(dim=(1, 2))
        return self.head(x)


default_vit_model = SimpleViT


def get_train_transforms():
    return transforms.Compose(
        [
            transforms.Resize(144),
            transforms.RandomHorizontalFlip(),
            transforms.RandomResizedCrop(128),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


def get_val_transforms():
    return transforms.Compose(
        [transforms.Resize(144), transforms.CenterCrop(128), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )


class PGDAttack:
    def __init__(self, loss_fn, num_steps=10, step_size=0.01, epsilon=0.1):
        self.loss_fn = loss_fn
        self.num_steps = num_steps
        self.step_size = step_size
        self.epsilon = epsilon

    def perturb(self, model, input, modules=None):
        """PGD toward the least confident label of the clean input; `modules` owns the modes and parameters (the
        model itself unless `model` is a bound forward)."""
        modules = model if modules is None else modules
        mean = torch.tensor(MEAN, dtype=input.dtype, device=input.device).view(1, -1, 1, 1)
        std = torch.tensor(STD, dtype=input.dtype, device=input.device).view(1, -1, 1, 1)
        lo, hi = (0 - mean) / std, (1 - mean) / std
        clean = input.detach()
        output = clean.clone()
        modes = [(m, m.training) for m in modules.modules()]
        params = [p for p in modules.parameters() if p.requires_grad]
        modules.eval()
        for p in params:
            p.requires_grad_(False)  # the attack needs the input's gradient only
        try:
            with torch.enable_grad():
                target = model(clean).argmin(dim=1)
                for _ in range(self.num_steps):
                    x = output.requires_grad_(True)
                    loss = self.loss_fn(model(x), target)
                    (grad,) = torch.autograd.grad(loss, x)
                    output = output.detach() - self.step_size * grad.sign()
                    output = torch.min(torch.max(output, clean - self.epsilon), clean + self.epsilon)
                    output = torch.min(torch.max(output, lo), hi)
        finally:
            for p in params:
                p.requires_grad_(True)
            for m, training in modes:
                m.training = training
        return output.detach()


default_attack = PGDAttack


def vis_grid(input, n_rows=10):
    """Denormalized images as one grid (C, H, W) for TensorBoard."""
    mean = torch.tensor(MEAN, device=input.device).view(1, -1, 1, 1)
    std = torch.tensor(STD, device=input.device).view(1, -1, 1, 1)
    return make_grid((input.detach() * std + mean).clamp(0, 1), nrow=n_rows)


default_visfunction = vis_grid

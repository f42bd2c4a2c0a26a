"""SimpleViT (seed §3.2.2): a plain ViT with ViTDet windowed blocks for 128x128 MiniPlaces images. Spec:
spec/models/test_vit.py.

patch embedding → learned absolute position embedding (1, H', W', C) → `depth` Pre-LN blocks (block i windowed when
i ∈ window_block_indexes, drop-path rate linear from 0 to drop_path_rate) → LayerNorm → mean over tokens → Linear head.
The default configuration has 1,959,076 parameters (the formula is in the spec).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from impl.attention import PatchEmbed, TransformerBlock


class SimpleViT(nn.Module):
    """Vision Transformer classifier on a (img_size/patch_size)² token grid (course interface)."""

    def __init__(
        self,
        img_size: int = 128,
        num_classes: int = 100,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 192,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        window_size: int = 4,
        window_block_indexes: Sequence[int] = (0, 2),
    ) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if img_size % patch_size != 0:
            raise ValueError(f"img_size={img_size} is not divisible by patch_size={patch_size}")
        outside = [i for i in window_block_indexes if not 0 <= i < depth]
        if outside:
            raise ValueError(f"window_block_indexes {outside} are outside the {depth} blocks (depth={depth})")
        self.img_size = img_size
        grid = img_size // patch_size  # tokens per side, H' = W'
        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim)) if use_abs_pos else None
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth
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
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None and (x.ndim != 4 or x.shape[-2:] != (self.img_size, self.img_size)):
            raise ValueError(
                f"SimpleViT was built for (B, C, {self.img_size}, {self.img_size}) images, got shape {tuple(x.shape)}"
            )
        x = self.patch_embed(x)  # (B, H', W', C); any size without abs. positions
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).mean(dim=(1, 2))  # (B, C)
        return self.head(x)

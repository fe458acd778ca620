"""The 3D-patch ViT encoder. On a full clip it runs dense [B, N, D]; on context tokens it runs packed: the
kept tokens of every sequence end to end in one [Tc, D] tensor with variable-length attention, so no padding
row goes through a block (`forward(clips, packed=...)`; with padded indices it packs and unpacks around it).

Shape legend: B batch, C channels, T frames, H/W pixels, N grid tokens, K kept tokens (padded), Tc packed
context rows, D width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vjepa.dense.config import check_levels
from vjepa.layers.block import Block
from vjepa.layers.patch_embed import TubeletEmbed
from vjepa.layers.pos_embed import grid_coords, sincos_3d
from vjepa.layers.varlen import VarlenLayout
from vjepa.models.packing import PackedIndex, unpack
from vjepa.models.tokens import token_coords


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    coords: torch.Tensor | None,
    layout: VarlenLayout | None,
    grad_ckpt: bool,
) -> torch.Tensor:
    """x [B, N, D] dense (layout None) or packed [T, D] with its layout."""
    for block in blocks:
        if grad_ckpt and torch.is_grad_enabled():
            x = checkpoint(block, x, coords, layout, use_reentrant=False)
        else:
            x = block(x, coords, layout)
    return x


@torch.no_grad()
def init_transformer(model: nn.Module, blocks: nn.ModuleList) -> None:
    """Truncated normal (std 0.02) for Linear and Conv weights, zero biases, unit LayerNorms, then the
    residual output projections of block l (1-based) scaled by 1/sqrt(2 l). Shared by encoder and predictor."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for layer, block in enumerate(blocks, start=1):
        block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
        block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))


class VisionTransformer3D(nn.Module):
    def __init__(
        self,
        *,
        width: int,
        depth: int,
        heads: int,
        mlp_hidden: int,
        grid: tuple[int, int, int],
        patch: int = 16,
        tubelet: int = 2,
        pos_embed: str = "sincos",
        rope_layout: str = "half",
        attention: str = "sdpa",
        grad_ckpt: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if pos_embed not in ("sincos", "rope"):
            raise ValueError(f"model.pos_embed: unknown kind {pos_embed!r}")
        self.width, self.grid, self.grad_ckpt = width, tuple(grid), grad_ckpt
        self.use_rope = pos_embed == "rope"
        self.patch_embed = TubeletEmbed(width, patch=patch, tubelet=tubelet, device=device, dtype=dtype)
        if not self.use_rope:
            n = grid[0] * grid[1] * grid[2]
            self.register_buffer("pos_embed", torch.zeros(1, n, width, device=device, dtype=dtype))
        self.blocks = nn.ModuleList(
            Block(
                width,
                heads,
                mlp_hidden,
                backend=attention,
                rope=self.use_rope,
                rope_layout=rope_layout,
                device=device,
                dtype=dtype,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6, device=device, dtype=dtype)

    def reset_positions(self) -> None:
        if not self.use_rope:
            self.pos_embed.copy_(sincos_3d(self.width, self.grid)[None])

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialises every weight in place (after `to_empty`): see `init_transformer`; fixed positions."""
        init_transformer(self, self.blocks)
        self.reset_positions()

    def no_weight_decay(self) -> set[str]:
        """Parameter names AdamW must not decay besides 1-D ones (the position table, when it is learned)."""
        return {n for n, _ in self.named_parameters() if n == "pos_embed"}

    def positions(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """The additive table for `grid` [1, N, D]. A shorter clip of the built frame size (an image, or a
        source of shorter clips) takes the table's first time steps: the sin-cos rows of its own positions,
        as in a model built for it and as RoPE sees them. Another frame size: trilinear interpolation."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        if tuple(grid[1:]) == self.grid[1:] and grid[0] <= self.grid[0]:
            return self.pos_embed[:, : grid[0] * grid[1] * grid[2]]  # time-major: a prefix of the rows
        table = self.pos_embed.reshape(1, *self.grid, self.width).permute(0, 4, 1, 2, 3)  # [1, D, Tp, Hp, Wp]
        table = F.interpolate(table.float(), size=tuple(grid), mode="trilinear", align_corners=False)
        return table.permute(0, 2, 3, 4, 1).flatten(1, 3).to(self.pos_embed.dtype)

    def embed(self, clips: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """clips [B, C, T, H, W] -> (patch tokens with positions [B, N, D], token grid)."""
        grid = self.patch_embed.grid(*clips.shape[2:])
        x = self.patch_embed(clips)  # [B, N, D]
        if not self.use_rope:
            x = x + self.positions(grid).to(x.dtype)
        return x, grid

    def embed_lengths(self, clips: list[torch.Tensor]) -> tuple[list[torch.Tensor], tuple[int, int, int]]:
        """Batches of several clip lengths (same H, W) -> (tokens with positions [Bg, Ng, D] per batch, the
        first one's grid). One patch-embedding call for all of them (a tubelet's tokens depend on it alone,
        so the clips are cut into tubelets and embedded together): the same module calls on every rank
        whatever lengths its batch holds, which ZeRO-3's parameter gathering needs."""
        grids = [self.patch_embed.grid(*c.shape[2:]) for c in clips]
        if len({g[1:] for g in grids}) > 1:
            raise ValueError(f"clips of one batch need one frame size, got grids {grids}")
        tubelet = self.patch_embed.tubelet
        pieces = []
        for c, (tp, _, _) in zip(clips, grids):
            if c.shape[2] == 1 and tubelet > 1:
                c = c.expand(-1, -1, tubelet, -1, -1)  # an image: one tubelet
            b, ch, _, h, w = c.shape
            tubes = c.reshape(b, ch, tp, tubelet, h, w).transpose(1, 2)  # [Bg, Tp, C, tubelet, H, W]
            pieces.append(tubes.reshape(b * tp, ch, tubelet, h, w))
        x = self.patch_embed(torch.cat(pieces))  # [sum Bg*Tp, Hp*Wp, D]
        tokens = []
        for rows, c, grid in zip(x.split([p.shape[0] for p in pieces]), clips, grids):
            t = rows.reshape(c.shape[0], -1, rows.shape[-1])  # [Bg, Tp*Hp*Wp, D], time-major
            tokens.append(t if self.use_rope else t + self.positions(grid).to(t.dtype))
        return tokens, grids[0]

    def _forward_packed(
        self,
        clips: torch.Tensor | list[torch.Tensor],
        context: PackedIndex,
        levels: list[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """The encoder on packed context sets (any number of mask configurations; the patch embedding of a
        clip is computed once for all of them): clips [B, C, T, H, W], or one such batch per clip length
        (same H, W; clips numbered across them) -> [Tc, D]; with `levels`, one [Tc, D] per level."""
        if isinstance(clips, torch.Tensor):
            tokens, grid = self.embed(clips)  # [B, N, D]
        else:
            tokens, grid = self.embed_lengths(clips)  # [Bg, Ng, D] per length
        x = context.gather(tokens)  # [Tc, D]
        coords = token_coords(context.token, grid) if self.use_rope else None  # [Tc, 3]
        if levels is None:
            return self.norm(run_blocks(self.blocks, x, coords, context.layout, self.grad_ckpt))
        return self._levels(x, coords, context.layout, levels)

    def _levels(
        self, x: torch.Tensor, coords: torch.Tensor | None, layout: VarlenLayout | None, levels: list[int]
    ) -> list[torch.Tensor]:
        """x through the blocks up to the last of `levels` -> one tensor per level: an intermediate block's
        output layer-normed without affine, the last block's through `self.norm`."""
        if not levels:
            raise ValueError("levels: give at least one block index")
        check_levels(levels, len(self.blocks), "levels")
        outs, done = [], 0
        for i in levels:
            x = run_blocks(self.blocks[done : i + 1], x, coords, layout, self.grad_ckpt)
            done = i + 1
            outs.append(self.norm(x) if i == len(self.blocks) - 1 else F.layer_norm(x, (x.shape[-1],)))
        return outs

    def _forward_levels(self, clips: torch.Tensor, levels: list[int]) -> list[torch.Tensor]:
        """The full clip's `levels` (see `_levels`) -> one [B, N, D] per level."""
        x, grid = self.embed(clips)  # [B, N, D]
        coords = None
        if self.use_rope:
            coords = grid_coords(grid, device=x.device)[None].expand(x.shape[0], -1, -1)  # [B, N, 3]
        return self._levels(x, coords, None, levels)

    def forward(
        self,
        clips: torch.Tensor | list[torch.Tensor],
        context_idx: torch.Tensor | None = None,
        context_valid: torch.Tensor | None = None,
        *,
        packed: PackedIndex | None = None,
        levels: list[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """clips [B, C, T, H, W] -> [B, N, D]; or [B, K, D] at `context_idx` [B, K] (zeros on padding rows;
        context_valid None: every row is real); or, with `packed`, the packed context rows [Tc, D] (clips may then
        be a list of batches of several clip lengths). With `levels` (block indices, full clips only): a list of
        [B, N, D], one per level (see _forward_levels), or with `packed` one [Tc, D] per level."""
        if levels is not None and packed is not None:
            return self._forward_packed(clips, packed, list(levels))
        if levels is not None:
            if context_idx is not None:
                raise ValueError("levels: for full clips or packed sets (not context_idx)")
            return self._forward_levels(clips, list(levels))
        if packed is not None:
            return self._forward_packed(clips, packed)
        if not isinstance(clips, torch.Tensor):
            raise TypeError("a list of clip batches (several clip lengths) needs packed context sets")
        if context_idx is not None:
            context = PackedIndex.from_padded(context_idx, context_valid)
            z = self._forward_packed(clips, context)  # [Tc, D]
            return unpack(z, context_valid, clips.shape[0])  # [B, K, D]
        x, grid = self.embed(clips)  # [B, N, D]
        coords = None
        if self.use_rope:
            coords = grid_coords(grid, device=x.device)[None].expand(x.shape[0], -1, -1)  # [B, N, 3]
        x = run_blocks(self.blocks, x, coords, None, self.grad_ckpt)
        return self.norm(x)

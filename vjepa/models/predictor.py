"""The narrow ViT predictor: embeds the context tokens, appends one learned mask token (per mask
configuration) at every target position, runs its blocks and projects the target tokens back to the
encoder width. It runs packed: each sequence (a sample under one mask configuration) is its context rows then
its target rows, all sequences end to end in one [Tc+Tt, P] tensor with variable-length attention
(`forward(z, packed=...)`; on padded sets it packs and unpacks around it).

Shape legend: B batch, Kc/Kt context/target tokens per sample (padded), Tc/Tt packed context/target rows,
M mask tokens, D encoder width, P predictor width.
"""

from __future__ import annotations

import torch
from torch import nn

from vjepa.layers.block import Block
from vjepa.layers.pos_embed import sincos_3d
from vjepa.models.encoder import init_transformer, run_blocks
from vjepa.models.packing import PackedIndex, PackedMasks, interleave, unpack
from vjepa.models.tokens import token_coords


class Predictor(nn.Module):
    def __init__(
        self,
        *,
        embed_dim: int,
        width: int,
        depth: int,
        heads: int,
        grid: tuple[int, int, int],
        num_mask_tokens: int = 2,
        levels: int = 1,
        context_head: bool = False,
        mlp_ratio: float = 4.0,
        pos_embed: str = "sincos",
        rope_layout: str = "half",
        attention: str = "sdpa",
        grad_ckpt: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.width, self.grid, self.grad_ckpt = width, tuple(grid), grad_ckpt
        self.use_rope = pos_embed == "rope"
        self.predictor_embed = nn.Linear(embed_dim, width, device=device, dtype=dtype)
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1, width, device=device, dtype=dtype)) for _ in range(num_mask_tokens)
        )
        if not self.use_rope:
            n = grid[0] * grid[1] * grid[2]
            self.register_buffer("predictor_pos_embed", torch.zeros(1, n, width, device=device, dtype=dtype))
        self.predictor_blocks = nn.ModuleList(
            Block(
                width,
                heads,
                int(width * mlp_ratio),
                backend=attention,
                rope=self.use_rope,
                rope_layout=rope_layout,
                device=device,
                dtype=dtype,
            )
            for _ in range(depth)
        )
        self.predictor_norm = nn.LayerNorm(width, eps=1e-6, device=device, dtype=dtype)
        self.predictor_proj = nn.Linear(width, embed_dim * levels, device=device, dtype=dtype)
        # V-JEPA 2.1's dense loss (loss.context_weight > 0): the context rows' own head, same outputs
        self.predictor_proj_context = (
            nn.Linear(width, embed_dim * levels, device=device, dtype=dtype) if context_head else None
        )

    def reset_positions(self) -> None:
        if not self.use_rope:
            self.predictor_pos_embed.copy_(sincos_3d(self.width, self.grid)[None])

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialises every weight in place (after `to_empty`): see `init_transformer`; fixed positions,
        zero mask tokens."""
        init_transformer(self, self.predictor_blocks)
        self.reset_positions()
        for token in self.mask_tokens:
            nn.init.zeros_(token)

    def no_weight_decay(self) -> set[str]:
        """Parameter names AdamW must not decay besides 1-D ones: the mask tokens (and a learned table)."""
        return {
            n for n, _ in self.named_parameters() if n.startswith("mask_tokens.") or n.endswith("pos_embed")
        }

    def _forward_packed(
        self,
        context_tokens: torch.Tensor,
        context: PackedIndex,
        target: PackedIndex,
        with_context: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Encoder output at the packed `context` rows [Tc, D] -> predictions at the packed `target` rows
        [Tt, D]; sequence s of `context` and of `target` are one sequence here, and each target row gets the
        mask token of its `group` (its mask configuration)."""
        x_ctx = self.predictor_embed(context_tokens)  # [Tc, P]
        tokens = torch.cat([t.reshape(1, -1) for t in self.mask_tokens]).to(x_ctx.dtype)  # [M, P]
        x_tgt = tokens.index_select(0, target.group)  # [Tt, P]
        seqs, order, target_rows = interleave(context, target)
        x = torch.cat([x_ctx, x_tgt]).index_select(0, order)  # [Tc+Tt, P], sequence by sequence
        coords = None
        if self.use_rope:
            coords = token_coords(seqs.token, self.grid)  # [Tc+Tt, 3]
        else:
            x = x + self.predictor_pos_embed[0].to(x.dtype).index_select(0, seqs.token)
        x = run_blocks(self.predictor_blocks, x, coords, seqs.layout, self.grad_ckpt)
        if with_context:  # also the context rows, through their own head: [Tt, L*D], [Tc, L*D]
            context_rows = torch.argsort(order)[: context.total]  # where each context row went
            pred = self.predictor_proj(self.predictor_norm(x.index_select(0, target_rows)))
            return pred, self.predictor_proj_context(self.predictor_norm(x.index_select(0, context_rows)))
        x = self.predictor_norm(x.index_select(0, target_rows))  # [Tt, P]
        return self.predictor_proj(x)  # [Tt, D]

    def forward(
        self,
        context: torch.Tensor,
        *,
        context_idx: torch.Tensor | None = None,
        context_valid: torch.Tensor | None = None,
        target_idx: torch.Tensor | None = None,
        target_valid: torch.Tensor | None = None,
        mask_index: int = 0,
        packed: PackedMasks | None = None,
        with_context: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """context [B, Kc, D] (encoder output at context_idx) -> predictions [B, Kt, D] at target_idx (zeros
        on padding rows; a valid mask of None: every row is real). With `packed`: context [Tc, D] at the
        packed context rows -> predictions [Tt, D] at the packed target rows; `with_context` (a predictor
        built with context_head) also returns its predictions at the context rows [Tc, D]. D is the encoder
        width times `levels`."""
        if with_context and (packed is None or self.predictor_proj_context is None):
            raise ValueError("with_context: needs packed sets and a predictor built with context_head=True")
        if packed is not None:
            return self._forward_packed(context, packed.context, packed.target, with_context)
        if context_idx is None or target_idx is None:
            raise ValueError("the predictor needs context_idx and target_idx (or packed sets)")
        if not 0 <= mask_index < len(self.mask_tokens):
            raise ValueError(f"mask_index {mask_index} out of range for {len(self.mask_tokens)} mask tokens")
        ctx = PackedIndex.from_padded(context_idx, context_valid, group=mask_index)
        tgt = PackedIndex.from_padded(target_idx, target_valid, group=mask_index)
        z = context.flatten(0, 1) if context_valid is None else context[context_valid]  # [Tc, D]
        return unpack(self._forward_packed(z, ctx, tgt), target_valid, context.shape[0])  # [B, Kt, D]

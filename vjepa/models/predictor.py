"""The narrow ViT predictor: embeds the context tokens, appends one learned mask token (per mask
configuration) at every target position, runs its blocks and projects the target tokens back to the
encoder width.

Shape legend: B batch, Kc context tokens, Kt target tokens, D encoder width, P predictor width.
"""

from __future__ import annotations

import torch
from torch import nn

from vjepa.layers.block import Block
from vjepa.layers.pos_embed import sincos_3d
from vjepa.models.encoder import init_transformer, run_blocks
from vjepa.models.tokens import gather_tokens, token_coords


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
        self.predictor_proj = nn.Linear(width, embed_dim, device=device, dtype=dtype)

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

    def forward(
        self,
        context: torch.Tensor,
        *,
        context_idx: torch.Tensor,
        context_valid: torch.Tensor | None,
        target_idx: torch.Tensor,
        target_valid: torch.Tensor | None,
        mask_index: int = 0,
    ) -> torch.Tensor:
        """context [B, Kc, D] (encoder output at context_idx) -> predictions [B, Kt, D] at target_idx."""
        if not 0 <= mask_index < len(self.mask_tokens):
            raise ValueError(f"mask_index {mask_index} out of range for {len(self.mask_tokens)} mask tokens")
        b, kc, _ = context.shape
        kt = target_idx.shape[1]
        x = self.predictor_embed(context)  # [B, Kc, P]
        m = self.mask_tokens[mask_index].to(x.dtype).expand(b, kt, -1)  # [B, Kt, P]
        idx = torch.cat([context_idx, target_idx], dim=1)  # [B, Kc+Kt]
        x = torch.cat([x, m], dim=1)
        coords = None
        if self.use_rope:
            coords = token_coords(idx, self.grid)
        else:
            table = self.predictor_pos_embed.to(x.dtype).expand(b, -1, -1)
            x = x + gather_tokens(table, idx)
        valid = None
        if context_valid is not None or target_valid is not None:
            cv = context_valid if context_valid is not None else context_idx.new_ones(b, kc, dtype=torch.bool)
            tv = target_valid if target_valid is not None else target_idx.new_ones(b, kt, dtype=torch.bool)
            valid = torch.cat([cv, tv], dim=1)
        x = run_blocks(self.predictor_blocks, x, valid, coords, self.grad_ckpt)
        x = self.predictor_norm(x[:, kc:])  # [B, Kt, P]
        return self.predictor_proj(x)

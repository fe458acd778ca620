"""The action-conditioned predictor (V-JEPA 2-AC style): from the frozen encoder's features of steps 0..t and
the actions and states of those steps, predict the features of step t + 1, for every t at once.

Shape legend: B batch, T time steps, N = Hp*Wp patch tokens of one frame, F encoder feature width, A action
dims, S state dims, M = N + 2 tokens per step, K = T*M tokens in the sequence, D predictor width, H heads,
hd head dim.

Each frame is encoded on its own (`encode_frames`: the frame is repeated to fill one tubelet, as V-JEPA 2-AC
does), so step t's features never see another frame. The predictor's sequence is, per step, one action token,
one state token (each a Linear embedding) and the frame's N patch tokens (Linear F -> D). Attention is
block-causal over time: a token of step t attends to every token of steps <= t and to none after, so the
output at step t is a function of steps 0..t only (tests check this exactly). Positions are 3-D RoPE
(`vjepa.layers.pos_embed.Rope3D`, rotate-half layout) on (t, h, w); the action and state tokens of step t sit
at (t, -1, -1), off the patch grid, and their own embeddings tell them apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vjepa.layers.attention import Attention
from vjepa.layers.block import Mlp
from vjepa.models.encoder import init_transformer

__all__ = ["ACPredictor", "block_causal_mask", "encode_frames"]


def block_causal_mask(
    steps: int, tokens_per_step: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean [K, K] attention mask, True where query i may attend to key j: step(j) <= step(i)."""
    step = torch.arange(steps * tokens_per_step, device=device) // tokens_per_step  # [K]
    return step[None, :] <= step[:, None]


class _MaskedAttention(Attention):
    """The project's fused-qkv RoPE attention with an explicit boolean mask (SDPA)."""

    def forward(self, x: torch.Tensor, *, coords: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, k, d = x.shape
        qkv = self.qkv(x).view(b, k, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, K, hd]
        q, k_, v = qkv.unbind(0)
        q, k_ = self.rope.apply(q, coords), self.rope.apply(k_, coords)
        out = F.scaled_dot_product_attention(q, k_, v, attn_mask=mask)  # [B, H, K, hd]
        return self.proj(out.transpose(1, 2).reshape(b, k, d))  # [B, K, D]


class _CausalBlock(nn.Module):
    """Pre-norm block (LayerNorm eps 1e-6, GELU MLP) over the masked attention."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.attn = _MaskedAttention(dim, heads, rope=True, device=device, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.mlp = Mlp(dim, mlp_hidden, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), coords=coords, mask=mask)
        return x + self.mlp(self.norm2(x))


class ACPredictor(nn.Module):
    """forward(features [B, T, N, F], actions [B, T, A], states [B, T, S]) -> predicted features of steps
    1..T [B, T, N, F] (output t predicts step t + 1). With `residual`, output t is step t's features plus the
    predicted change. Actions are multiplied by `action_scale` first (e.g. 1 / the largest action, so that
    they reach the predictor at the scale of its other inputs)."""

    def __init__(
        self,
        *,
        feature_dim: int,
        action_dim: int,
        state_dim: int,
        grid: tuple[int, int],
        width: int = 384,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        residual: bool = False,
        action_scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("feature_dim", feature_dim),
            ("action_dim", action_dim),
            ("state_dim", state_dim),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid must be (Hp, Wp) with both >= 1, got {grid}")
        if depth < 1 or width % heads or (width // heads) < 6:
            raise ValueError(
                f"width {width} / heads {heads} / depth {depth}: need depth >= 1 and head dim >= 6"
            )
        self.grid, self.feature_dim = (int(grid[0]), int(grid[1])), feature_dim
        self.action_dim, self.state_dim = action_dim, state_dim
        if not action_scale > 0:
            raise ValueError(f"action_scale must be > 0, got {action_scale}")
        # actions are multiplied by this before their embedding: small velocities (the push scene's are at
        # most 0.05) would otherwise reach the predictor as near-zero tokens it learns to ignore
        self.action_scale = float(action_scale)
        self.residual = (
            residual  # predict the change from step t's features (copying is where training starts)
        )
        self.feature_embed = nn.Linear(feature_dim, width, device=device, dtype=dtype)
        self.action_embed = nn.Linear(action_dim, width, device=device, dtype=dtype)
        self.state_embed = nn.Linear(state_dim, width, device=device, dtype=dtype)
        self.blocks = nn.ModuleList(
            _CausalBlock(width, heads, int(width * mlp_ratio), device=device, dtype=dtype)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6, device=device, dtype=dtype)
        self.proj = nn.Linear(width, feature_dim, device=device, dtype=dtype)
        if device is None or torch.device(device).type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Truncated normal 0.02, zero biases, residual projections scaled per depth (as the encoder)."""
        init_transformer(self, self.blocks)

    def _coords(self, steps: int, device: torch.device) -> torch.Tensor:
        """(t, h, w) of every token in sequence order -> [K, 3]: per step the action, the state, the patches."""
        hp, wp = self.grid
        h, w = torch.meshgrid(torch.arange(hp, device=device), torch.arange(wp, device=device), indexing="ij")
        patch_hw = torch.stack([h.flatten(), w.flatten()], dim=1)  # [N, 2]
        step_hw = torch.cat([torch.full((2, 2), -1, device=device), patch_hw])  # [M, 2]
        t = torch.arange(steps, device=device)[:, None, None].expand(-1, len(step_hw), 1)  # [T, M, 1]
        return torch.cat([t, step_hw[None].expand(steps, -1, -1)], dim=2).flatten(0, 1)  # [T, M, 3] -> [K, 3]

    def forward(self, features: torch.Tensor, actions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        b, t, n, f = features.shape
        want = (self.grid[0] * self.grid[1], self.feature_dim)
        if (n, f) != want:
            raise ValueError(
                f"features must be [B, T, N, F] = [B, T, {want[0]}, {want[1]}], got {tuple(features.shape)}"
            )
        if actions.shape != (b, t, self.action_dim):
            raise ValueError(
                f"actions must be [B, T, A] = {(b, t, self.action_dim)}, got {tuple(actions.shape)}"
            )
        if states.shape != (b, t, self.state_dim):
            raise ValueError(
                f"states must be [B, T, S] = {(b, t, self.state_dim)}, got {tuple(states.shape)}"
            )
        x = torch.cat(
            [
                self.action_embed(actions * self.action_scale)[:, :, None],  # [B, T, 1, D]
                self.state_embed(states)[:, :, None],  # [B, T, 1, D]
                self.feature_embed(features),  # [B, T, N, D]
            ],
            dim=2,
        )  # [B, T, M, D]
        m = n + 2
        x = x.flatten(1, 2)  # [B, T, M, D] -> [B, K, D]
        coords = self._coords(t, x.device)[None].expand(b, -1, -1)  # [B, K, 3]
        mask = block_causal_mask(t, m, device=x.device)  # [K, K]
        for block in self.blocks:
            x = block(x, coords, mask)
        x = x.unflatten(1, (t, m))[:, :, 2:]  # [B, K, D] -> [B, T, M, D] -> patch tokens [B, T, N, D]
        out = self.proj(self.norm(x))  # [B, T, N, F]
        return features + out if self.residual else out


@torch.no_grad()
def encode_frames(encoder: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """Frozen-encoder features of each frame on its own: clips [B, C, T, H, W] (normalised, the layout the
    encoder and `data_pipelines.normalize` use) -> [B, T, N, F].

    Each frame is repeated to fill one tubelet, so the encoder sees a still clip of that frame alone; the output
    is layer-normed without affine (the target the predictor learns, as in pretraining).
    """
    if clips.ndim != 5:
        raise ValueError(f"clips must be [B, C, T, H, W], got {tuple(clips.shape)}")
    b, c, t, h, w = clips.shape
    tubelet = encoder.patch_embed.tubelet
    frames = clips.transpose(1, 2).reshape(b * t, c, 1, h, w)  # [B, C, T, H, W] -> [B*T, C, 1, H, W]
    tokens = encoder(frames.expand(-1, -1, tubelet, -1, -1))  # [B*T, C, tubelet, H, W] -> [B*T, N, F]
    tokens = F.layer_norm(tokens, tokens.shape[-1:])
    return tokens.unflatten(0, (b, t))  # [B*T, N, F] -> [B, T, N, F]

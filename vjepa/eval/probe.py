"""Probes on frozen tokens: an attentive probe (optional self-attention blocks, then cross-attention from one
learned query over all tokens, then Linear; V-JEPA 2's has 3 blocks + the pooler and 16 heads, V-JEPA 1's
the pooler only), a linear probe on mean-pooled tokens, and a per-token linear probe (one weight matrix per
token position: a linear readout that still sees where and when).

Shape legend: B batch, N tokens, D width, K classes, Q learned queries (1), H heads, hd head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vjepa.layers.block import Block, Mlp

__all__ = [
    "DEFAULT_HEADS",
    "KINDS",
    "AttentiveProbe",
    "LinearProbe",
    "TokenLinearProbe",
    "build_probe",
    "default_heads",
    "resolve_heads",
]

KINDS = ("attentive", "linear", "token_linear")
DEFAULT_HEADS = 16  # V-JEPA 2's attentive probe
MIN_HEAD_DIM = 8  # below this the default of 16 heads gives way to default_heads(D)


def default_heads(dim: int, *, min_head_dim: int = 32, max_heads: int = 16) -> int:
    """The most heads (at most `max_heads`) that divide `dim` with head dim >= `min_head_dim`; at least 1."""
    for heads in range(min(max_heads, dim // min_head_dim), 0, -1):
        if dim % heads == 0:
            return heads
    return 1


def resolve_heads(dim: int, heads: int | None) -> int:
    """The head count a probe of width `dim` uses: None means default_heads(dim); the default of 16 heads
    (DEFAULT_HEADS) also gives way to default_heads(dim) where 16 does not divide `dim` or would leave a head
    dim under 8 (small test widths). Any other count is used as given (and must divide `dim`)."""
    if heads is None:
        return default_heads(dim)
    if heads == DEFAULT_HEADS and (dim % heads or dim // heads < MIN_HEAD_DIM):
        return default_heads(dim)
    return heads


class CrossAttention(nn.Module):
    """Learned queries attend over the tokens (no self-attention among the tokens)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"probe width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """queries [B, Q, D], tokens [B, N, D] -> [B, Q, D]."""
        b, n, d = tokens.shape
        q = self.q(queries).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, H, Q, hd]
        k, v = (
            self.kv(tokens).view(b, n, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # [B, H, N, hd]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, Q, hd]
        return self.proj(out.transpose(1, 2).flatten(2))  # [B, Q, D]


class AttentiveProbe(nn.Module):
    """[B, N, D] -> logits [B, K]: `depth` pre-norm self-attention blocks over the tokens, then one learned
    query cross-attends over them (with a residual MLP), then LayerNorm and Linear."""

    def __init__(self, dim: int, num_classes: int, *, heads: int | None = None, depth: int = 0) -> None:
        super().__init__()
        heads = resolve_heads(dim, heads)
        self.blocks = nn.ModuleList(Block(dim, heads, 4 * dim) for _ in range(depth))
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm_tokens = nn.LayerNorm(dim, eps=1e-6)
        self.cross = CrossAttention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        _init(self)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens
        for block in self.blocks:
            x = block(x)  # [B, N, D]
        q = self.query.expand(x.shape[0], -1, -1)  # [B, 1, D]
        q = q + self.cross(q, self.norm_tokens(x))
        q = q + self.mlp(self.norm_mlp(q))
        return self.head(self.norm(q[:, 0]))  # [B, K]


class LinearProbe(nn.Module):
    """[B, N, D] -> logits [B, K]: mean over tokens, per-feature standardisation (BatchNorm without affine
    parameters, so raw features of any scale train alike), then Linear."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        _init(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(tokens.mean(1)))  # [B, D] -> [B, K]


class TokenLinearProbe(nn.Module):
    """[B, N, D] -> logits [B, K]: the N*D token features standardised (BatchNorm without affine), then one
    Linear over all of them, so every token position has its own weights."""

    def __init__(self, dim: int, num_classes: int, *, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.norm = nn.BatchNorm1d(tokens * dim, affine=False, eps=1e-6)
        self.head = nn.Linear(tokens * dim, num_classes)
        _init(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] != self.tokens:
            raise ValueError(f"token_linear probe: built for {self.tokens} tokens, got {tokens.shape[1]}")
        return self.head(self.norm(tokens.flatten(1)))  # [B, N*D] -> [B, K]


@torch.no_grad()
def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


def build_probe(
    kind: str,
    *,
    dim: int,
    num_classes: int,
    heads: int | None = None,
    depth: int = 0,
    seed: int = 0,
    tokens: int | None = None,
) -> nn.Module:
    """A freshly initialised probe; its weights depend only on the arguments (the global RNG is untouched).
    `tokens` (tokens per clip) is needed by the token_linear probe only."""
    if kind not in KINDS:
        raise ValueError(f"--kind: must be one of {KINDS}, got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "attentive":
            return AttentiveProbe(dim, num_classes, heads=heads, depth=depth)
        if kind == "token_linear":
            if tokens is None:
                raise ValueError("token_linear probe: needs the number of tokens per clip")
            return TokenLinearProbe(dim, num_classes, tokens=tokens)
        return LinearProbe(dim, num_classes)

"""Variable-length attention over packed sequences: S sequences of different lengths laid end to end in one
[T, ...] tensor (T = sum of the lengths, no padding rows), each attending only to itself.

Kernels, chosen by `varlen_kernel(device, backend)`:
  "slices"   SDPA over slices of the packed tensor, one batched call per run of consecutive sequences of
             equal length (a view, no copy). CPU default: measured fastest there (`benchmarks/varlen.py`: a
             block-diagonal mask computes all T^2 scores, nested tensors run slower kernels on CPU, and one
             call for a run of equal lengths beats a call per sequence; the predictor's sequences often
             have equal lengths, context + target covering the whole clip).
  "mask"     one SDPA call with a block-diagonal boolean mask [T, T] (kept as the CPU reference).
  "nested"   SDPA on jagged nested tensors (CUDA with backend sdpa: flash / memory-efficient kernels).
  "xformers" xformers' memory_efficient_attention with a BlockDiagonalMask (CUDA with backend xformers).
The CUDA kernels ("nested", "xformers") are NOT exercised by the CPU test suite; their numerics are covered
only by the tests marked `gpu`.

Shape legend: S sequences, T packed tokens, H heads, hd head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

KERNELS = ("slices", "mask", "nested", "xformers")


@dataclass(eq=False)
class VarlenLayout:
    """Where each sequence lies in a packed tensor: sequence s is rows offsets[s]:offsets[s+1]."""

    lengths: tuple[int, ...]  # rows per sequence (zero-length sequences allowed)
    device: torch.device
    kernel: str | None = None  # None: `varlen_kernel` picks one from the device and attention backend
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if any(n < 0 for n in self.lengths):
            raise ValueError(f"sequence lengths must be >= 0, got {self.lengths}")
        if self.kernel is not None and self.kernel not in KERNELS:
            raise ValueError(f"unknown varlen kernel {self.kernel!r} (choose from {KERNELS})")

    @property
    def total(self) -> int:
        return sum(self.lengths)

    def runs(self) -> list[tuple[int, int, int]]:
        """(first row, sequences, length) of every run of consecutive non-empty sequences of equal length."""
        out: list[tuple[int, int, int]] = []
        start = 0
        for n in self.lengths:
            if n and out and out[-1][2] == n:
                first, count, _ = out[-1]
                out[-1] = (first, count + 1, n)
            elif n:
                out.append((start, 1, n))
            start += n
        return out

    def offsets(self) -> torch.Tensor:
        """Cumulative lengths [S+1] int64 on the layout's device (cu_seqlens)."""
        if "offsets" not in self._cache:
            lengths = torch.tensor((0, *self.lengths), dtype=torch.int64)
            self._cache["offsets"] = lengths.cumsum(0).to(self.device)
        return self._cache["offsets"]

    def sequence_ids(self) -> torch.Tensor:
        """The sequence of every packed row [T] int64."""
        if "ids" not in self._cache:
            counts = torch.tensor(self.lengths, dtype=torch.int64)
            ids = torch.repeat_interleave(torch.arange(len(self.lengths)), counts)
            self._cache["ids"] = ids.to(self.device)
        return self._cache["ids"]

    def block_mask(self) -> torch.Tensor:
        """[T, T] bool, True where row and column belong to the same sequence."""
        if "mask" not in self._cache:
            ids = self.sequence_ids()
            self._cache["mask"] = ids[:, None] == ids[None, :]
        return self._cache["mask"]


def varlen_kernel(layout: VarlenLayout, device: torch.device, backend: str) -> str:
    """The kernel a layout runs with: its own choice, else xformers / nested tensors on CUDA and per-sequence
    slices elsewhere."""
    if layout.kernel is not None:
        return layout.kernel
    if device.type == "cuda":
        return "xformers" if backend == "xformers" else "nested"
    return "slices"


def _slices(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VarlenLayout) -> torch.Tensor:
    parts = []
    _, h, hd = q.shape
    for start, count, n in layout.runs():
        rows = slice(start, start + count * n)
        qs, ks, vs = (t[rows].view(count, n, h, hd).transpose(1, 2) for t in (q, k, v))  # [G, H, L, hd]
        out = F.scaled_dot_product_attention(qs, ks, vs)  # [G, H, L, hd]
        parts.append(out.transpose(1, 2).reshape(count * n, h, hd))  # [G*L, H, hd]
    if not parts:
        return q.new_zeros(q.shape)
    return torch.cat(parts, dim=0)  # [T, H, hd]


def _block_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VarlenLayout) -> torch.Tensor:
    qs, ks, vs = (t.transpose(0, 1)[None] for t in (q, k, v))  # [1, H, T, hd]
    out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=layout.block_mask())  # [1, H, T, hd]
    return out[0].transpose(0, 1)  # [T, H, hd]


def _nested(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VarlenLayout) -> torch.Tensor:
    # Untested on GPU in this repository's CPU suite (see the module docstring).
    offsets = layout.offsets()
    nested = [
        torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2)  # [S, H, L_s, hd]
        for t in (q, k, v)
    ]
    out = F.scaled_dot_product_attention(*nested)  # [S, H, L_s, hd]
    return out.transpose(1, 2).values()  # [T, H, hd]


def _xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VarlenLayout) -> torch.Tensor:
    # Untested on GPU in this repository's CPU suite (see the module docstring).
    import xformers.ops as xops

    if "xformers_bias" not in layout._cache:
        layout._cache["xformers_bias"] = xops.fmha.BlockDiagonalMask.from_seqlens(list(layout.lengths))
    bias = layout._cache["xformers_bias"]
    return xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0]  # [T, H, hd]


_KERNEL_FNS = {"slices": _slices, "mask": _block_mask, "nested": _nested, "xformers": _xformers}


# Outside torch.compile graphs: the kernels loop over Python sequence lengths, which change every batch; a
# compiled block breaks its graph here instead of recompiling for each new set of lengths.
@torch.compiler.disable
def attend_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VarlenLayout, *, backend: str = "sdpa"
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v within each sequence, for packed q, k, v [T, H, hd] -> [T, H, hd]."""
    if q.shape[0] != layout.total:
        raise ValueError(f"packed tensor has {q.shape[0]} rows, the layout {layout.total}")
    return _KERNEL_FNS[varlen_kernel(layout, q.device, backend)](q, k, v, layout)

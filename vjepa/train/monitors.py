"""Collapse monitors that see dimensional collapse, not only a vanishing scale.

A per-channel std across the batch (`objective.masked_token_std`) stays large when every token lies on a
line or a plane, so it misses the collapse seen at small batches: features spanning 2-3 directions, most
of their variance constant within a clip. These monitors measure that directly:

- `eff_dim`: participation ratio of the token covariance, (sum λ)^2 / sum λ^2 — the number of directions
  the variance really spreads over (D for isotropic tokens, 1 for a line);
- `eff_rank`: exp of the entropy of the normalised eigenvalues (Roy & Vetterli), a softer count;
- `clip_const`: the share of the token variance that is constant within a clip (the variance of the
  per-clip mean token over the total variance): ~1 when a clip's tokens are all alike, ~1/N for tokens
  drawn independently within a clip.

`CollapseWatch` remembers the first values and returns a one-line warning when `eff_dim` falls below a
fraction of its first value or `clip_const` rises above a threshold.

Shape legend: B clips, N tokens per clip, D width, M tokens kept for the covariance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["CLIP_CONST_MAX", "CollapseWatch", "collapse_stats", "collapse_verdict", "spectrum_stats"]

# An effective dimensionality below this fraction of its first value is a collapse. 0.7: the CPU collapse in
# docs/learning.md (r1: participation ratio 6.25 -> 3.82, 0.61x, 80 % of the variance clip-constant, probe at
# chance) must be flagged; the other runs there ended at 0.72x (r3) and 0.93x (r2) of their start.
WARN_FRACTION = 0.7
CLIP_CONST_MAX = 0.9  # a clip_const above this: the tokens mostly say which clip they come from, not where
_EPS = 1e-12


def spectrum_stats(eigenvalues: torch.Tensor) -> dict[str, float]:
    """{"eff_dim": participation ratio, "eff_rank": exp(entropy)} of covariance eigenvalues [D]
    (negative round-off is clipped to 0). Both are 0 for an all-zero spectrum."""
    lam = eigenvalues.double().clamp_min(0.0)
    total = float(lam.sum())
    if total <= _EPS:
        return {"eff_dim": 0.0, "eff_rank": 0.0}
    p = lam / total
    entropy = float(-(p * p.clamp_min(_EPS).log()).sum())
    return {"eff_dim": total**2 / float((lam**2).sum()), "eff_rank": math.exp(entropy)}


def _covariance_eigenvalues(x: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the covariance of the rows of x [M, D]; via the smaller Gram matrix (same nonzero
    spectrum), so a few hundred tokens of a wide model stay cheap."""
    x = x - x.mean(0, keepdim=True)
    gram = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T  # [D, D] or [M, M]
    return torch.linalg.eigvalsh(gram / max(1, x.shape[0] - 1))


@torch.no_grad()
def collapse_stats(
    tokens: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    max_tokens: int = 2048,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """{"eff_dim", "eff_rank", "clip_const"} of tokens [B, N, D]; `valid` [B, N] bool marks the real
    tokens of padded sets.

    The covariance uses at most `max_tokens` real tokens, drawn without replacement by `generator` (a CPU
    generator; by default one seeded with 0, so the global RNG and with it training are untouched).
    `clip_const` uses every real token. Computed on the tokens' device (reductions in float64).
    """
    if tokens.ndim != 3:
        raise ValueError(f"collapse_stats: tokens must be [B, N, D], got shape {tuple(tokens.shape)}")
    if valid is None:
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    elif valid.shape != tokens.shape[:2]:
        raise ValueError(
            f"collapse_stats: valid must be [B, N] = {tuple(tokens.shape[:2])}, got {tuple(valid.shape)}"
        )
    if max_tokens < 2:
        raise ValueError(f"collapse_stats: max_tokens must be >= 2, got {max_tokens}")
    valid = valid.to(tokens.device, torch.bool)
    # [B, N, D], padding zeroed (it may hold anything); float64 only for reductions and the small covariance
    x = torch.where(valid[..., None], tokens.detach().float(), 0.0)
    rows = valid.flatten().nonzero().flatten()  # indices of the real tokens in [B*N]
    if len(rows) < 2:
        return {"eff_dim": 0.0, "eff_rank": 0.0, "clip_const": 0.0}
    if len(rows) > max_tokens:
        generator = generator or torch.Generator().manual_seed(0)
        rows = rows[torch.randperm(len(rows), generator=generator)[:max_tokens].to(rows.device)]
    sample = x.flatten(0, 1)[rows].double()  # [M, D]
    stats = spectrum_stats(_covariance_eigenvalues(sample))

    # Between-clip share of the variance: per-clip means weighted by their token counts.
    weight = valid.to(x.dtype)[..., None]  # [B, N, 1]
    count = weight.sum((1, 2)).double()  # [B]
    sums = (x * weight).sum(1).double()  # [B, D]
    grand = sums.sum(0) / count.sum()  # [D]
    total = float(((x - grand.float()) * weight).square().sum(dtype=torch.float64))
    clip_mean = sums / count.clamp_min(1.0)[:, None]  # [B, D]
    between = float((count[:, None] * (clip_mean - grand).square()).sum())
    stats["clip_const"] = between / total if total > _EPS else 1.0
    return stats


class CollapseWatch:
    """Warns once when a monitor enters the collapsed state: an `*eff_dim` below `warn_fraction` x its
    first value, or a `*clip_const` above `clip_const_max`. A key that recovers may warn again."""

    def __init__(
        self, *, warn_fraction: float = WARN_FRACTION, clip_const_max: float = CLIP_CONST_MAX
    ) -> None:
        if not 0.0 < warn_fraction < 1.0:
            raise ValueError(f"log.collapse_warn_fraction: must be in (0, 1), got {warn_fraction}")
        if not 0.0 < clip_const_max <= 1.0:
            raise ValueError(f"clip_const_max: must be in (0, 1], got {clip_const_max}")
        self.warn_fraction, self.clip_const_max = warn_fraction, clip_const_max
        self.first: dict[str, float] = {}
        self.flagged: set[str] = set()

    def _collapsed(self, key: str, value: float) -> str | None:
        if key.endswith("eff_dim"):
            first = self.first.setdefault(key, value)
            if value < self.warn_fraction * first:
                return f"{key} {value:.2f} < {self.warn_fraction:g} x its first value {first:.2f}"
        elif key.endswith("clip_const") and value > self.clip_const_max:
            return f"{key} {value:.3f} > {self.clip_const_max:g} (tokens mostly constant within a clip)"
        return None

    def update(self, step: int, metrics: Mapping[str, object]) -> str | None:
        """Checks the monitor keys of one step's metrics; -> a one-line warning or None."""
        news = []
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            reason = self._collapsed(key, float(value))
            if reason is None:
                self.flagged.discard(key)
            elif key not in self.flagged:
                self.flagged.add(key)
                news.append(reason)
        if not news:
            return None
        return f"step {step}: possible representation collapse: " + "; ".join(news)


def collapse_verdict(
    records: list[Mapping[str, object]],
    *,
    warn_fraction: float = WARN_FRACTION,
    clip_const_max: float = CLIP_CONST_MAX,
    keys: tuple[str, ...] = ("target", "pred"),
) -> dict[str, object]:
    """Summary of a run's monitor history (log.jsonl records, in step order): for each prefix in `keys`,
    the first and last eff_dim and clip_const, and `healthy` = no monitor in the collapsed state at the end
    (last eff_dim >= warn_fraction x first, last clip_const <= clip_const_max). `healthy` is None when the
    log holds no monitors."""
    out: dict[str, object] = {}
    seen = False
    healthy = True
    for prefix in keys:
        for name in ("eff_dim", "clip_const"):
            key = f"{prefix}_{name}"
            values = [float(r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if not values:
                continue
            seen = True
            out[key] = {"first": values[0], "last": values[-1], "min": min(values), "max": max(values)}
            if name == "eff_dim" and values[-1] < warn_fraction * values[0]:
                healthy = False
            if name == "clip_const" and values[-1] > clip_const_max:
                healthy = False
    out["healthy"] = healthy if seen else None
    out["warn_fraction"], out["clip_const_max"] = warn_fraction, clip_const_max
    return out


@torch.no_grad()
def collapse_monitors(targets: torch.Tensor, out) -> dict[str, float]:
    """Effective dimensionality and within-clip constant share of the targets and of the first mask
    configuration's predictions (the stats above)."""
    stats = {f"target_{k}": v for k, v in collapse_stats(targets).items()}
    preds = collapse_stats(out.predictions[0], out.prediction_valid[0])
    return {**stats, **{f"pred_{k}": v for k, v in preds.items()}}

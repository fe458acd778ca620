"""`loss:` — the switches of V-JEPA 2.1's objective, and the schedule of the context-loss weight.

Every default reproduces the V-JEPA 1/2 loss exactly (the objective then takes its original path).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipelines import check, check_fields


@dataclass
class LossConfig:
    """V-JEPA 2.1's dense predictive loss and deep self-supervision.

    context_weight: lambda of the dense context loss: the predictor also predicts the target features at
        the visible (context) tokens, L1, and the total loss is prediction loss + lambda x context loss.
        0 turns it off (no context head in the predictor).
    context_warmup_start / context_warmup_steps: lambda is 0 for the first `context_warmup_start` steps,
        rises linearly from 0 to `context_weight` over the next `context_warmup_steps`, then stays there
        (published V-JEPA 2.1: 0 until step 15 000, ramp to step 30 000). 0 and 0: lambda from step 0.
    distance_weighting: each visible token's context term is scaled by 1/sqrt(d), d its Euclidean
        distance on the token grid (time step, row, column) to the nearest target token of the same sample
        and mask configuration; False weights every visible token 1.
    levels: target-encoder block indices (0-based, increasing) whose outputs are all predicted, each
        layer-normed separately; the predictor's heads output len(levels) x width. Empty: the final output
        only. The last block's level is the encoder's (final-normed) output, as without levels; published
        V-JEPA 2.1 uses 4 evenly spaced blocks, e.g. [2, 5, 8, 11] of 12 and [5, 11, 17, 23] of 24.
    normalize_predictions: layer-norm (no affine) each level of the predictor's outputs before the loss,
        like the targets.
    """

    context_weight: float = 0.0
    context_warmup_start: int = 0
    context_warmup_steps: int = 0
    distance_weighting: bool = True
    levels: list[int] = field(default_factory=list)
    normalize_predictions: bool = False

    @property
    def is_default(self) -> bool:
        """True when no switch is on: the objective is the V-JEPA 1/2 loss."""
        return self.context_weight == 0 and not self.levels and not self.normalize_predictions

    @property
    def num_levels(self) -> int:
        return max(len(self.levels), 1)

    def validate(self, prefix: str = "loss") -> None:
        check_fields(self, prefix)
        check(
            self.context_weight >= 0, f"{prefix}.context_weight", f"must be >= 0, got {self.context_weight}"
        )
        for key in ("context_warmup_start", "context_warmup_steps"):
            check(getattr(self, key) >= 0, f"{prefix}.{key}", f"must be >= 0, got {getattr(self, key)}")
        check_levels(self.levels, None, f"{prefix}.levels")


def check_levels(levels: list[int], depth: int | None, key: str) -> None:
    """Block indices in [0, depth) (depth None: unknown here), strictly increasing."""
    check(
        all(isinstance(i, int) and i >= 0 for i in levels), key, f"block indices must be >= 0, got {levels}"
    )
    check(all(a < b for a, b in zip(levels, levels[1:])), key, f"must be strictly increasing, got {levels}")
    if depth is not None:
        check(
            all(i < depth for i in levels),
            key,
            f"the encoder has {depth} blocks (indices 0..{depth - 1}), got {levels}",
        )


def context_weight_at(step: int, cfg: LossConfig) -> float:
    """lambda of the context loss at `step`: 0 before the warm-up, a linear ramp, then held."""
    if cfg.context_weight == 0 or step < cfg.context_warmup_start:
        return 0.0
    if cfg.context_warmup_steps == 0:
        return cfg.context_weight
    return cfg.context_weight * min(1.0, (step - cfg.context_warmup_start) / cfg.context_warmup_steps)

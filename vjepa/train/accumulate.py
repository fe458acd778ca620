"""Exact gradient accumulation (`optim.accumulate`): k micro-batches of `data.batch_size` per optimizer step
give the loss and gradients of one batch of k x batch_size.

The loss is token-weighted within each mask configuration (objective.jepa_loss): configuration m's error
sum over its target rows, divided by its row count, then the mean over configurations. Averaging the
micro-batches' own losses would weight every micro-batch equally however many target rows it has, so it is
not the big batch's loss. Instead every micro-batch divides its error sums by the row counts of the whole
step (`target_rows`, known from the masks before any forward): the micro-batches' losses, per-configuration
losses and gradients then SUM to those of the whole batch (`StepTally`).

Across ranks nothing changes: each rank's loss is normalised by its own rows and the gradients are averaged
over ranks, so k x b on W ranks trains exactly like 1 x (k x b) on W ranks.

With several clip lengths the counts are per (length, configuration) pair (its mask token), and the step's
loss is the mean over the pairs the step holds; the dense context term (loss.context_weight) is accumulated
the same way over its context rows.

Shape legend: M mask configurations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from data_pipelines import MixedBatch, VideoBatch
from vjepa.objective import JepaOutput, StepRows


def target_rows(
    batches: Sequence[VideoBatch | MixedBatch], clip_lengths: tuple[int, ...] | None, num_tokens: int
) -> StepRows:
    """The target and context rows of each mask token (length l, configuration k: l * M + k) over all
    `batches` (one step's micro-batches), and the (length, configuration) pairs they hold."""
    target, context = torch.zeros(num_tokens), torch.zeros(num_tokens)
    present: set[int] = set()
    for batch in batches:
        for g, group in enumerate(batch.groups()):
            length = g if clip_lengths is None else clip_lengths.index(int(group.clips.shape[2]))
            for k, m in enumerate(group.masks):
                token = length * len(group.masks) + k
                target[token] += float(m.target_valid.sum())
                context[token] += float(m.context_valid.sum())
                present.add(token)
    return StepRows(target=target, context=context, pairs=len(present))


def micro_batches(
    batches: VideoBatch | MixedBatch | Sequence[VideoBatch | MixedBatch],
) -> list[VideoBatch | MixedBatch]:
    """One step's micro-batches: a single batch (no accumulation) or the list the trainer drew."""
    out = [batches] if isinstance(batches, (VideoBatch, MixedBatch)) else list(batches)
    if not out:
        raise ValueError("a training step needs at least one batch")
    return out


@dataclass
class StepTally:
    """One step's loss values, summed over its micro-batches (each already its share of the step's loss);
    the feature stds are averaged."""

    micro: int  # micro-batches in the step
    loss: float = 0.0
    loss_per_mask: list[float] = field(default_factory=list)
    target_std: float = 0.0
    pred_std: float = 0.0

    def add(self, out: JepaOutput) -> None:
        self.loss += float(out.loss.detach())
        per_mask = self.loss_per_mask or [0.0] * len(out.loss_per_mask)
        self.loss_per_mask = [a + b for a, b in zip(per_mask, out.loss_per_mask)]
        self.target_std += out.target_std / self.micro
        self.pred_std += out.pred_std / self.micro

"""The JEPA objective: predict, from the context tokens, the layer-normed EMA-target features of the
hidden tokens; L1 distance, averaged over mask configurations.

One pass for every mask configuration: the context sets of all (configuration, sample) pairs are packed
into one [Tc, D] sequence batch for the encoder (the patch embedding of a clip computed once), and the
predictor runs once over all of them; each target row carries its configuration's mask token, and the loss is
reduced per configuration.

`JepaModel` holds the trained pair (context encoder + predictor) in one module so that parallel wrappers
(DDP, DeepSpeed) see a single model whose forward is this whole objective.

Several clip lengths in one batch (images among them): one group per length, all in the same passes, each
(length, configuration) pair with its own mask token and loss term.

Shape legend: B batch, N grid tokens, Kc/Kt context/target tokens per sample (padded), Tc/Tt packed context/
target rows of all configurations, M mask configurations, D encoder width; Bg/Tg/Ng per length group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from data_pipelines import MaskBatch
from vjepa.dense.levels import level_targets
from vjepa.dense.loss import DenseLoss
from vjepa.models.packing import PackedIndex, PackedMasks, unpack


@dataclass
class JepaOutput:
    loss: torch.Tensor  # scalar, differentiable
    loss_per_mask: list[float]
    target_std: float  # std of the target features across tokens (collapse monitor)
    pred_std: float  # std of the predictions across tokens
    predictions: list[torch.Tensor]  # per mask configuration, detached [B, Kt, D] (zeros on padding rows)
    prediction_valid: list[torch.Tensor]  # per mask configuration [B, Kt] bool
    terms: dict[str, float] = field(default_factory=dict)  # loss.* terms (context_loss, context_weight)


@dataclass(frozen=True)
class StepRows:
    """Row counts of a whole accumulated step (all its micro-batches), per mask token (length l, configuration
    k: l * M + k): its target rows, its context rows, and how many (length, configuration) pairs it holds."""

    target: torch.Tensor  # [mask tokens] float
    context: torch.Tensor  # [mask tokens] float
    pairs: int


def masked_token_std(x: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean over channels of the std across the real tokens of x [B, K, D]."""
    return packed_token_std(x[valid])


def packed_token_std(tokens: torch.Tensor) -> float:
    """Mean over channels of the std across the rows of tokens [T, D]."""
    return float(tokens.float().std(dim=0).mean()) if tokens.shape[0] > 1 else 0.0


def pack_masks(
    masks: list[MaskBatch] | list[list[MaskBatch]], groups: list[int] | None = None
) -> PackedMasks:
    """(context, target) sets of every configuration k and sample i packed, sequence k*B + i; rows of
    configuration k carry group k. Several clip lengths: masks[g][k] for length group g (its clips numbered
    after those of the groups before it), sequences in (g, k, i) order, rows of (g, k) carry group
    `groups[g] * M + k` (`groups`: each group's index among the run's clip lengths, default 0, 1, ...)."""
    nested = [masks] if masks and isinstance(masks[0], MaskBatch) else masks
    lengths = list(range(len(nested))) if groups is None else groups
    contexts, targets, offset = [], [], 0
    for g, group_masks in enumerate(nested):
        m_count = len(group_masks)
        for k, m in enumerate(group_masks):
            token = lengths[g] * m_count + k
            contexts.append(PackedIndex.from_padded(m.context_idx, m.context_valid, token, offset))
            targets.append(PackedIndex.from_padded(m.target_idx, m.target_valid, token, offset))
        offset += group_masks[0].batch_size
    return PackedMasks(PackedIndex.cat(contexts), PackedIndex.cat(targets))


@torch.no_grad()
def target_features(
    target_encoder: nn.Module, clips: torch.Tensor, levels: Sequence[int] = ()
) -> torch.Tensor:
    """The EMA target on the full clip, layer-normed without affine -> [B, N, D]; with `levels`
    (loss.levels) those blocks' outputs, each layer-normed, side by side [B, N, L*D]."""
    if levels:
        return level_targets(target_encoder, clips, levels)
    h = target_encoder(clips)
    return F.layer_norm(h, (h.shape[-1],))


@torch.no_grad()
def packed_target_features(
    target_encoder: nn.Module, clips: list[torch.Tensor], levels: Sequence[int] = ()
) -> list[torch.Tensor]:
    """`target_features` of clip batches of several lengths [Bg, C, Tg, H, W], in one packed pass over every
    token of every clip (one sequence per clip: the same attention as each clip alone, and the linear layers
    run on one matrix instead of one per length; and the same module calls on every rank, as ZeRO-3 needs)
    -> [Bg, Ng, D] per length ([Bg, Ng, L*D] with `levels`)."""
    if len(clips) == 1:
        return [target_features(target_encoder, clips[0], levels)]
    embed = target_encoder.patch_embed
    parts, offset, sizes = [], 0, []
    for c in clips:
        tp, hp, wp = embed.grid(*c.shape[2:])
        b, n = c.shape[0], tp * hp * wp
        every = torch.arange(n, device=c.device).expand(b, n)  # [Bg, Ng]: the whole grid of each clip
        parts.append(PackedIndex.from_padded(every, None, 0, offset))
        offset, sizes = offset + b, [*sizes, (b, n)]
    every = PackedIndex.cat(parts)
    if levels:  # each level layer-normed, side by side
        h = level_targets(target_encoder, clips, levels, packed=every)  # [sum Bg*Ng, L*D]
    else:
        h = target_encoder(clips, packed=every)  # [sum Bg*Ng, D]
        h = F.layer_norm(h, (h.shape[-1],))
    return [x.reshape(b, n, -1) for x, (b, n) in zip(h.split([b * n for b, n in sizes]), sizes)]


def jepa_loss(
    encoder: nn.Module,
    predictor: nn.Module,
    targets: torch.Tensor | list[torch.Tensor],
    clips: torch.Tensor | list[torch.Tensor],
    masks: list[MaskBatch] | list[list[MaskBatch]],
    clip_lengths: tuple[int, ...] | None = None,
    dense: DenseLoss | None = None,
    denominators: StepRows | None = None,
) -> JepaOutput:
    """clips [B, C, T, H, W] float (normalised); targets [B, N, D] from `target_features`; one MaskBatch per
    mask configuration (its position selects the predictor's mask token). `dense`: the V-JEPA 2.1 terms
    (vjepa/dense/loss.py; D is then L x the encoder width), None for the V-JEPA 1/2 loss.

    A batch of several clip lengths passes lists, one entry per length group: clips[g] [Bg, C, Tg, H, W],
    targets[g] [Bg, Ng, D], masks[g] (one MaskBatch per configuration); every group and configuration runs in
    the same encoder and predictor pass. `clip_lengths` (the run's lengths, data.clip_lengths() order) maps
    length Tg to its index l, and (l, k) selects mask token l * M + k. The loss is the mean over the (length,
    configuration) pairs present of each pair's token-weighted mean.

    `denominators`: what each (length, configuration) pair's error sums are divided by, by default this
    batch's own row counts. Gradient accumulation passes the counts over all micro-batches of the step (and
    the pairs present in the step), so that the micro-batches' losses and gradients sum to those of the whole
    step's batch (vjepa/train/accumulate.py)."""
    if isinstance(clips, torch.Tensor):
        clips, targets, masks = [clips], [targets], [masks]  # type: ignore[list-item]
    if not masks or not masks[0]:
        raise ValueError("jepa_loss needs at least one mask configuration")
    m_count = len(masks[0])
    if clip_lengths is None:
        index = list(range(len(clips)))
    else:
        index = [clip_lengths.index(int(c.shape[2])) for c in clips]
    if (max(index) + 1) * m_count > len(predictor.mask_tokens):
        raise ValueError(
            f"{m_count} mask configurations x {max(index) + 1} clip lengths for {len(predictor.mask_tokens)} "
            "mask tokens"
        )
    packed = pack_masks(masks, index)
    target = packed.target
    # Through __call__ (not a helper method): ZeRO-3 gathers a module's parameters in its forward hooks.
    one = len(clips) == 1
    z = encoder(clips[0] if one else clips, packed=packed.context)  # [Tc, D], all at once
    tokens = len(predictor.mask_tokens)
    present = [index[g] * m_count + k for g in range(len(clips)) for k in range(m_count)]
    extra = None
    if dense is None:
        pred = predictor(z, packed=packed)  # [Tt, D]
    else:  # loss.* switches: several levels, normalised predictions, the context term
        grid = encoder.patch_embed.grid(*clips[0].shape[2:])  # token coordinates need only its Hp, Wp
        step_rows = None if denominators is None else (denominators.context, denominators.pairs)
        pred, extra = dense(
            predictor, z, packed, targets[0] if one else targets, grid, tokens, present, step_rows
        )
    target_h = target.gather(targets[0] if one else targets)  # [Tt, D]
    err = (pred.float() - target_h.float()).abs().mean(dim=-1)  # [Tt]
    sums = err.new_zeros(tokens).index_add(0, target.group, err)  # [mask tokens]
    if denominators is None:
        counts = torch.bincount(target.group, minlength=tokens).to(err.dtype)
        pairs = len(present)
    else:  # one micro-batch of an accumulated step: the step's counts and pairs
        counts, pairs = denominators.target.to(err), denominators.pairs
    losses = (sums / counts.clamp_min(1.0))[present]  # [pairs here]: token-weighted means (or step shares)
    pred_std, target_std, predictions, valid = _pair_stats(pred.detach(), target_h, target, masks)
    # [M]: each configuration's loss, the mean over the clip lengths (of the step, when accumulating)
    if denominators is None:
        per_mask = losses.detach().reshape(len(clips), m_count).mean(dim=0)
        loss = losses.mean()
    else:  # shares of the step's means: they sum over the micro-batches to the step's values
        per_mask = losses.detach().reshape(len(clips), m_count).sum(dim=0) / (pairs / m_count)
        loss = losses.sum() / pairs
    return JepaOutput(
        loss=loss if extra is None else loss + extra.loss,
        loss_per_mask=per_mask.tolist(),
        target_std=target_std,
        pred_std=pred_std,
        predictions=predictions,
        prediction_valid=valid,
        terms={} if extra is None else extra.metrics(),
    )


@torch.no_grad()
def _pair_stats(
    pred: torch.Tensor, target_h: torch.Tensor, target: PackedIndex, masks: list[list[MaskBatch]]
) -> tuple[float, float, list[torch.Tensor], list[torch.Tensor]]:
    """The monitors of `jepa_loss`: the std of predictions and targets (pred, target_h [Tt, D]) averaged over
    the (length, configuration) pairs, and the first length group's predictions per configuration, padded
    [B, Kt, D], with their valid masks."""
    pairs = sum(len(group) for group in masks)
    pred_std = target_std = 0.0
    predictions, valid = [], []
    start, seq = 0, 0
    for g, group_masks in enumerate(masks):
        for m in group_masks:  # pair (g, k): sequences seq ... seq + Bg - 1, contiguous rows
            b = m.batch_size
            rows = slice(start, start + sum(target.layout.lengths[seq : seq + b]))
            start, seq = rows.stop, seq + b
            pred_std += packed_token_std(pred[rows]) / pairs
            target_std += packed_token_std(target_h[rows]) / pairs
            if g == 0:
                predictions.append(unpack(pred[rows], m.target_valid, b))
                valid.append(m.target_valid)
    return pred_std, target_std, predictions, valid


class JepaModel(nn.Module):
    """Context encoder + predictor; `forward` is the JEPA loss for one batch. `dense` (from the loss.*
    config, `DenseLoss.from_config`) switches on the V-JEPA 2.1 terms."""

    def __init__(
        self,
        encoder: nn.Module,
        predictor: nn.Module,
        dense: DenseLoss | None = None,
        clip_lengths: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.dense = dense
        self.clip_lengths = clip_lengths  # a run of several clip lengths: data.clip_lengths()

    def forward(
        self,
        clips: torch.Tensor | list[torch.Tensor],
        masks: list[MaskBatch] | list[list[MaskBatch]],
        targets: torch.Tensor | list[torch.Tensor],
        context_weight: float = 0.0,
        denominators: StepRows | None = None,
    ) -> JepaOutput:
        """clips [B, C, T, H, W] normalised; targets [B, N, D] from `target_features`; or lists of them, one
        per clip length (see `jepa_loss`). `context_weight`: lambda of the context loss at this step (used
        only with a dense loss that has a context term); `denominators`: see `jepa_loss`."""
        dense = None if self.dense is None else self.dense.at(context_weight)
        return jepa_loss(
            self.encoder, self.predictor, targets, clips, masks, self.clip_lengths, dense, denominators
        )

    def no_weight_decay(self) -> set[str]:
        """Parameter names (in this module) that AdamW must not decay besides the 1-D ones."""
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {
            f"predictor.{n}" for n in self.predictor.no_weight_decay()
        }

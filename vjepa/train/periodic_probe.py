"""A pretraining run probing itself: every `eval.every_steps` steps the EMA target encodes a small labelled
split (decoded once, at the training clip size) and a probe trained on those frozen features reports its
validation top-1, which is logged with the step's metrics (JSONL and TensorBoard) as `probe_top1`.

Every rank runs the target over the same clips (under ZeRO-3 the target's forward is collective); rank 0
trains the probe. The default probe is the deterministic L-BFGS linear probe on mean-pooled tokens: cheap
(seconds) and with no seed noise, so a rise between two evaluations is the features', not the probe's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vjepa.config import Config
from vjepa.eval.evaluate import ProbeConfig, train_probe
from vjepa.eval.extract import FeatureSet, encode_videos

__all__ = ["PeriodicProbe"]

log = logging.getLogger(__name__)

PROBES = {
    "linear": ProbeConfig(kind="linear", solver="lbfgs", wd=1e-3),
    "attentive": ProbeConfig(kind="attentive", depth=0, heads=None, epochs=10, lr=1e-3, wd=0.01, batch=32),
}


class PeriodicProbe:
    """Decodes (or renders) the labelled clips once; `__call__(target, step)` returns the metrics to log."""

    def __init__(self, cfg: Config, device: torch.device, *, main: bool) -> None:
        from vjepa.eval.protocol import decode_probe_sets, find_data_splits, render_probe_sets

        e, d = cfg.eval, cfg.data
        self.every, self.device, self.main = e.every_steps, device, main
        self.probe = PROBES[e.probe]
        start = time.perf_counter()
        if e.data == "synthetic":
            half = max(1, e.max_videos // 2)
            clips, _ = render_probe_sets(half, half, frames=d.frames_per_clip, size=d.crop_size, seed=e.seed)
        else:
            clips, _ = decode_probe_sets(find_data_splits(Path(e.data)), cfg)
        self.clips = {split: videos[: e.max_videos] for split, videos in clips.items()}
        log.info(
            "eval.every_steps=%d: %d train / %d val labelled clips ready in %.1f s",
            self.every,
            len(self.clips["train"]),
            len(self.clips["val"]),
            time.perf_counter() - start,
        )

    def due(self, done: int) -> bool:
        """True after step `done` - 1 when a probe is due (`done` steps finished)."""
        return self.every > 0 and done % self.every == 0

    def __call__(self, target: nn.Module) -> dict[str, Any]:
        start = time.perf_counter()
        was_training = target.training
        target.eval()
        try:
            sets = {
                split: encode_videos(target, iter(videos), batch=16, device=self.device, pool="mean")
                for split, videos in self.clips.items()
            }
        finally:
            target.train(was_training)
        if not self.main:
            return {}
        result = train_probe(_labelled(sets["train"]), _labelled(sets["val"]), self.probe)
        return {
            "probe_top1": result["top1_val"],
            "probe_top1_train": result["top1_train"],
            "probe_seconds": round(time.perf_counter() - start, 2),
        }


def _labelled(features: FeatureSet) -> FeatureSet:
    return FeatureSet(features.tokens.float(), features.labels, features.keys, features.meta)

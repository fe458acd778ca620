"""The typed evaluation config: what `vjepa extract` and `vjepa probe` read (a YAML file of overrides, then
`key=value` overrides, as for training). Defaults live here only; the command-line flags map onto these keys.

`configs/eval/` holds the published protocols (Kinetics-400: 16 frames x 8 segments x 3 views, SSv2:
16 x 2 x 3; 256 pixels; a 4-block, 16-head attentive probe; 20 heads over 5 learning rates x 4 weight
decays, 20 epochs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vjepa.config import check_writable_folder, load_tree
from vjepa.dense.config import check_levels

__all__ = ["ClipSettings", "EvalConfig", "ExtractSettings", "ProbeSettings", "load_eval_config"]

STORE_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class ClipSettings:
    """The eval clips of a video: `segments` temporal segments x `views` spatial crops. None: the
    checkpoint's own frames / frame step / crop."""

    frames: int | None = None
    frame_step: int | None = None
    crop: int | None = None
    segments: int = 1
    views: Literal[1, 3] = 1

    def validate(self, prefix: str = "clips") -> None:
        for name in ("frames", "frame_step", "crop", "segments"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{prefix}.{name}: must be >= 1, got {value}")


@dataclass
class ExtractSettings:
    checkpoint: str = ""  # exported model file, checkpoint folder, run folder, official V-JEPA file
    data: str = ""  # dataset folder with train/ val/ (test/), shards, a CSV or a video folder
    out: str = ""  # output folder: one feature folder per split
    encoder: Literal["target", "context"] = "target"
    random_init: bool = False  # the same architecture with random weights (a baseline)
    seed: int = 0  # of the random weights
    pool: Literal["none", "mean"] = "none"  # keep every token, or their mean per clip
    # encoder blocks (0-based, increasing) whose outputs are written side by side: features of width
    # len(levels) x D (intermediate blocks layer-normed without affine, the last block as the encoder's
    # output); empty: the encoder's output only
    levels: list[int] = field(default_factory=list)
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # on disk
    part_size: int = 256  # videos per part file; a killed extraction redoes at most one part per rank
    batch: int = 32  # clips per forward pass
    workers: int = 0  # decoding processes per rank
    device: str = "auto"  # auto | cpu | cuda (each rank takes its local GPU)
    progress: Literal["auto", "on", "off"] = "auto"  # auto: a live bar on a terminal, log lines otherwise

    def validate(self, prefix: str = "extract") -> None:
        for name in ("part_size", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{prefix}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"{prefix}.workers: must be >= 0, got {self.workers}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"{prefix}.device: auto, cpu or cuda, got {self.device!r}")
        check_levels(self.levels, None, f"{prefix}.levels")

    def check_paths(self, prefix: str = "extract", *, out: bool = True) -> None:
        """The checkpoint and data exist and (with `out`) the output folder can be written."""
        for name in ("checkpoint", "data", "out") if out else ("checkpoint", "data"):
            if not getattr(self, name):
                raise ValueError(f"{prefix}.{name}: required (set it in the config or on the command line)")
        if not any(c in self.data for c in "*?[{") and not Path(self.data).exists():
            raise ValueError(f"{prefix}.data: {self.data} does not exist")
        if out:
            check_writable_folder(self.out, f"{prefix}.out")


@dataclass
class ProbeSettings:
    train: str = ""  # feature folder or file of the training split (vjepa extract)
    val: str = ""  # ... of the validation split
    out: str = ""  # report folder (probe.json and plots); empty: print the JSON line only
    kind: Literal["attentive", "linear"] = "attentive"
    depth: int = 3  # self-attention blocks before the cross-attention pooler (V-JEPA 2: 3, V-JEPA 1: 0)
    heads: int | None = 16  # None: from the width
    epochs: int = 20
    batch: int = 32
    lrs: list[float] = field(default_factory=lambda: [1e-3])  # one head per (lr, wd) pair
    wds: list[float] = field(default_factory=lambda: [0.01])
    seed: int = 0
    attend_across_segments: bool = False  # a view is all segments' tokens of one crop (else each clip)
    online: bool = False  # train on clips decoded and encoded every step (extract.checkpoint, extract.data)
    device: str = "cpu"

    def validate(self, prefix: str = "probe") -> None:
        for name in ("epochs", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{prefix}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.depth < 0:
            raise ValueError(f"{prefix}.depth: must be >= 0, got {self.depth}")
        if self.heads is not None and self.heads < 1:
            raise ValueError(f"{prefix}.heads: must be >= 1, got {self.heads}")
        for name, ok, rule in (("lrs", lambda v: v > 0, "> 0"), ("wds", lambda v: v >= 0, ">= 0")):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{prefix}.{name}: give at least one value")
            bad = [v for v in values if not ok(v)]
            if bad:
                raise ValueError(f"{prefix}.{name}: {rule} each, got {bad}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"{prefix}.device: cpu or cuda, got {self.device!r}")

    def check_paths(self, prefix: str = "probe") -> None:
        for name in () if self.online else ("train", "val"):
            value = getattr(self, name)
            if not value:
                raise ValueError(f"{prefix}.{name}: required (a feature folder or file from vjepa extract)")
            if not Path(value).exists():
                raise ValueError(f"{prefix}.{name}: {value} does not exist")
        if self.out:
            check_writable_folder(self.out, f"{prefix}.out")


@dataclass
class EvalConfig:
    clips: ClipSettings = field(default_factory=ClipSettings)
    extract: ExtractSettings = field(default_factory=ExtractSettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)

    def validate(self) -> None:
        self.clips.validate()
        self.extract.validate()
        self.probe.validate()


def load_eval_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> EvalConfig:
    """Defaults, then the YAML file, then `key=value` overrides, validated (paths are checked by the
    command that uses them: `ExtractSettings.check_paths`, `ProbeSettings.check_paths`)."""
    cfg = load_tree(EvalConfig, path, overrides)
    cfg.validate()
    return cfg


def flag_overrides(values: dict[str, Any]) -> list[str]:
    """`key=value` overrides from command-line flags that were given (None means not given)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items() if value is not None]

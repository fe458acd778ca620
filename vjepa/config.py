"""One typed config tree. Dataclasses hold every default; YAML files and `key=value` overrides only override.

Loading is strict: an unknown key, a value of the wrong type or an inconsistent combination raises a
ValueError that names the dotted key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from data_pipelines import (
    DataConfig,
    MaskSpec,
    check,
    check_choice,
    check_choices,
    default_mask_specs,
    literal_values,
)
from vjepa.utils import DeviceName, atomic_write, deep_merge, resolve_device

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PosEmbed = Literal["sincos", "rope"]  # sincos: fixed 3D sin-cos (V-JEPA 1); rope: 3D rotary (V-JEPA 2)
# RoPE channel layout: half = rotate-half (a true rotation, ours); vjepa2 = the published V-JEPA 2 layout
RopeLayout = Literal["half", "vjepa2"]
Attention = Literal["sdpa", "xformers"]  # xformers: CUDA only
Schedule = Literal["vjepa1", "vjepa2"]  # vjepa1: warmup + cosine; vjepa2: warmup + constant [+ cooldown]
Precision = Literal["bf16", "fp32"]  # bf16: autocast with fp32 weights
Backend = Literal["single", "ddp", "deepspeed"]
ZeroStage = Literal[0, 1, 2, 3]


@dataclass
class ModelConfig:
    name: str = "vit_large"  # encoder size, see vjepa.models.registry
    patch_size: int = 16
    tubelet_size: int = 2
    pos_embed: PosEmbed = "sincos"
    rope_layout: RopeLayout = "half"  # with pos_embed=rope; vjepa2 for the official V-JEPA 2 weights
    attention: Attention = "sdpa"
    activation_checkpointing: bool = False
    pred_width: int = 384
    pred_depth: int = 12
    pred_heads: int = 16

    def validate(self, prefix: str = "model") -> None:
        from vjepa.models.registry import MODEL_SIZES

        check_choices(self, prefix)
        known = ", ".join(MODEL_SIZES)
        check(self.name in MODEL_SIZES, f"{prefix}.name", f"unknown size {self.name!r} (known: {known})")
        for key in ("patch_size", "tubelet_size", "pred_width", "pred_depth", "pred_heads"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", "must be >= 1")
        check(
            self.pred_width % self.pred_heads == 0,
            f"{prefix}.pred_width",
            f"must be divisible by {prefix}.pred_heads",
        )


@dataclass
class OptimConfig:
    schedule: Schedule = "vjepa1"
    lr: float = 6.25e-4  # peak learning rate
    start_lr: float = 2e-4
    final_lr: float = 1e-6
    warmup_steps: int = 40
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = None  # max global grad norm; None disables clipping
    ema_start: float = 0.998
    ema_end: float = 1.0
    schedule_scale: float = 1.25  # schedules are defined over this multiple of train.steps
    cooldown_steps: int = 0  # vjepa2: linear lr decay over the last steps (a separate phase)

    def validate(self, prefix: str = "optim") -> None:
        check_choices(self, prefix)
        check(self.lr > 0, f"{prefix}.lr", "must be > 0")
        check(0 <= self.warmup_steps, f"{prefix}.warmup_steps", "must be >= 0")
        check(
            0.0 <= self.ema_start <= self.ema_end <= 1.0,
            f"{prefix}.ema_start",
            "need 0 <= ema_start <= ema_end <= 1",
        )
        check(self.schedule_scale >= 1.0, f"{prefix}.schedule_scale", "must be >= 1")
        check(self.cooldown_steps >= 0, f"{prefix}.cooldown_steps", "must be >= 0")
        check(self.grad_clip is None or self.grad_clip > 0, f"{prefix}.grad_clip", "must be > 0 or null")


@dataclass
class TrainConfig:
    steps: int = 100
    precision: Precision = "bf16"
    device: DeviceName = "auto"
    seed: int = 0
    out_dir: str = "runs/default"
    max_bad_steps: int = 5  # consecutive non-finite steps before the run stops
    # Start a new phase (e.g. the V-JEPA 2 cooldown with longer clips) from the weights of a model file:
    # a checkpoint's model.pt or a `vjepa export` file. Ignored when the run folder has a checkpoint.
    init_from: str | None = None

    def validate(self, prefix: str = "train") -> None:
        check_choices(self, prefix)
        check(self.steps >= 1, f"{prefix}.steps", "must be >= 1")
        check(self.max_bad_steps >= 1, f"{prefix}.max_bad_steps", "must be >= 1")


@dataclass
class DistConfig:
    backend: Backend = "single"
    zero_stage: ZeroStage = 2
    deepspeed: dict[str, Any] = field(
        default_factory=dict
    )  # raw DeepSpeed keys merged over the derived config

    def validate(self, prefix: str = "dist") -> None:
        check_choices(self, prefix)


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: int = 2
    resume: bool = True  # resume from the latest checkpoint in train.out_dir when there is one
    save_init: bool = (
        True  # a fresh run writes its initial weights (<run>/init_model.pt: the random baseline)
    )

    def validate(self, prefix: str = "checkpoint") -> None:
        check(self.every_steps >= 1, f"{prefix}.every_steps", "must be >= 1")
        check(self.keep_last >= 1, f"{prefix}.keep_last", "must be >= 1")


@dataclass
class LogConfig:
    every_steps: int = 1
    progress: bool = True
    jsonl: bool = True
    tensorboard: bool = True
    monitor_every: int = 20  # steps between collapse monitors (effective dim, clip-constant share); 0: off
    collapse_warn_fraction: float = 0.5  # warn when an effective dim falls below this x its first value

    def validate(self, prefix: str = "log") -> None:
        check(self.every_steps >= 1, f"{prefix}.every_steps", "must be >= 1")
        check(self.monitor_every >= 0, f"{prefix}.monitor_every", "must be >= 0 (0 turns the monitors off)")
        check(
            0.0 < self.collapse_warn_fraction < 1.0, f"{prefix}.collapse_warn_fraction", "must be in (0, 1)"
        )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: list[MaskSpec] = field(default_factory=default_mask_specs)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        """Every section checks itself (errors name the dotted key), then the checks across sections."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate(f.name)
        check(len(self.mask) >= 1, "mask", "needs at least one mask configuration")
        for i, spec in enumerate(self.mask):
            spec.validate(f"mask.{i}")
        m, d, t = self.model, self.data, self.train
        check(
            d.frames_per_clip % m.tubelet_size == 0,
            "data.frames_per_clip",
            f"{d.frames_per_clip} is not divisible by model.tubelet_size={m.tubelet_size}",
        )
        check(
            d.crop_size % m.patch_size == 0,
            "data.crop_size",
            f"{d.crop_size} is not divisible by model.patch_size={m.patch_size}",
        )
        if m.attention == "xformers":  # fail before any work where it cannot run (no CPU kernels)
            from vjepa.layers.attention import check_backend

            device = "cuda" if t.device == "cuda" else resolve_device(t.device, key="train.device").type
            try:
                check_backend("xformers", device)
            except ValueError as err:
                raise ValueError(f"{err} (train.device={t.device})") from None


# ----------------------------------------------------------------------------- typed conversion


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotation `tp` and converts containers; errors name `key`."""
    origin = typing.get_origin(tp)
    choices = literal_values(tp)
    if choices is not None:
        check_choice(value, choices, key)
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}.{i}") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{key}.{i}") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported annotation {tp!r}")


def from_dict(cls: type, data: dict[str, Any], *, prefix: str = "") -> Any:
    """Builds dataclass `cls` from a plain dict; unknown keys and wrong types are errors naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ValueError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """The config as plain YAML-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


# ----------------------------------------------------------------------------- merging and overrides


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML that reads exponent floats without a dot (`1e-3`) as numbers, as YAML 1.2 does; PyYAML
    follows YAML 1.1 and would hand `optim.lr: 1e-3` over as the string '1e-3'."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Applies one `dotted.key=value` override in place; the value is parsed as YAML (so 1e-3, true, [1, 2])."""
    if "=" not in assignment:
        raise ValueError(f"override '{assignment}' is not of the form key=value")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"unknown config key '{here}' (list of {len(node)} entries)")
            part = int(part)
        elif not isinstance(node, dict) or (part not in node and not here.startswith("dist.deepspeed.")):
            raise ValueError(f"unknown config key '{here}'")
        if last:
            node[part] = yaml.load(raw, Loader=_YamlLoader) if raw.strip() else ""
        else:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]


def bundled_configs() -> list[str]:
    """Names of the config files shipped inside the package (vjepa/configs/*.yaml), e.g. `quickstart`."""
    files = importlib.resources.files("vjepa.configs").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def find_config(path: str | Path) -> Path | Traversable:
    """The config file `path` names: the file itself when it exists, else a bundled config of that name
    (`quickstart` or `quickstart.yaml`), read through importlib.resources so that it works from any install."""
    if Path(path).is_file():
        return Path(path)
    name = str(path).removesuffix(".yaml")
    bundled = bundled_configs()
    if name in bundled:
        return importlib.resources.files("vjepa.configs").joinpath(f"{name}.yaml")
    raise ValueError(f"config file not found: {path} (bundled configs: {', '.join(bundled)})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then `key=value` overrides; validated before anything runs."""
    data = to_dict(Config())
    if path is not None:
        path = find_config(path)
        loaded = yaml.load(path.read_text(), Loader=_YamlLoader) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must hold a mapping at the top level")
        try:
            data = deep_merge(data, loaded, strict=True, open_keys=("dist.deepspeed",))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    for assignment in overrides:
        apply_override(data, assignment)
    cfg = from_dict(Config, data)
    cfg.validate()
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes the whole resolved tree as YAML (atomically: a reader never sees half a file)."""
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

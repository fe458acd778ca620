"""The typed config of `vjepa train-ac`: the action-conditioned predictor trained on a frozen encoder's
features of trajectory shards. Dataclasses hold every default; a YAML file and `key=value` overrides only
override (vjepa.config.load_tree), and a typo, a wrong type or a bad value is a ValueError naming the key.
`check_paths` then checks this machine's files before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vjepa.config import HostMemory, check_writable_folder, load_tree
from vjepa.utils import DeviceName
from vjepa.world.plan_settings import PlanSettings

__all__ = ["ACConfig", "PlanSettings", "load_ac_config"]

StateInput = Literal["agent", "all"]  # agent: the agent's (x, y), what a planner can integrate; all: S = 6
DataKind = Literal["shards", "droid"]  # trajectory shards (*.tar), or DROID raw episode folders
Camera = Literal["left", "right", "wrist", "ext1", "ext2"]  # a DROID episode's <camera>_mp4_path


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{key}: {message}")


@dataclass
class EncoderSettings:
    checkpoint: str = ""  # any checkpoint form vjepa.pretrained reads (run folder, step folder, export file)
    which: Literal["target", "context"] = "target"
    random_init: bool = False  # the checkpoint's architecture with fresh weights (a baseline)
    seed: int = 0  # of the fresh weights with random_init

    def validate(self, prefix: str = "encoder") -> None:
        _check(bool(self.checkpoint), f"{prefix}.checkpoint", "required (the frozen encoder's checkpoint)")
        _check(self.seed >= 0, f"{prefix}.seed", f"must be >= 0, got {self.seed}")

    def check_paths(self, prefix: str = "encoder") -> None:
        _check(Path(self.checkpoint).exists(), f"{prefix}.checkpoint", f"{self.checkpoint} does not exist")


@dataclass
class ACDataSettings:
    # shards: trajectory shards (*.tar) in data.train, e.g. `vjepa synth --env push` 's train/;
    # droid: DROID raw episode folders anywhere below data.train (data_pipelines/droid.py)
    kind: DataKind = "shards"
    train: str = ""
    frames: int = 4  # T frames per clip (T - 1 actions)
    frame_step: int = 1  # trajectory frames between clip frames
    clips_per_trajectory: int = 4
    crop: int = 64  # the frames' size in pixels (the encoder is built for it); droid: resized to it
    state: StateInput = "agent"  # droid: must be all (S = 7: end-effector pose and gripper)
    fps: float | None = (
        None  # droid: clip frames per second, frame step ceil(video fps / fps); None: frame_step
    )
    camera: Camera = "left"  # droid: the episode's video (its metadata's <camera>_mp4_path)

    def validate(self, prefix: str = "data") -> None:
        _check(bool(self.train), f"{prefix}.train", f"required (a folder of {self._what()})")
        _check(
            self.frames >= 2, f"{prefix}.frames", f"must be >= 2 (a clip needs one action), got {self.frames}"
        )
        for key in ("frame_step", "clips_per_trajectory", "crop"):
            _check(getattr(self, key) >= 1, f"{prefix}.{key}", f"must be >= 1, got {getattr(self, key)}")
        if self.kind == "droid":
            _check(
                self.state == "all",
                f"{prefix}.state",
                "must be all for data.kind=droid (its states are the 7-D end-effector pose and gripper)",
            )
        _check(self.fps is None or self.kind == "droid", f"{prefix}.fps", "applies to data.kind=droid only")
        _check(self.fps is None or self.fps > 0, f"{prefix}.fps", f"must be > 0 or null, got {self.fps}")

    def _what(self) -> str:
        return "DROID episode folders" if self.kind == "droid" else "trajectory shards"

    def sources(self, prefix: str = "data") -> list[Path]:
        """The trajectory shards, or the DROID episode folders, of data.train (sorted); ValueError if none."""
        root = Path(self.train)
        _check(root.is_dir(), f"{prefix}.train", f"{root} is not a folder")
        if self.kind == "droid":
            from data_pipelines.droid import find_episodes

            found = find_episodes(root)
            _check(bool(found), f"{prefix}.train", f"{root} holds no DROID episode folders (trajectory.h5)")
            return found
        found = sorted(root.glob("*.tar"))
        _check(bool(found), f"{prefix}.train", f"{root} holds no trajectory shards (*.tar)")
        return found

    def shards(self, prefix: str = "data") -> list[Path]:
        """The trajectory shards of data.train (data.kind=shards)."""
        _check(self.kind == "shards", f"{prefix}.kind", "trajectory shards need data.kind=shards")
        return self.sources(prefix)


@dataclass
class ACPredictorSettings:
    width: int = 96
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    residual: bool = False  # predict the change from the current features (output = input + prediction)
    # actions are multiplied by this before the predictor embeds them; the push scene's velocities are at most
    # 0.05 per axis, so 20 brings them to [-1, 1], the scale of the states and features
    action_scale: float = 1.0

    def validate(self, prefix: str = "predictor") -> None:
        for key in ("width", "depth", "heads"):
            _check(getattr(self, key) >= 1, f"{prefix}.{key}", f"must be >= 1, got {getattr(self, key)}")
        _check(self.width % self.heads == 0, f"{prefix}.width", f"must be divisible by {prefix}.heads")
        _check(self.width // self.heads >= 6, f"{prefix}.heads", "leaves a head dim below 6 (3-D RoPE)")
        _check(self.mlp_ratio > 0, f"{prefix}.mlp_ratio", f"must be > 0, got {self.mlp_ratio}")
        _check(self.action_scale > 0, f"{prefix}.action_scale", f"must be > 0, got {self.action_scale}")


@dataclass
class ACOptimSettings:
    lr: float = 3e-4  # peak, after a linear warmup; then cosine to final_lr
    final_lr: float = 1e-5
    warmup_steps: int = 20
    weight_decay: float = 0.04
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    steps: int = 300
    batch: int = 16  # clips per step on each rank (dist.backend=ddp: the global batch is batch x ranks)

    def validate(self, prefix: str = "optim") -> None:
        _check(self.lr > 0, f"{prefix}.lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.final_lr <= self.lr, f"{prefix}.final_lr", f"must be in [0, {prefix}.lr]")
        _check(self.warmup_steps >= 0, f"{prefix}.warmup_steps", "must be >= 0")
        _check(self.weight_decay >= 0, f"{prefix}.weight_decay", "must be >= 0")
        _check(all(0 <= b < 1 for b in self.betas), f"{prefix}.betas", "each must be in [0, 1)")
        _check(self.grad_clip is None or self.grad_clip > 0, f"{prefix}.grad_clip", "must be > 0 or null")
        for key in ("steps", "batch"):
            _check(getattr(self, key) >= 1, f"{prefix}.{key}", f"must be >= 1, got {getattr(self, key)}")


@dataclass
class ACLossSettings:
    rollout_steps: int = 2  # k: autoregressive steps from the first frame
    rollout_weight: float = 1.0  # loss = teacher forcing + weight x rollout (0: teacher forcing only)

    def validate(self, prefix: str = "loss") -> None:
        _check(self.rollout_steps >= 1, f"{prefix}.rollout_steps", f"must be >= 1, got {self.rollout_steps}")
        _check(
            self.rollout_weight >= 0, f"{prefix}.rollout_weight", f"must be >= 0, got {self.rollout_weight}"
        )


@dataclass
class ACTrainSettings:
    out_dir: str = "runs/ac"
    seed: int = 0  # predictor weights and the batch order
    device: DeviceName = "auto"
    host_memory: HostMemory = "keep"  # as the pretraining's train.host_memory (vjepa/host_memory.py)
    checkpoint_every: int = 100  # steps between checkpoints (the last step always saves)
    keep_last: int = 2
    log_every: int = 1  # steps between log.jsonl records
    progress: bool | None = None  # a live one-line progress; None: only on a terminal
    encode_batch: int = 64  # frames per encoder call while caching the features

    def validate(self, prefix: str = "train") -> None:
        _check(bool(self.out_dir.strip()), f"{prefix}.out_dir", "must name the run folder")
        _check(self.seed >= 0, f"{prefix}.seed", f"must be >= 0, got {self.seed}")
        for key in ("checkpoint_every", "keep_last", "log_every", "encode_batch"):
            _check(getattr(self, key) >= 1, f"{prefix}.{key}", f"must be >= 1, got {getattr(self, key)}")


@dataclass
class ACDistSettings:
    # single: one process; ddp: DistributedDataParallel over the launcher's processes (torchrun, srun), each
    # rank encoding and drawing from its own share of the trajectories. DeepSpeed is not offered here: the
    # predictor and its AdamW state are small enough to replicate on every rank.
    backend: Literal["single", "ddp"] = "single"
    timeout_minutes: float = 30.0  # how long a collective waits for the other ranks before it fails

    def validate(self, prefix: str = "dist") -> None:
        _check(self.timeout_minutes > 0, f"{prefix}.timeout_minutes", "must be > 0")


@dataclass
class ACConfig:
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    data: ACDataSettings = field(default_factory=ACDataSettings)
    predictor: ACPredictorSettings = field(default_factory=ACPredictorSettings)
    optim: ACOptimSettings = field(default_factory=ACOptimSettings)
    loss: ACLossSettings = field(default_factory=ACLossSettings)
    train: ACTrainSettings = field(default_factory=ACTrainSettings)
    dist: ACDistSettings = field(default_factory=ACDistSettings)

    def validate(self) -> None:
        for name in ("encoder", "data", "predictor", "optim", "loss", "train", "dist"):
            getattr(self, name).validate(name)
        _check(
            self.loss.rollout_steps <= self.data.frames - 1,
            "loss.rollout_steps",
            f"{self.loss.rollout_steps} exceeds data.frames - 1 = {self.data.frames - 1}",
        )

    def check_paths(self) -> None:
        self.encoder.check_paths("encoder")
        self.data.sources("data")
        check_writable_folder(self.train.out_dir, "train.out_dir")


def load_ac_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *, check_paths: bool = True
) -> ACConfig:
    """Defaults, the YAML file, `key=value` overrides; validated (and the paths checked) before any work."""
    cfg = load_tree(ACConfig, path, overrides)
    cfg.validate()
    if check_paths:
        cfg.check_paths()
    return cfg

"""One typed config tree. Dataclasses hold every default; YAML files and `key=value` overrides only override.

Loading is strict: an unknown key, a value of the wrong type or an inconsistent combination raises a
ValueError that names the dotted key, before any work starts. The schema-independent machinery (typed
conversion, overrides, `load_tree`) lives in vjepa/config_tree.py and is re-exported here.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from data_pipelines import (
    DataConfig,
    MaskSpec,
    check,
    check_fields,
    default_mask_specs,
)
from vjepa.config_tree import apply_override as apply_override
from vjepa.config_tree import bundled_configs as bundled_configs
from vjepa.config_tree import find_config as find_config
from vjepa.config_tree import from_dict as from_dict
from vjepa.config_tree import load_tree
from vjepa.config_tree import to_dict as to_dict
from vjepa.dense.config import LossConfig, check_levels
from vjepa.utils import DeviceName, atomic_write, resolve_device

PosEmbed = Literal["sincos", "rope"]  # sincos: fixed 3D sin-cos (V-JEPA 1); rope: 3D rotary (V-JEPA 2)
# RoPE channel layout: half = rotate-half (a true rotation, ours); vjepa2 = the published V-JEPA 2 layout
RopeLayout = Literal["half", "vjepa2"]
Attention = Literal["sdpa", "xformers"]  # xformers: CUDA only
Schedule = Literal["vjepa1", "vjepa2"]  # vjepa1: warmup + cosine; vjepa2: warmup + constant [+ cooldown]
Precision = Literal["bf16", "fp32"]  # bf16: autocast with fp32 weights
HostMemory = Literal["keep", "release"]  # keep: freed host memory stays in the process (vjepa/host_memory.py)
CompileBackend = Literal["inductor", "aot_eager", "eager"]  # torch.compile backends (eager: Dynamo only)
Backend = Literal["single", "ddp", "deepspeed"]
ZeroStage = Literal[0, 1, 2, 3]


# The model keys that shape the weights: a resumed run and every phase of `train.phases` keep them.
ARCHITECTURE_KEYS = (
    "model.name",
    "model.patch_size",
    "model.tubelet_size",
    "model.pos_embed",
    "model.rope_layout",
    "model.pred_width",
    "model.pred_depth",
    "model.pred_heads",
)


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
    # ViT-L's; V-JEPA 1 gives the predictor the encoder's heads (3 for vit_tiny, 6 vit_small, 12 vit_base)
    # and V-JEPA 2 12. Same FLOPs either way, but fewer, wider heads run faster on CPU: vit_tiny 8x112 batch 4
    # took 4.5 s per step with 3 heads against 5.0 s with 16 (benchmarks/results/cpu_2core.jsonl).
    pred_heads: int = 16
    # torch.compile of encoder, target and predictor (dynamic shapes: packed lengths change every batch;
    # the variable-length attention stays outside the graphs)
    compile: bool = False
    compile_backend: CompileBackend = "inductor"

    def validate(self, prefix: str = "model") -> None:
        from vjepa.models.registry import MODEL_SIZES

        check_fields(self, prefix)
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
    # micro-batches of data.batch_size per optimizer step: the global batch is batch_size x accumulate x ranks
    accumulate: int = 1

    def validate(self, prefix: str = "optim") -> None:
        check_fields(self, prefix)
        check(self.accumulate >= 1, f"{prefix}.accumulate", f"must be >= 1, got {self.accumulate}")
        check(self.lr > 0, f"{prefix}.lr", f"must be > 0, got {self.lr}")
        for key in ("start_lr", "final_lr", "weight_decay", "final_weight_decay"):
            check(getattr(self, key) >= 0, f"{prefix}.{key}", f"must be >= 0, got {getattr(self, key)}")
        check(
            all(0.0 <= b < 1.0 for b in self.betas),
            f"{prefix}.betas",
            f"each must be in [0, 1), got {list(self.betas)}",
        )
        check(self.eps > 0, f"{prefix}.eps", f"must be > 0, got {self.eps}")
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
class PhaseConfig:
    """One phase of `train.phases` (vjepa/train/phases.py): `steps` steps with its own schedule, the base
    config changed by `overrides` (dotted keys -> values, e.g. {data.frames_per_clip: 64, optim.lr: 1e-4}).
    Checked in vjepa/train/phase_config.py, which also lists the keys a phase may not change."""

    name: str = ""  # names the phase's folder <train.out_dir>/phase-<i>-<name>/
    steps: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class SpikeGuardConfig:
    """A finite loss above mean + `std_factor` x std of the last `window` applied steps' losses is a spike:
    the update is skipped on every rank, like a non-finite one (vjepa/train/spike_guard.py). Published
    V-JEPA 2.1 has such a guard, off unless its multiplier is set (no default given); when on, a 300-step
    window, acting from epoch 50 once half the window is filled, and a stop after 10 skipped steps. Ours is
    on: 6 std (chosen here: far above the noise and trend of a healthy loss curve), 300 steps, from 150."""

    std_factor: float = 6.0  # 0 turns the guard off
    window: int = 300  # applied steps whose losses give the mean and std
    warmup: int = 150  # applied steps seen before the guard acts (at most `window`)
    max_total: int = 0  # spikes skipped over the whole run (resumes included) that stop it; 0: no limit

    def validate(self, prefix: str = "train.spike_guard") -> None:
        check_fields(self, prefix)
        check(self.std_factor >= 0, f"{prefix}.std_factor", f"must be >= 0 (0: off), got {self.std_factor}")
        check(self.window >= 2, f"{prefix}.window", f"must be >= 2, got {self.window}")
        check(
            2 <= self.warmup <= self.window,
            f"{prefix}.warmup",
            f"must be in [2, {prefix}.window={self.window}] (a std needs two losses), got {self.warmup}",
        )
        check(self.max_total >= 0, f"{prefix}.max_total", f"must be >= 0 (0: no limit), got {self.max_total}")


@dataclass
class TrainConfig:
    steps: int = 100  # unused with train.phases (each phase has its own steps)
    precision: Precision = "bf16"
    device: DeviceName = "auto"
    # keep: malloc keeps the pages a step frees for the next one (no page fault per page per step; the
    # process keeps its peak heap); release: the system's malloc settings. See vjepa/host_memory.py.
    host_memory: HostMemory = "keep"
    seed: int = 0
    out_dir: str = "runs/default"
    max_bad_steps: int = 5  # consecutive skipped steps (non-finite or a loss spike) before the run stops
    spike_guard: SpikeGuardConfig = field(default_factory=SpikeGuardConfig)
    # Start a new phase (e.g. the V-JEPA 2 cooldown with longer clips) from the weights of a model file:
    # a checkpoint's model.pt or a `vjepa export` file. Ignored when the run folder has a checkpoint.
    init_from: str | None = None
    # Several phases in one run (e.g. pretraining, then a cooldown on longer clips at a higher resolution),
    # one after the other, each from the weights and optimizer state the one before ended with. Empty: one
    # phase, this config. See vjepa/train/phases.py.
    phases: list[PhaseConfig] = field(default_factory=list)

    def validate(self, prefix: str = "train") -> None:
        check_fields(self, prefix)
        check(self.steps >= 1, f"{prefix}.steps", "must be >= 1")
        check(self.seed >= 0, f"{prefix}.seed", f"must be >= 0, got {self.seed}")
        check(
            bool(self.out_dir.strip()),
            f"{prefix}.out_dir",
            "must name the run folder (empty would write the run into the current directory)",
        )
        check(self.max_bad_steps >= 1, f"{prefix}.max_bad_steps", "must be >= 1")
        self.spike_guard.validate(f"{prefix}.spike_guard")

    def check_paths(self, prefix: str = "train") -> None:
        check_writable_folder(self.out_dir, f"{prefix}.out_dir")


def check_writable_folder(path: str | Path, key: str) -> None:
    """`path` is a folder this process can write in, or one it can create: found without creating anything,
    from the nearest part of the path that exists, which must be a folder with write and search permission
    (os.access also sees a read-only mount)."""
    target = Path(os.path.abspath(path))
    existing = target
    while not existing.exists():  # the file system root always exists
        existing = existing.parent
    what = "" if existing == target else f" (the part of {str(path)!r} that exists)"
    check(existing.is_dir(), key, f"{str(existing)!r}{what} is a file, not a folder")
    check(
        os.access(existing, os.W_OK | os.X_OK),
        key,
        f"no permission to write in {str(existing)!r}{what} (or it is on a read-only file system)",
    )


# The keys DeepSpeed 0.19.8 reads: the top level of its config (every key DeepSpeedConfig looks up, found by
# tracing its parsing) and the `zero_optimization` section (DeepSpeedZeroConfig's fields and aliases). An
# unknown key is an error, as everywhere else in the tree: DeepSpeed ignores unknown top-level keys, so a typo
# there would silently run without the setting. A key of a newer DeepSpeed is added here.
DEEPSPEED_KEYS = frozenset(
    "activation_checkpointing aio amp autotuning bf16 bfloat16 checkpoint comet comms_logger "
    "communication_data_type compile compression_training csv_monitor curriculum_learning data_efficiency "
    "data_types dataloader_drop_last datastates_ckpt disable_allgather disable_python_gc dump_state "
    "eigenvalue elasticity expert_parallel flops_profiler fp16 gradient_accumulation_steps "
    "gradient_allreduce_op gradient_clipping gradient_predivide_factor graph_harvesting hybrid_engine "
    "log_level managed_gradient_accumulation memory_breakdown nebula optimizer pipeline prescale_gradients "
    "progressive_layer_drop quantize_training scheduler seq_parallel_communication_data_type "
    "sparse_attention sparse_gradients steps_per_print tensor_parallel tensorboard timers torch_autocast "
    "train_batch_size train_micro_batch_size_per_gpu use_data_before_expert_parallelism vocabulary_size "
    "wall_clock_breakdown wandb weight_quantization zero_allow_untested_optimizer "
    "zero_force_ds_cpu_optimizer zero_optimization".split()
)
DEEPSPEED_ZERO_KEYS = frozenset(
    "allgather_bucket_size allgather_partitions allgather_sequential compute_grad_norm contiguous_gradients "
    "cpu_offload cpu_offload_param cpu_offload_use_pin_memory elastic_checkpoint enable_sanity_checks "
    "gather_16bit_weights_on_model_save ignore_unused_parameters leaf_module legacy_stage1 "
    "load_from_fp32_weights log_trace_cache_warnings max_live_parameters max_reuse_distance "
    "memory_efficient_linear model_persistence_threshold module_granularity_threshold offload_optimizer "
    "offload_param overlap_comm override_module_apply param_persistence_threshold parameter_alignment "
    "pipeline_loading_checkpoint prefetch_bucket_size reduce_bucket_size reduce_scatter "
    "round_robin_gradients save_muon_momentum_buffer_in_memory stage stage3_allgather_sequential "
    "stage3_gather_16bit_weights_on_model_save stage3_gather_fp16_weights_on_model_save "
    "stage3_max_live_parameters stage3_max_reuse_distance stage3_model_persistence_threshold "
    "stage3_module_granularity_threshold stage3_param_persistence_threshold stage3_prefetch_bucket_size "
    "stage3_use_all_reduce_for_fetch_params sub_group_size use_all_reduce_for_fetch_params "
    "use_multi_rank_bucket_allreduce zenflow zero_hpz_partition_size zero_quantized_gradients "
    "zero_quantized_nontrainable_weights zero_quantized_weights".split()
)


def check_deepspeed_keys(raw: dict[str, Any], key: str = "dist.deepspeed") -> None:
    """Every key of the raw DeepSpeed section, and of its `zero_optimization`, is one DeepSpeed reads."""
    for section, known, where in (
        (raw, DEEPSPEED_KEYS, key),
        (raw.get("zero_optimization", {}), DEEPSPEED_ZERO_KEYS, f"{key}.zero_optimization"),
    ):
        if not isinstance(section, dict):
            raise ValueError(f"{where}: expected a mapping, got {section!r}")
        for k in section:
            if k not in known:
                close = difflib.get_close_matches(str(k), known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"unknown DeepSpeed key '{where}.{k}' (not read by DeepSpeed 0.19.8{hint})")


@dataclass
class DistConfig:
    backend: Backend = "single"
    zero_stage: ZeroStage = 2
    deepspeed: dict[str, Any] = field(
        default_factory=dict
    )  # raw DeepSpeed keys merged over the derived config
    # How long a collective waits for the other ranks before it fails (a dead or hung rank then stops the
    # survivors instead of hanging them; torchrun's elastic agent or SLURM restarts the group).
    timeout_minutes: float = 30.0

    def validate(self, prefix: str = "dist") -> None:
        check_fields(self, prefix)
        check(self.timeout_minutes > 0, f"{prefix}.timeout_minutes", "must be > 0")
        check_deepspeed_keys(self.deepspeed, f"{prefix}.deepspeed")


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: int = 2
    resume: bool = True  # resume from the latest checkpoint in train.out_dir when there is one
    # a fresh run writes <run>/init_model.pt, its initial weights (the random-weights baseline of a probe)
    save_init: bool = True
    # resume a checkpoint saved with another data.batch_size (weights, optimizer and step resume; the data
    # stream starts over); refused otherwise
    allow_new_batch_size: bool = False

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
    collapse_warn_fraction: float = 0.7  # warn when an effective dim falls below this x its first value

    def validate(self, prefix: str = "log") -> None:
        check(self.every_steps >= 1, f"{prefix}.every_steps", "must be >= 1")
        check(self.monitor_every >= 0, f"{prefix}.monitor_every", "must be >= 0 (0 turns the monitors off)")
        check(
            0.0 < self.collapse_warn_fraction < 1.0, f"{prefix}.collapse_warn_fraction", "must be in (0, 1)"
        )


@dataclass
class PeriodicEvalConfig:
    """The run probing itself (vjepa/train/periodic_probe.py): every `every_steps` steps a probe on the EMA
    target's frozen features of a small labelled split logs `probe_top1`."""

    every_steps: int = 0  # 0: off
    data: str = ""  # a folder with train/ and val/ (labelled shards, class folders or CSVs), or "synthetic"
    probe: Literal["linear", "attentive"] = "linear"  # linear: deterministic L-BFGS on mean tokens
    max_videos: int = 256  # per split
    seed: int = 0  # of the rendered clips with data=synthetic

    def validate(self, prefix: str = "eval") -> None:
        check(self.every_steps >= 0, f"{prefix}.every_steps", "must be >= 0 (0 turns it off)")
        check(self.max_videos >= 2, f"{prefix}.max_videos", "must be >= 2")
        check(
            self.every_steps == 0 or bool(self.data),
            f"{prefix}.data",
            "needs a labelled dataset folder (train/ and val/) or 'synthetic' when eval.every_steps > 0",
        )

    def check_paths(self, prefix: str = "eval") -> None:
        if self.every_steps == 0 or self.data == "synthetic":
            return
        root = Path(self.data)
        for split in ("train", "val"):
            if not ((root / split).exists() or (root / f"{split}.csv").is_file()):
                raise ValueError(f"{prefix}.data: {root} has neither {split}/ nor {split}.csv")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: list[MaskSpec] = field(default_factory=default_mask_specs)
    loss: LossConfig = field(default_factory=LossConfig)  # V-JEPA 2.1's switches, vjepa/dense/config.py
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: PeriodicEvalConfig = field(default_factory=PeriodicEvalConfig)

    def check_paths(self) -> None:
        """The paths on this machine: the data sources exist and train.out_dir can be written. Separate from
        `validate` (which reads no file) so that a config can be printed or checked where the data is not
        mounted; a training run checks both before it builds anything."""
        self.data.check_paths("data")
        self.train.check_paths("train")
        self.eval.check_paths("eval")

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
        from vjepa.models.registry import get_size

        check_levels(self.loss.levels, get_size(m.name).depth, "loss.levels")
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
        grid = (d.frames_per_clip // m.tubelet_size, d.crop_size // m.patch_size, d.crop_size // m.patch_size)
        for i, spec in enumerate(self.mask):
            spec.check_grid(
                grid,
                f"mask.{i}",
                grid_from="data.frames_per_clip / model.tubelet_size, data.crop_size / model.patch_size",
            )
        _check_source_lengths(self, grid)
        check(
            bool(t.phases) or self.optim.cooldown_steps <= t.steps,  # with phases: checked in each phase
            "optim.cooldown_steps",
            f"{self.optim.cooldown_steps} is more than train.steps={t.steps}",
        )
        check(
            not (m.compile and self.dist.backend == "deepspeed"),
            "model.compile",
            "is not supported with dist.backend=deepspeed (use single or ddp)",
        )
        if m.attention == "xformers":  # fail before any work where it cannot run (no CPU kernels)
            from vjepa.layers.attention import check_backend

            device = "cuda" if t.device == "cuda" else resolve_device(t.device, key="train.device").type
            try:
                check_backend("xformers", device)
            except ValueError as err:
                raise ValueError(f"{err} (train.device={t.device})") from None
        if t.phases:  # every phase's resolved config is built and checked too, before any work
            from vjepa.train.phase_config import resolve_phases

            resolve_phases(self)


def _check_source_lengths(cfg: Config, grid: tuple[int, int, int]) -> None:
    """Sources of their own clip length: divisible by the tubelet (or 1, an image), and every mask
    configuration fits their token grid."""
    m, d = cfg.model, cfg.data
    for i, source in enumerate(d.sources if d.dataset == "files" else []):
        frames = d.source_frames(source)
        if frames == d.frames_per_clip:
            continue
        key = f"data.sources.{i}.frames_per_clip"
        check(
            frames == 1 or frames % m.tubelet_size == 0,
            key,
            f"{frames} is not divisible by model.tubelet_size={m.tubelet_size} (1 is an image source)",
        )
        for k, spec in enumerate(cfg.mask):
            spec.check_grid((max(1, frames // m.tubelet_size), *grid[1:]), f"mask.{k}", grid_from=key)


# Keys of earlier versions that a stored config (a run's config.yaml, a checkpoint or an exported model) may
# still hold, and what replaced them. Reading a stored config drops them; a config file that sets one is told.
RETIRED_KEYS = {
    "train.loss_spike_factor": "train.spike_guard.std_factor (a trailing mean + k x std bar)",
    "train.loss_guard_warmup": "train.spike_guard.warmup",
}


def stored_config(raw: dict[str, Any]) -> Config:
    """The Config of a stored config tree, written by this or an earlier version (retired keys dropped)."""
    raw = copy.deepcopy(raw)
    for dotted in RETIRED_KEYS:
        section, _, key = dotted.rpartition(".")
        node = raw.get(section) if isinstance(raw, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return from_dict(Config, raw)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    check_paths: bool = False,
) -> Config:
    """Defaults, then the YAML file, then `key=value` overrides; validated before anything runs, and with
    `check_paths` also checked against this machine's files (`Config.check_paths`)."""
    try:
        cfg = load_tree(Config, path, overrides, open_keys=("dist.deepspeed",))
    except ValueError as err:
        for key, successor in RETIRED_KEYS.items():
            if f"unknown config key '{key}'" in str(err):
                raise ValueError(f"{err}; '{key}' was replaced by {successor}") from None
        raise
    cfg.validate()
    if check_paths:
        cfg.check_paths()
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes the whole resolved tree as YAML (atomically: a reader never sees half a file)."""
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

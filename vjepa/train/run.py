"""Building a pretraining run: the models for a config, the engine, the data stream, the run folder and the
checkpoint manager (`build_run`), and where it starts (`resume`). The loop that drives it is
vjepa/train/trainer.py.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from data_pipelines import BatchStream, MaskGenerator, build_train_stream
from vjepa import host_memory
from vjepa.checkpoint import CheckpointManager, RunFolder, atomic_torch_save, save_trainer_state
from vjepa.config import Config, save_config
from vjepa.dense.loss import DenseLoss
from vjepa.distributed.engine import Engine, build_engine
from vjepa.distributed.env import DistEnv, read_env
from vjepa.models.builder import build_encoder, build_predictor, token_grid
from vjepa.objective import JepaModel
from vjepa.pretrained import read_pretrained
from vjepa.train.compile import compile_models
from vjepa.train.metrics import trim_log
from vjepa.train.optim import build_optimizer
from vjepa.train.periodic_probe import PeriodicProbe
from vjepa.train.resume import restore_newest
from vjepa.train.spike_guard import SpikeGuard
from vjepa.utils import resolve_device

log = logging.getLogger(__name__)


def build_models(cfg: Config, device: torch.device) -> JepaModel:
    """Encoder and predictor for the run's longest clip (data.frames_per_clip); with several clip lengths
    the predictor has one mask token per (length, mask configuration)."""
    m, d = cfg.model, cfg.data
    lengths = d.clip_lengths()
    common = dict(
        frames=d.frames_per_clip,
        crop=d.crop_size,
        patch=m.patch_size,
        tubelet=m.tubelet_size,
        pos_embed=m.pos_embed,
        rope_layout=m.rope_layout,
        attention=m.attention,
        grad_ckpt=m.activation_checkpointing,
    )
    encoder = build_encoder(m.name, device=device, **common)
    predictor = build_predictor(
        embed_dim=encoder.width,
        width=m.pred_width,
        depth=m.pred_depth,
        heads=m.pred_heads,
        num_mask_tokens=len(cfg.mask) * len(lengths),
        levels=cfg.loss.num_levels,
        context_head=cfg.loss.context_weight > 0,
        device=device,
        **common,
    )
    clip_lengths = tuple(lengths) if len(lengths) > 1 else None
    return JepaModel(encoder, predictor, DenseLoss.from_config(cfg.loss), clip_lengths)


def environment_info(env: DistEnv) -> dict:
    import vjepa

    return {
        "vjepa": vjepa.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "world_size": env.world_size,
        "launcher": env.source,
        "host": platform.node(),
        "cuda": torch.cuda.is_available(),
    }


def make_engine(cfg: Config, model: JepaModel, device: torch.device, env: DistEnv) -> Engine:
    """The engine for `cfg.dist`, given the config sections it needs (and `model.compile` applied); sets
    `train.host_memory` for this process first."""
    host_memory.apply(cfg.train.host_memory)
    engine = build_engine(
        model,
        lambda module: build_optimizer(module, cfg.optim),
        optim=cfg.optim,
        dist=cfg.dist,
        precision=cfg.train.precision,
        micro_batch=cfg.data.batch_size,
        device=device,
        env=env,
    )
    if cfg.model.compile:
        compile_models(engine, cfg.model.compile_backend)
    return engine


@dataclass
class Run:
    """Everything one training process holds."""

    cfg: Config
    env: DistEnv
    device: torch.device
    folder: RunFolder
    engine: Engine
    data: BatchStream
    ckpts: CheckpointManager
    owns_group: bool
    guard: SpikeGuard
    probe: PeriodicProbe | None = None  # eval.every_steps: the run probing itself

    def save(self, step: int) -> None:
        """Collective: a complete step folder with the weights, this rank's trainer state, the config."""

        def write(folder: Path) -> None:
            self.engine.save(folder)
            extra = {"spike_guard": self.guard.state_dict()}
            save_trainer_state(folder, self.env.rank, step=step, data=self.data.state_dict(), extra=extra)
            if self.env.is_main:
                save_config(self.cfg, RunFolder(folder).config)

        self.ckpts.save(step, write)

    def close(self) -> None:
        self.engine.close()
        if self.owns_group:
            from vjepa.distributed.process_group import stop_process_group

            stop_process_group()


def write_run_folder(cfg: Config, env: DistEnv, folder: RunFolder, initial: JepaModel | None) -> None:
    """The resolved config, the environment and (for a fresh run) the initial weights: rank 0's, which every
    engine broadcasts; the target starts as a copy of the encoder."""
    folder.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder.config)
    folder.env.write_text(json.dumps(environment_info(env), indent=2))
    if initial is not None:
        parts = {
            "encoder": initial.encoder,
            "predictor": initial.predictor,
            "target_encoder": initial.encoder,
        }
        atomic_torch_save({k: m.state_dict() for k, m in parts.items()}, folder.init_weights)


def build_run(cfg: Config) -> Run:
    """Device, process group, models, engine, data and checkpoint manager for `cfg`; writes the run
    folder's config, environment and (on a fresh start) the initial weights."""
    from vjepa.distributed.process_group import start_process_group

    cfg.check_paths()  # data sources exist and train.out_dir can be written, before anything is built
    env = read_env()
    device = resolve_device(cfg.train.device, index=env.local_rank, key="train.device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # ddp/deepspeed run in a process group (raises if it cannot start); torn down in Run.close if started here
    owns_group = cfg.dist.backend != "single" and start_process_group(
        env, device, timeout=timedelta(minutes=cfg.dist.timeout_minutes)
    )
    torch.manual_seed(cfg.train.seed + env.rank)
    folder = RunFolder(cfg.train.out_dir)
    model = build_models(cfg, device)
    ckpts = CheckpointManager(folder.checkpoints, keep_last=cfg.checkpoint.keep_last, rank=env.rank)
    if env.is_main:
        fresh = not (cfg.checkpoint.resume and ckpts.latest() is not None)
        write_run_folder(cfg, env, folder, model if fresh and cfg.checkpoint.save_init else None)
    engine = make_engine(cfg, model, device, env)
    ckpts.barrier = engine.barrier
    grid = token_grid(
        frames=cfg.data.frames_per_clip,
        crop=cfg.data.crop_size,
        patch=cfg.model.patch_size,
        tubelet=cfg.model.tubelet_size,
    )
    masks = MaskGenerator(
        cfg.mask, grid=grid, seed=cfg.train.seed, rank=env.rank, tubelet=cfg.model.tubelet_size
    )
    data = build_train_stream(
        cfg.data, mask_generator=masks, seed=cfg.train.seed, rank=env.rank, world_size=env.world_size
    )
    guard = SpikeGuard(cfg.train.spike_guard)
    probe = PeriodicProbe(cfg, device, main=env.is_main) if cfg.eval.every_steps > 0 else None
    return Run(cfg, env, device, folder, engine, data, ckpts, owns_group, guard, probe)


def resume(run: Run) -> int:
    """Restores the newest readable checkpoint (see resume.py), or else the `train.init_from` weights;
    -> the first step."""
    cfg = run.cfg
    restored = restore_newest(run) if cfg.checkpoint.resume else None
    if restored is not None:
        step, extra = restored
        if "spike_guard" in extra:
            run.guard.load_state_dict(extra["spike_guard"])
        if run.env.is_main:  # the steps after the checkpoint run again and are logged again
            trim_log(run.folder.root, step)
        return step
    if cfg.train.init_from:
        run.engine.load_weights(read_pretrained(cfg.train.init_from, what="train.init_from", model=cfg.model))
        log.info("initialised weights from %s", cfg.train.init_from)
    return 0

"""DeepSpeed ZeRO (stages 0-3; 1-3 shard) as a training engine with the same surface as SingleEngine.

- The JepaModel (encoder + predictor) trains inside a DeepSpeed engine; the optimizer is our torch AdamW with
  our parameter groups (a config-declared DeepSpeed AdamW JIT-compiles a C++ op). lr and weight decay are
  written each step into `engine.optimizer.param_groups`, which ZeRO forwards to the wrapped AdamW whose
  groups hold the flat fp32 partitions, so they reach the real update.
- Precision: weights, master weights and optimizer state stay fp32. `train.precision=bf16` enables DeepSpeed's
  `torch_autocast` section (bf16 autocast in the forward, as in the V-JEPA recipe); DeepSpeed's `bf16` mode
  would cast the model to bf16 and is rejected. With torch_autocast, DeepSpeed communicates Linear/Conv
  gradients (and ZeRO-3 gathers those weights) in bf16; set
  `dist.deepspeed.torch_autocast.lower_precision_safe_modules=[]` to keep all communication in fp32.
- EMA target in fp32: a replicated plain module for stages 0-2 (parameters are full on every rank after
  each step); under ZeRO-3 it is partitioned like the encoder and updated shard-locally (see zero_ema.py).
- Non-finite steps: the loss is checked before backward (trainer); after backward the global gradient norm
  (computed from each rank's gradient partition and all-reduced) decides, identically on every rank,
  whether to step. A skipped step discards the gradients through ZeRO's own overflow path.
- Checkpoints: DeepSpeed's sharded format under `<folder>/deepspeed/`, plus the target (`target.pt`, or one
  `target_rank{r}.pt` fp32 shard per rank under ZeRO-3).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from data_pipelines.batch import MaskBatch
from vjepa.config import Config
from vjepa.distributed import zero_ema
from vjepa.distributed.deepspeed_config import deepspeed_config
from vjepa.distributed.process_group import all_true
from vjepa.models.jepa import JepaModel
from vjepa.objective import JepaOutput, target_features
from vjepa.train.ema import ema_update, make_target
from vjepa.train.optim import build_optimizer, set_lr_wd

TAG = "deepspeed"  # the sub-folder (DeepSpeed "tag") of a checkpoint folder holding DeepSpeed's files
TARGET_FILE = "target.pt"


def _import_deepspeed():
    try:
        import deepspeed
    except ImportError as err:  # pragma: no cover - deepspeed is a declared dependency
        raise ImportError("dist.backend=deepspeed needs DeepSpeed: pip install 'deepspeed>=0.15'") from err
    return deepspeed


def _weights_for(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The parameter tensors of `state` for `module`, checked by name (position tables are ignored)."""
    expected = {n for n, _ in module.named_parameters() if not n.endswith("pos_embed")}
    given = {k for k in state if not k.endswith("pos_embed")}
    given -= {n for n, _ in module.named_buffers()}
    if expected != given:
        raise ValueError(
            f"train.init_from: '{name}' weights do not fit: missing {sorted(expected - given)}, "
            f"unexpected {sorted(given - expected)}"
        )
    return {k: state[k] for k in expected}


def skip_cpu_shm_op() -> None:
    """On CPU, DeepSpeed's comm backend JIT-compiles a shared-memory all-reduce op when it starts (about two
    minutes on 2 cores, and a C++ toolchain is required). Only its inference all-reduce uses that op; training
    collectives go through torch.distributed (gloo), so the op is marked unavailable before DeepSpeed starts
    (DeepSpeed caches its op-compatibility table in one module-level dict, so the edit persists)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copies rank `src`'s parameters and buffers to every rank (ranks seed their RNGs differently)."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


class DeepSpeedEngine:
    def __init__(self, cfg: Config, model: JepaModel, device: torch.device) -> None:
        deepspeed = _import_deepspeed()
        from deepspeed.accelerator import get_accelerator

        if not dist.is_initialized():
            raise RuntimeError(
                "DeepSpeedEngine needs a started process group (see vjepa.distributed.process_group)"
            )
        accel = get_accelerator().device_name()
        if accel != device.type:
            raise ValueError(
                f"train.device resolves to {device.type!r} but DeepSpeed selected its {accel!r} accelerator "
                f"(set DS_ACCELERATOR={device.type} or change train.device)"
            )
        if accel == "cpu":
            skip_cpu_shm_op()
        self.cfg, self.device = cfg, device
        self.stage = cfg.dist.zero_stage
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.ds_config = deepspeed_config(cfg, self.world_size)
        model = model.to(device)
        broadcast_module(model)  # before the target copy; DeepSpeed would broadcast only its own module
        target = make_target(model.encoder)
        engine, optimizer, _, _ = deepspeed.initialize(
            model=model,
            optimizer=build_optimizer(model, cfg.optim),
            config=self.ds_config,
            dist_init_required=False,
        )
        self.model, self.module, self.optimizer = engine, model, optimizer
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self._target_engine = None
        if self.stage == 3:
            self.target, self._target_engine = zero_ema.partition_target(target, self.ds_config)
        else:
            self.target = target

    # ------------------------------------------------------------------ collectives

    def barrier(self) -> None:
        dist.barrier()

    def all_finite(self, flag: bool) -> bool:
        """True only if `flag` holds on every rank (so all ranks skip a bad step together)."""
        return all_true(flag, self.device)

    # ------------------------------------------------------------------ one step

    def forward(self, clips: torch.Tensor, masks: list[MaskBatch]) -> JepaOutput:
        targets = target_features(self.target, clips)  # under ZeRO-3 the target's hooks gather its params
        return self.model(clips, masks, targets)

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the (reduced, unclipped) gradients, identical on every rank; inf if any
        gradient is non-finite. Call after backward, before step."""
        if self.stage == 3:
            from deepspeed.utils import safe_get_local_grad

            local = [safe_get_local_grad(p) for p in self.trainable]  # this rank's fp32 gradient partitions
            sq = torch.stack([torch.linalg.vector_norm(g.float()) ** 2 for g in local if g is not None]).sum()
            dist.all_reduce(sq)
            norm = sq.sqrt()
        elif self.stage in (1, 2):
            norm = self.optimizer.scaled_global_norm()  # partition norms, all-reduced; -1 marks inf/NaN
            norm = torch.where(norm < 0, torch.full_like(norm, float("inf")), norm)
        else:  # stage 0: gradients are all-reduced in backward and full on every rank
            grads = [p.grad for p in self.trainable if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        return norm.detach().float().cpu()

    def step(self, lr: float, weight_decay: float) -> tuple[float, bool]:
        """Checks the gradients are finite on all ranks, then clips (DeepSpeed) and steps.
        -> (pre-clip global grad norm, applied)."""
        norm = self.grad_norm()
        finite = self.all_finite(bool(torch.isfinite(norm)))
        if not finite:
            self._discard_gradients()
            return float(norm), False
        set_lr_wd(self.optimizer, lr, weight_decay)
        self.model.step()
        if not self.model.was_step_applied():
            raise RuntimeError("DeepSpeed skipped a step whose gradients were finite on every rank")
        return float(norm), True

    def _discard_gradients(self) -> None:
        if self.stage == 0:
            self.model.zero_grad()
            return
        # ZeRO's overflow path drops the reduced partitions and resets its accumulation counters; in fp32
        # (no loss scaling) it only runs when the gradient norm is invalid, which is the case here.
        self.model.step()
        if self.model.was_step_applied():
            raise RuntimeError("DeepSpeed applied a step whose gradients were non-finite")

    def skip(self) -> None:
        """Called instead of backward/step when the loss is non-finite: nothing was accumulated yet."""
        self.model.zero_grad()

    def ema(self, momentum: float) -> None:
        if self.stage == 3:
            zero_ema.zero3_ema_update(self.target, self.module.encoder, momentum)
        else:
            ema_update(self.target, self.module.encoder, momentum)

    # ------------------------------------------------------------------ checkpoints

    def save(self, folder: Path, rank: int = 0) -> None:
        """Collective: every rank writes its DeepSpeed shards and (ZeRO-3) its target shard into `folder`."""
        folder = Path(folder)
        self.model.save_checkpoint(str(folder), tag=TAG, save_latest=False)
        if self.stage == 3:
            zero_ema.save_shard(self.target, folder, self.rank, self.world_size)
        elif self.rank == 0:
            torch.save(self.target.state_dict(), folder / TARGET_FILE)

    def load(self, folder: Path) -> None:
        folder = Path(folder)
        if not (folder / TAG).is_dir():
            raise ValueError(f"{folder}: no DeepSpeed checkpoint (expected the folder {folder / TAG})")
        path, _ = self.model.load_checkpoint(
            str(folder), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise ValueError(f"{folder / TAG}: DeepSpeed could not load this checkpoint")
        if self.stage == 3:
            zero_ema.load_shard(self.target, folder, self.rank, self.world_size)
        else:
            if not (folder / TARGET_FILE).is_file():
                raise ValueError(f"{folder}: missing {TARGET_FILE} (saved with dist.zero_stage=3?)")
            self.target.load_state_dict(torch.load(folder / TARGET_FILE, map_location=self.device))

    @torch.no_grad()
    def load_weights(self, state: dict) -> None:
        """Encoder, predictor and target weights from a plain model file (`vjepa export`, `train.init_from`);
        the optimizer starts fresh. Fixed position tables are rebuilt for this run, so saved ones are dropped.
        Writes reach every copy DeepSpeed keeps: the (ZeRO-3: partitioned) weights and the fp32 masters."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        for module, key in ((self.module.encoder, "encoder"), (self.module.predictor, "predictor")):
            weights = _weights_for(module, state[key], key)
            params = dict(module.named_parameters())
            with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0):
                for name, p in params.items():
                    p.data.copy_(weights[name])
            if self.stage > 0:
                for name, p in params.items():
                    safe_set_full_fp32_param(p, weights[name].float())
        weights = _weights_for(self.target, state["target_encoder"], "target_encoder")
        if self.stage == 3:
            zero_ema.load_full(self.target, weights)
        else:
            for name, p in self.target.named_parameters():
                p.copy_(weights[name])

    def close(self) -> None:
        """Releases DeepSpeed's hooks and buffers (before the process group goes away)."""
        for engine in (self._target_engine, self.model):
            if engine is not None and hasattr(engine, "destroy"):
                engine.destroy()

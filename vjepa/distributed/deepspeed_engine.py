"""DeepSpeed ZeRO (stages 0-3; 1-3 shard) as a training `Engine` (see engine.py).

- The JepaModel (encoder + predictor) trains inside a DeepSpeed engine; the optimizer is our torch AdamW with
  our parameter groups (a config-declared DeepSpeed AdamW JIT-compiles a C++ op). lr and weight decay are
  written each step into `engine.optimizer.param_groups`, which ZeRO forwards to the wrapped AdamW whose
  groups hold the flat fp32 partitions, so they reach the real update.
- Precision: weights, master weights and optimizer state stay fp32. `train.precision=bf16` enables DeepSpeed's
  `torch_autocast` section (bf16 autocast in the forward, as in the V-JEPA recipe); DeepSpeed's `bf16` mode
  would cast the model to bf16 and is rejected. With torch_autocast, DeepSpeed communicates Linear/Conv
  gradients (and ZeRO-3 gathers those weights) in bf16; set
  `dist.deepspeed.torch_autocast.lower_precision_safe_modules=[]` to keep all communication in fp32.
- EMA target in fp32: a ReplicatedTarget for stages 0-2 (parameters are full on every rank after each
  step); under ZeRO-3 a PartitionedTarget, partitioned like the encoder and updated shard-locally
  (target.py, zero_ema.py).
- Non-finite steps: the trainer checks the loss before backward and the global gradient norm (computed
  here from each rank's gradient partition and all-reduced) after it, identically on every rank. A step
  skipped after backward discards the gradients through ZeRO's own overflow path.
- Gradient accumulation (`optim.accumulate` = k): DeepSpeed's own, `gradient_accumulation_steps` = k. The
  micro-batches before a step's last run inside `no_sync`, which marks them as no accumulation boundary and
  calls DeepSpeed's step after their backward (it only counts the micro-step); the last one's backward
  reduces, and its step updates. The trainer's losses are already each micro-batch's exact share of the
  step's loss, so backward does not divide them by k again (`scale_wrt_gas=False`).
- Clipping: DeepSpeed clips inside its step from `gradient_clipping` (= optim.grad_clip), so
  `clip_gradients` has nothing left to do.
- Checkpoints: DeepSpeed's sharded format under `<folder>/deepspeed/`, plus the target (`target.pt`, or one
  `target_rank{r}.pt` fp32 shard per rank under ZeRO-3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn

from vjepa.checkpoint import DEEPSPEED_TAG, TARGET_FILE
from vjepa.config import DistConfig
from vjepa.distributed import zero_ema
from vjepa.distributed.deepspeed_config import deepspeed_config
from vjepa.distributed.engine import collectives
from vjepa.distributed.target import PartitionedTarget, ReplicatedTarget
from vjepa.models.weights import checked_weights, read_torch_file
from vjepa.objective import JepaModel


def _import_deepspeed():
    try:
        import deepspeed
    except ImportError as err:  # pragma: no cover - deepspeed is a declared dependency
        raise ImportError("dist.backend=deepspeed needs DeepSpeed: pip install 'deepspeed>=0.15'") from err
    return deepspeed


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
        torch_dist.broadcast(t.data, src)


class DeepSpeedEngine:
    def __init__(
        self,
        model: JepaModel,
        optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer],
        *,
        dist: DistConfig,
        grad_clip: float | None,
        precision: str,
        micro_batch: int,
        device: torch.device,
        accumulate: int = 1,
    ) -> None:
        deepspeed = _import_deepspeed()
        from deepspeed.accelerator import get_accelerator

        if not torch_dist.is_initialized():
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
        self.device, self.stage = device, dist.zero_stage
        self.rank, self.world_size = torch_dist.get_rank(), torch_dist.get_world_size()
        self.ds_config = deepspeed_config(
            dist,
            world_size=self.world_size,
            micro_batch=micro_batch,
            accumulate=accumulate,
            grad_clip=grad_clip,
            precision=precision,
        )
        model = model.to(device)
        broadcast_module(model)  # before the target copy; DeepSpeed would broadcast only its own module
        target = ReplicatedTarget(model.encoder)  # copied before ZeRO-3 partitions the encoder
        engine, optimizer, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer_factory(model),
            config=self.ds_config,
            dist_init_required=False,
        )
        self.target = (
            PartitionedTarget(target.module, self.ds_config, self.world_size) if self.stage == 3 else target
        )
        self.model, self.module, self.optimizer = engine, model, optimizer
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.barrier, self.all_ranks = collectives(device)

    # ------------------------------------------------------------------ one step

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """A micro-batch before the step's last: no accumulation boundary (ZeRO-2/3 still reduce-scatter
        into the gradient partitions, ZeRO-0/1 keep them local), and DeepSpeed's step after the backward
        only advances its micro-step count."""
        self.model.set_gradient_accumulation_boundary(False)
        try:
            yield
            self.model.step()
        finally:
            self.model.set_gradient_accumulation_boundary(True)

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss, scale_wrt_gas=False)  # the loss is already this micro-batch's exact share

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the (reduced, unclipped) gradients, identical on every rank; inf if any
        gradient is non-finite. Call after backward, before step."""
        if self.stage == 3:
            from deepspeed.utils import safe_get_local_grad

            local = [safe_get_local_grad(p) for p in self.trainable]  # this rank's fp32 gradient partitions
            sq = torch.stack([torch.linalg.vector_norm(g.float()) ** 2 for g in local if g is not None]).sum()
            torch_dist.all_reduce(sq)
            norm = sq.sqrt()
        elif self.stage in (1, 2):
            norm = self.optimizer.scaled_global_norm()  # partition norms, all-reduced; -1 marks inf/NaN
            norm = torch.where(norm < 0, torch.full_like(norm, float("inf")), norm)
        else:  # stage 0: gradients are all-reduced in backward and full on every rank
            grads = [p.grad for p in self.trainable if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        return norm.detach().float().cpu()

    def clip_gradients(self, max_norm: float, total_norm: torch.Tensor) -> None:
        """Nothing to do: DeepSpeed clips in `step` from its `gradient_clipping` (= optim.grad_clip)."""

    def step(self) -> None:
        self.model.step()
        if not self.model.was_step_applied():
            raise RuntimeError("DeepSpeed skipped a step whose gradients were finite on every rank")

    def drop_gradients(self, after_backward: bool) -> None:
        """Discards this step's gradients. Before backward nothing was accumulated; after it, ZeRO's overflow
        path drops the reduced partitions and resets its accumulation counters (in fp32, with no loss
        scaling, it only runs when the gradient norm is invalid, which is why we are here)."""
        if not after_backward or self.stage == 0:
            self.model.zero_grad()
            return
        self.model.step()
        if self.model.was_step_applied():
            raise RuntimeError("DeepSpeed applied a step whose gradients were non-finite")

    # ------------------------------------------------------------------ checkpoints

    def save(self, folder: Path) -> None:
        """Collective: every rank writes its DeepSpeed shards and its part of the target into `folder`."""
        self.model.save_checkpoint(str(folder), tag=DEEPSPEED_TAG, save_latest=False)
        self.target.save(Path(folder), self.rank)

    def load(self, folder: Path) -> None:
        folder = Path(folder)
        if not (folder / DEEPSPEED_TAG).is_dir():
            raise ValueError(
                f"{folder}: no DeepSpeed checkpoint (expected the folder {folder / DEEPSPEED_TAG})"
            )
        path, _ = self.model.load_checkpoint(
            str(folder), tag=DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise ValueError(f"{folder / DEEPSPEED_TAG}: DeepSpeed could not load this checkpoint")
        self.target.load(folder, self.rank)

    @torch.no_grad()
    def load_weights(self, state: dict) -> None:
        """Encoder, predictor and target weights from a plain model file (`vjepa export`, `train.init_from`);
        the optimizer starts fresh. Fixed position tables are rebuilt for this run, so saved ones are dropped.
        Writes reach every copy DeepSpeed keeps: the (ZeRO-3: partitioned) weights and the fp32 masters."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        for module, key in ((self.module.encoder, "encoder"), (self.module.predictor, "predictor")):
            weights = checked_weights(module, state[key], f"train.init_from: '{key}'")
            params = dict(module.named_parameters())
            with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0):
                for name, p in params.items():
                    p.data.copy_(weights[name])
            if self.stage > 0:
                for name, p in params.items():
                    safe_set_full_fp32_param(p, weights[name].float())
        self.target.load_full(state["target_encoder"], "train.init_from: 'target_encoder'")

    def load_phase_start(self, folder: Path) -> None:
        """A new phase of `train.phases` from checkpoint `folder`, the end of the phase before: weights, fp32
        masters, the AdamW state and the target carry over (the step and the data start afresh); fixed
        position tables (buffers) stay the ones built for this phase's clip size. Same number of processes."""
        folder = Path(folder)

        def parameters_only(src: dict, dst: nn.Module) -> None:
            kept = {k: v for k, v in src.items() if not k.endswith("pos_embed")}
            result = dst.load_state_dict(kept, strict=False)
            missing = [k for k in result.missing_keys if not k.endswith("pos_embed")]
            if missing or result.unexpected_keys:
                raise ValueError(
                    f"checkpoint {folder}: weights do not fit: missing {missing[:8]}, "
                    f"unexpected {result.unexpected_keys[:8]}"
                )

        path, _ = self.model.load_checkpoint(
            str(folder),
            tag=DEEPSPEED_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
            custom_load_fn=parameters_only,
        )
        if path is None:
            raise ValueError(f"{folder / DEEPSPEED_TAG}: DeepSpeed could not load this checkpoint")
        if isinstance(self.target, PartitionedTarget):  # fp32 shards of the parameters; buffers stay
            zero_ema.load_shard(self.target.module, folder, self.rank, self.world_size, buffers=False)
        else:
            state = read_torch_file(
                folder / TARGET_FILE, what=f"checkpoint {folder}", map_location=self.device
            )
            self.target.load_full(state, f"checkpoint {folder}: 'target_encoder'")

    def close(self) -> None:
        """Releases DeepSpeed's hooks and buffers (before the process group goes away)."""
        if isinstance(self.target, PartitionedTarget):
            self.target.close()
        if hasattr(self.model, "destroy"):
            self.model.destroy()

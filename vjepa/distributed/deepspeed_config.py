"""DeepSpeed's config, derived from ours: one source of truth for batch size, clipping, ZeRO stage and
precision, with `dist.deepspeed` raw keys deep-merged on top and checked against ours.

    train_micro_batch_size_per_gpu = data.batch_size, gradient_accumulation_steps = optim.accumulate,
    train_batch_size = data.batch_size x optim.accumulate x world size,
    gradient_clipping = optim.grad_clip (0 = off), zero_optimization.stage = dist.zero_stage,
    torch_autocast {enabled, bfloat16} when train.precision = bf16 (fp32 weights; never DeepSpeed's bf16 mode)
"""

from __future__ import annotations

from typing import Any

from data_pipelines import check
from vjepa.config import DistConfig
from vjepa.utils import deep_merge


def _require(ok: bool, key: str, message: str) -> None:
    check(ok, f"dist.deepspeed.{key}", message)


def deepspeed_config(
    dist: DistConfig,
    *,
    world_size: int,
    micro_batch: int,
    grad_clip: float | None,
    precision: str,
    accumulate: int = 1,
) -> dict[str, Any]:
    """DeepSpeed's config derived from ours (`micro_batch` = data.batch_size, `accumulate` = optim.accumulate,
    `grad_clip` = optim.grad_clip, `precision` = train.precision), with `dist.deepspeed` raw keys deep-merged
    on top and checked."""
    global_batch = micro_batch * accumulate * world_size
    derived: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulate,
        "train_batch_size": global_batch,
        "gradient_clipping": float(grad_clip or 0.0),
        "zero_optimization": {"stage": dist.zero_stage},
        "steps_per_print": 2**31 - 1,  # progress is logged by our trainer
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        derived["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    ds = deep_merge(derived, dist.deepspeed)
    _require(
        not ds.get("fp16", {}).get("enabled", False), "fp16", "fp16 is not supported; use train.precision"
    )
    _require(
        not ds.get("bf16", {}).get("enabled", False),
        "bf16",
        "DeepSpeed's bf16 mode casts the weights (and the EMA source) to bf16; train.precision=bf16 uses its "
        "torch_autocast section and keeps fp32 weights",
    )
    for key in ("optimizer", "scheduler"):
        _require(key not in ds, key, "the engine passes torch AdamW and sets lr/wd per step from optim.*")
    _require(
        ds["zero_optimization"].get("stage") == dist.zero_stage,
        "zero_optimization.stage",
        f"disagrees with dist.zero_stage={dist.zero_stage}",
    )
    _require(
        ds["train_micro_batch_size_per_gpu"] == micro_batch,
        "train_micro_batch_size_per_gpu",
        f"must equal data.batch_size={micro_batch}",
    )
    _require(
        ds["gradient_accumulation_steps"] == accumulate,
        "gradient_accumulation_steps",
        f"must equal optim.accumulate={accumulate} (set optim.accumulate instead)",
    )
    _require(
        ds["train_batch_size"] == global_batch,
        "train_batch_size",
        f"must equal data.batch_size x optim.accumulate x world size = {global_batch}",
    )
    _require(
        float(ds["gradient_clipping"]) == float(grad_clip or 0.0),
        "gradient_clipping",
        "set optim.grad_clip instead",
    )
    return ds

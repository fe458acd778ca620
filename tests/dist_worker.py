"""Worker for tests/test_distributed.py. Runs one scenario in one process: under `torchrun --nproc_per_node 2`
(gloo, CPU) for DDP / DeepSpeed, or imported in-process for the single-process reference.

Every run sees the same deterministic GLOBAL batches: GLOBAL_BATCH clips with fixed masks, every sample
keeping exactly half of the tokens as context and the other half as targets. Rank r of W takes rows
r*B:(r+1)*B (B = GLOBAL_BATCH / W). Because every sample has the same number of valid target tokens, the
mean of the per-rank losses equals the loss over the global batch, and gradient averaging over ranks gives
the global-batch gradient: the distributed runs must reproduce the single-process run.

    torchrun --nproc_per_node 2 tests/dist_worker.py --out RESULT.json --backend deepspeed --stage 3 ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_pipelines.batch import MaskBatch, VideoBatch  # noqa: E402
from data_pipelines.transforms import normalize  # noqa: E402
from vjepa.config import Config, load_config, save_config  # noqa: E402
from vjepa.distributed.env import read_env  # noqa: E402
from vjepa.objective import target_features  # noqa: E402
from vjepa.train.optim import set_lr_wd  # noqa: E402
from vjepa.train.trainer import build_models, make_engine, train_step  # noqa: E402

GLOBAL_BATCH = 4
FRAMES, CROP = 4, 32  # vit_test, patch 16, tubelet 2 -> grid 2 x 2 x 2 = 8 tokens
TOKENS = 8


def make_config(
    backend: str, stage: int, precision: str, world: int, out_dir: str, extra: list[str]
) -> Config:
    return load_config(
        None,
        [
            "model.name=vit_test",
            "model.pred_width=32",
            "model.pred_depth=2",
            "model.pred_heads=4",
            f"data.frames_per_clip={FRAMES}",
            f"data.crop_size={CROP}",
            f"data.batch_size={GLOBAL_BATCH // world}",
            "optim.start_lr=1e-4",
            "optim.lr=2e-3",
            "optim.warmup_steps=2",
            "optim.weight_decay=0.05",
            "optim.final_weight_decay=0.4",
            "optim.ema_start=0.9",
            "optim.ema_end=0.95",
            "optim.grad_clip=0.5",
            f"train.precision={precision}",
            "train.device=cpu",
            f"train.out_dir={out_dir}",
            f"dist.backend={backend}",
            f"dist.zero_stage={stage}",
            *extra,
        ],
    )


def global_batch(step: int, num_masks: int) -> VideoBatch:
    """The fixed global batch of `step`: random clips, per-sample random halves as context/target."""
    g = torch.Generator().manual_seed(1000 + step)
    clips = torch.randint(0, 256, (GLOBAL_BATCH, 3, FRAMES, CROP, CROP), generator=g, dtype=torch.uint8)
    masks = []
    for _ in range(num_masks):
        perms = [torch.randperm(TOKENS, generator=g) for _ in range(GLOBAL_BATCH)]
        context = [p[: TOKENS // 2].sort().values for p in perms]
        target = [p[TOKENS // 2 :].sort().values for p in perms]
        masks.append(MaskBatch.from_lists(context, target))
    return VideoBatch(clips=clips, labels=torch.full((GLOBAL_BATCH,), -1), masks=masks)


def rank_slice(batch: VideoBatch, rank: int, world: int) -> VideoBatch:
    b = GLOBAL_BATCH // world
    rows = slice(rank * b, (rank + 1) * b)
    masks = [
        MaskBatch(m.context_idx[rows], m.context_valid[rows], m.target_idx[rows], m.target_valid[rows])
        for m in batch.masks
    ]
    return VideoBatch(clips=batch.clips[rows], labels=batch.labels[rows], masks=masks)


def probe_clips() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return normalize(torch.randint(0, 256, (2, 3, FRAMES, CROP, CROP), generator=g, dtype=torch.uint8))


def mean_over_ranks(value: float) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


@torch.no_grad()
def probe_features(engine) -> dict[str, list]:
    """Encoder and EMA-target features of the probe clips (collective under ZeRO-3: the hooks gather)."""
    clips = probe_clips()
    return {"encoder": engine.module.encoder(clips).tolist(), "target": engine.target.module(clips).tolist()}


def run_steps(engine, cfg: Config, steps: range, rank: int, world: int) -> list[dict]:
    out = []
    for step in steps:
        batch = rank_slice(global_batch(step, len(cfg.mask)), rank, world)
        r = train_step(engine, batch, step, cfg, torch.device("cpu"))
        out.append({"loss": mean_over_ranks(r.loss), "grad_norm": r.grad_norm, "applied": r.applied})
    return out


def optimizer_groups(engine) -> list[dict]:
    """lr / weight decay of the param groups of the torch AdamW that really updates the weights."""
    real = engine.optimizer
    while not isinstance(real, torch.optim.AdamW):
        real = real.optimizer
    return [
        {"lr": g["lr"], "weight_decay": g["weight_decay"], "apply_wd": g["apply_wd"]}
        for g in real.param_groups
    ]


def held_bytes(engine) -> int:
    """Bytes of distinct storages holding parameters (ZeRO-3: this rank's partitions and anything left
    gathered), fp32 masters and optimizer state, for the trained model and the EMA target."""
    storages: dict[int, int] = {}

    def add(t: torch.Tensor | None) -> None:
        if isinstance(t, torch.Tensor) and t.numel() > 0:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()

    for p in list(engine.module.parameters()) + list(engine.target.module.parameters()):
        add(p.data)
        add(getattr(p, "ds_tensor", None))
    real = engine.optimizer
    while not isinstance(real, torch.optim.AdamW):
        real = real.optimizer
    for group in real.param_groups:
        for p in group["params"]:
            add(p)
    for state in real.state.values():
        for v in state.values():
            add(v)
    return sum(storages.values())


def nonfinite_checks(engine, cfg: Config, step: int, rank: int, world: int) -> dict:
    """A non-finite loss on rank 1 only, then non-finite gradients (finite loss) on rank 1 only: both steps
    must be skipped on every rank and leave the weights untouched; the next step trains normally."""
    before = probe_features(engine)
    batch = rank_slice(global_batch(step, len(cfg.mask)), rank, world)
    bad = rank == world - 1
    poison = None
    if bad:  # NaN targets -> NaN loss on this rank only
        poison = engine.target.module.register_forward_hook(lambda module, args, out: out * float("nan"))
    r_loss = train_step(engine, batch, step, cfg, torch.device("cpu"))
    if poison is not None:
        poison.remove()
    param = next(p for n, p in engine.module.encoder.named_parameters() if n.endswith("norm.weight"))
    handle = param.register_hook(lambda g: g * float("nan")) if bad else None
    r_grad = train_step(engine, batch, step, cfg, torch.device("cpu"))
    if handle is not None:
        handle.remove()
    after = probe_features(engine)
    r_next = train_step(engine, batch, step, cfg, torch.device("cpu"))
    return {
        "loss_skip_applied": r_loss.applied,
        "grad_skip_applied": r_grad.applied,
        "grad_skip_norm": r_grad.grad_norm,
        "unchanged": before == after,
        "next_applied": r_next.applied,
        "next_loss": mean_over_ranks(r_next.loss),
    }


class Clock:
    """Prints phase timings (rank 0) so a slow scenario shows where the time goes."""

    def __init__(self, rank: int) -> None:
        self.rank, self.t = rank, time.perf_counter()

    def __call__(self, label: str) -> None:
        now = time.perf_counter()
        if self.rank == 0:
            print(f"[dist_worker] {label}: {now - self.t:.2f}s", flush=True)
        self.t = now


def scenario(args: argparse.Namespace) -> dict:
    from vjepa.checkpoint import CheckpointManager
    from vjepa.distributed.process_group import start_process_group

    env = read_env()
    world, rank = env.world_size, env.rank
    clock = Clock(rank)
    cfg = make_config(args.backend, args.stage, args.precision, world, args.workdir, args.extra)
    if args.backend != "single":
        start_process_group(env, torch.device("cpu"))
    torch.manual_seed(cfg.train.seed + rank)  # as the trainer does: ranks start different, engines broadcast
    engine = make_engine(cfg, build_models(cfg, torch.device("cpu")), torch.device("cpu"), env)
    ckpts = CheckpointManager(
        Path(args.workdir) / "checkpoints", keep_last=3, rank=rank, barrier=engine.barrier
    )
    clock("engine")

    def save(step: int) -> Path:
        def write(folder: Path) -> None:
            engine.save(folder)
            if rank == 0:
                save_config(cfg, folder / "config.yaml")

        return ckpts.save(step, write)

    half = args.steps // 2
    records = run_steps(engine, cfg, range(half), rank, world)
    result: dict = {"world_size": world, "rank": rank, "held_bytes": held_bytes(engine)}
    clock("first half")
    if args.resume:
        save(half)
        clock("save")
    records += run_steps(engine, cfg, range(half, args.steps), rank, world)
    result.update(records=records, groups=optimizer_groups(engine), features=probe_features(engine))
    if dist.is_initialized():
        sizes = [None] * world
        dist.all_gather_object(sizes, result["held_bytes"])
        result["held_bytes_per_rank"] = sizes
    clock("second half")
    if args.export:
        from vjepa.distributed.export import export_checkpoint

        final = save(args.steps)
        exported = Path(args.workdir) / "export.pt"
        if rank == 0:
            export_checkpoint(final, exported)
        engine.barrier()
        clock("save + export")
        result["export"] = str(exported)
        fresh = make_engine(cfg, build_models(cfg, torch.device("cpu")), torch.device("cpu"), env)
        fresh.load_weights(torch.load(exported, weights_only=True))
        result["load_weights_features"] = probe_features(fresh)
        clips = normalize(global_batch(0, len(cfg.mask)).clips[:1])
        masks = rank_slice(global_batch(0, len(cfg.mask)), 0, GLOBAL_BATCH).masks
        out = fresh.model(clips, masks, target_features(fresh.target.module, clips))
        fresh.backward(out.loss)
        set_lr_wd(fresh.optimizer, 0.0, 0.0)
        fresh.step()  # lr 0: weights come back from the fp32 masters, which must hold the loaded values
        result["load_weights_after_step"] = probe_features(fresh)
        fresh.close()
        clock("load_weights")
    if args.nonfinite:
        result["nonfinite"] = nonfinite_checks(engine, cfg, args.steps, rank, world)
        clock("nonfinite")
    if args.resume:
        engine.close()
        torch.manual_seed(12345 + rank)  # a fresh engine starts from other weights; the checkpoint must win
        resumed = make_engine(cfg, build_models(cfg, torch.device("cpu")), torch.device("cpu"), env)
        resumed.load(ckpts.root / CheckpointManager.step_dir_name(half))
        result["resumed_records"] = run_steps(resumed, cfg, range(half, args.steps), rank, world)
        result["resumed_features"] = probe_features(resumed)
        resumed.close()
        clock("resume")
    else:
        engine.close()
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--backend", default="single")
    p.add_argument("--stage", type=int, default=0)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", action="store_true")
    p.add_argument("--nonfinite", action="store_true")
    p.add_argument("--extra", nargs="*", default=[], help="more config overrides")
    return p.parse_args(argv)


def run_then_exit(body: Callable[[], None]) -> None:
    """A worker's whole run: `body()`, then the process group stopped and the process ended at once (exit 1
    and the traceback printed when `body` raised)."""
    code = 0
    try:
        body()
    except Exception:
        traceback.print_exc()
        code = 1
    finally:
        from vjepa.distributed.process_group import stop_process_group

        try:
            stop_process_group()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # ZeRO-3 processes can abort in interpreter teardown; skip it once all is written


def main() -> None:
    args = parse()

    def body() -> None:
        result = scenario(args)
        if result["rank"] == 0:
            Path(args.out).write_text(json.dumps(result))

    run_then_exit(body)


if __name__ == "__main__":
    main()

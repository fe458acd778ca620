"""Worker for tests/test_accumulate.py: one optimizer step on a batch of 8 clips, and the same step as
`optim.accumulate=4` micro-batches of 2 (the same clips and masks, sliced), on fresh engines with the same
initial weights; then a step skipped as a loss spike and one more step. Imported for one process, or run
under `torchrun --nproc_per_node 2` (gloo, CPU), where each rank takes its own batch of 8: accumulating
4 x 2 on 2 ranks must equal 1 x 8 on 2 ranks.

The samples' target sets differ in size (1 to 6 of the 8 tokens), so the micro-batches have different
numbers of target rows and a plain average of their losses is NOT the batch's loss.

    torchrun --nproc_per_node 2 tests/accum_worker.py --out RESULT.json --backend deepspeed --stage 2
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dist_worker  # noqa: E402  (puts the repository root on sys.path)

from data_pipelines.batch import MaskBatch, VideoBatch  # noqa: E402
from vjepa.config import Config  # noqa: E402
from vjepa.distributed.env import DistEnv, read_env  # noqa: E402
from vjepa.train.trainer import build_models, make_engine, train_step  # noqa: E402

BATCH, ACCUMULATE = 8, 4
CPU = torch.device("cpu")


def make_config(backend: str, stage: int, accumulate: int, out_dir: str) -> Config:
    extra = [
        f"data.batch_size={BATCH // accumulate}",
        f"optim.accumulate={accumulate}",
        "optim.start_lr=2e-3",
    ]
    return dist_worker.make_config(backend, stage, "fp32", 1, out_dir, extra)


def uneven_batch(seed: int, num_masks: int) -> VideoBatch:
    """BATCH random clips; per sample and mask configuration, a random 1-6 of the 8 tokens are targets and
    the rest context."""
    g = torch.Generator().manual_seed(seed)
    shape = (BATCH, 3, dist_worker.FRAMES, dist_worker.CROP, dist_worker.CROP)
    clips = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    masks = []
    for _ in range(num_masks):
        perms = [torch.randperm(dist_worker.TOKENS, generator=g) for _ in range(BATCH)]
        sizes = torch.randint(1, 7, (BATCH,), generator=g).tolist()
        target = [p[:n].sort().values for p, n in zip(perms, sizes)]
        context = [p[n:].sort().values for p, n in zip(perms, sizes)]
        masks.append(MaskBatch.from_lists(context, target))
    return VideoBatch(clips=clips, labels=torch.full((BATCH,), -1), masks=masks)


def split(batch: VideoBatch, parts: int) -> list[VideoBatch]:
    """The batch's rows in `parts` consecutive micro-batches (clips and every MaskBatch sliced alike)."""
    b = batch.clips.shape[0] // parts
    out = []
    for i in range(parts):
        rows = slice(i * b, (i + 1) * b)
        masks = [
            MaskBatch(m.context_idx[rows], m.context_valid[rows], m.target_idx[rows], m.target_valid[rows])
            for m in batch.masks
        ]
        out.append(VideoBatch(clips=batch.clips[rows], labels=batch.labels[rows], masks=masks))
    return out


def weights(engine) -> dict[str, torch.Tensor]:
    """Full copies of the trained and the target weights (ZeRO-3: gathered from the ranks' partitions)."""
    named = [(f"model.{n}", p) for n, p in engine.module.named_parameters()]
    named += [(f"target.{n}", p) for n, p in engine.target.module.named_parameters()]
    gather = nullcontext()
    if any(hasattr(p, "ds_id") for _, p in named):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([p for _, p in named])
    with gather:
        return {n: p.detach().clone() for n, p in named}


def one_step(backend: str, stage: int, accumulate: int, env: DistEnv, workdir: str) -> dict:
    """Fresh engine (rank 0's seeded weights); on this rank's batches: step 0, then step 1 skipped as a loss
    spike (every loss is above max_loss=0), then step 1 again -> results and weights along the way."""
    cfg = make_config(backend, stage, accumulate, workdir)
    torch.manual_seed(cfg.train.seed + env.rank)
    engine = make_engine(cfg, build_models(cfg, CPU), CPU, env)
    first, second = (split(uneven_batch(s + env.rank, len(cfg.mask)), accumulate) for s in (100, 200))
    out = {"before": weights(engine), "result": train_step(engine, first, 0, cfg, CPU)}
    out["after"] = weights(engine)
    out["spike"] = train_step(engine, second, 1, cfg, CPU, max_loss=0.0)
    out["after_spike"] = weights(engine)
    out["next"] = train_step(engine, second, 1, cfg, CPU)
    out["final"] = weights(engine)
    engine.close()
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a if k.startswith(prefix))


def compare(backend: str, stage: int, env: DistEnv, workdir: str) -> dict:
    """One step on the batch of 8 vs 4 accumulated micro-batches of 2, on this rank; then a skipped step
    and one more step on each."""
    whole = one_step(backend, stage, 1, env, workdir)
    accum = one_step(backend, stage, ACCUMULATE, env, workdir)
    pair = (whole, accum)
    return {
        "rank": env.rank,
        "applied": [r["result"].applied for r in pair],
        "loss": [r["result"].loss for r in pair],
        "loss_per_mask": [r["result"].loss_per_mask for r in pair],
        "grad_norm": [r["result"].grad_norm for r in pair],
        "moved": max_diff(whole["after"], whole["before"], "model."),  # the step really changed the weights
        "model_diff": max_diff(whole["after"], accum["after"], "model."),
        "target_diff": max_diff(whole["after"], accum["after"], "target."),
        "spike_skipped_for": [r["spike"].skipped_for for r in pair],
        "spike_moved": [max_diff(r["after_spike"], r["after"]) for r in pair],
        "next_applied": [r["next"].applied for r in pair],
        "next_loss": [r["next"].loss for r in pair],
        "final_diff": max_diff(whole["final"], accum["final"]),  # no gradient left over from the skipped step
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--stage", type=int, default=0)
    args = p.parse_args()

    def body() -> None:
        from vjepa.distributed.process_group import start_process_group

        env = read_env()
        start_process_group(env, CPU)
        mine = compare(args.backend, args.stage, env, args.workdir)
        every = [None] * env.world_size
        dist.all_gather_object(every, mine)
        if env.rank == 0:
            Path(args.out).write_text(json.dumps({"world_size": env.world_size, "ranks": every}))

    dist_worker.run_then_exit(body)


if __name__ == "__main__":
    main()

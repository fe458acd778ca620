"""Loader throughput: our loader against a bare decord loop over the same files, in the same run.

The bare loop reads each sample's bytes, opens them with decord and reads one clip's frame indices (the
same sampling rule, frames and step as the loader), nothing else: no crop, flip, masks, batching or worker
processes. Our loader does the whole job (shuffled plan, decode, random resized crop + flip, masks drawn in
the workers, uint8 batches through the DataLoader queues). One JSON line:

    python benchmarks/loader.py --data DIR --workers 1 --batch 8 --frames 16 --crop 112 --json

`--make N` first writes N synthetic videos into DIR (when it holds no shards), with keyframe interval
`--gop`, so that the effect of the interval can be measured:

    python benchmarks/loader.py --data /tmp/gop16 --make 64 --gop 16 --json
    python benchmarks/loader.py --data /tmp/gop250 --make 64 --gop 250 --json

`ratio` compares whole passes, our worker start-up included (a DataLoader worker is forked per pass, and
the first batch waits for its first 8 decodes); `steady_ratio` counts our loader from each pass's first batch
on, as a training run that iterates one long stream sees it.

`--decoder pyav` runs our loader with PyAV on one thread per decode (the bare loop stays decord; see
`benchmarks/decode.py` for the decoders alone).

On a busy machine, `--passes P --rounds R` give steadier figures: R rounds alternate the two (order flipped
every round), each running P passes over the data.

A data set with fewer videos than `--batch` (per pass) runs with the batch fitted to it, said on stderr and
in the JSON (`batch`, `batch_asked`).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from data_pipelines.config import DataConfig, SourceConfig
from data_pipelines.encode import encode_video
from data_pipelines.loader import build_loader
from data_pipelines.masking import default_mask_specs
from data_pipelines.masking.generator import MaskGenerator
from data_pipelines.sampling import clip_indices
from data_pipelines.shard_writer import ShardWriter
from data_pipelines.sources import SampleReader, load_sources
from data_pipelines.synthetic import render_video


def make_data(out: Path, *, videos: int, frames: int, size: int, gop: int, seed: int = 0) -> None:
    """`videos` synthetic motion videos (30 fps, keyframe every `gop` frames) in shards of 16."""
    rng = np.random.default_rng(seed)
    with ShardWriter(out, shard_size=16) as writer:
        for i in range(videos):
            label = i % 4
            clip = render_video(label, frames=frames, size=size, rng=rng)
            writer.write(f"v{i:05d}", encode_video(clip, fps=30.0, gop=gop), meta={"label": label})


def bare_loop(cfg: DataConfig, passes: int) -> tuple[int, float]:
    """(clips, seconds): index the shards, then read bytes, open with decord, read one clip's frames; nothing
    more. The shard indexing is timed, as it is in `loader_pass` (build_loader indexes them)."""
    import decord

    start = time.perf_counter()
    reader = SampleReader()
    units = [(u, e) for source in load_sources(cfg.sources) for u in source.units for e in u.samples] * passes
    rng = np.random.default_rng(0)
    clips = 0
    for unit, entry in units:
        try:
            video = decord.VideoReader(io.BytesIO(reader.read(unit, entry).data), num_threads=1)
            idx = clip_indices(
                len(video),
                video.get_avg_fps(),
                frames=cfg.frames_per_clip,
                frame_step=cfg.frame_step,
                fps=None,
                num_clips=1,
                pad=True,
                rng=rng,
            )
            video.get_batch(idx[0].tolist()).asnumpy()
            del video
            clips += 1
        except (decord.DECORDError, RuntimeError):
            continue
    return clips, time.perf_counter() - start


def loader_pass(cfg: DataConfig, *, masks: bool) -> tuple[int, int, float, int, float]:
    """(clips, skipped, seconds, clips after the first batch, seconds after the first batch) for one epoch of
    our loader, worker start-up included in `seconds`."""
    grid = (cfg.frames_per_clip // 2, cfg.crop_size // 16, cfg.crop_size // 16)
    generator = MaskGenerator(default_mask_specs(), grid=grid, seed=0) if masks else None
    start = time.perf_counter()
    loader = build_loader(cfg, mask_generator=generator, seed=0)
    clips, first, first_at = 0, 0, 0.0
    for batch in loader:
        clips += batch.num_clips
        if not first:
            first, first_at = clips, time.perf_counter()
    return (
        clips,
        loader.stats()["skipped"],
        time.perf_counter() - start,
        clips - first,
        time.perf_counter() - first_at,
    )


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have exited (the loader's workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def fit_batch(sources: list[SourceConfig], batch: int) -> int:
    """`batch`, or the number of samples an epoch holds when that is smaller (said on stderr)."""
    samples = sum(round(s.weight) * s.num_samples for s in load_sources(sources))
    if samples >= batch:
        return batch
    print(
        f"the data holds {samples} samples per epoch, fewer than --batch {batch}: measuring with batches of "
        f"{samples}",
        file=sys.stderr,
    )
    return samples


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="shard folder, glob or brace pattern")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--frame-step", type=int, default=4)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    p.add_argument("--no-masks", action="store_true", help="do not draw masks in the workers")
    p.add_argument("--passes", type=int, default=1, help="passes over the data per round")
    p.add_argument("--rounds", type=int, default=1, help="rounds of (bare loop, loader), alternating order")
    p.add_argument("--make", type=int, default=0, help="write this many synthetic videos into --data first")
    p.add_argument("--gop", type=int, default=16, help="keyframe interval of --make videos")
    p.add_argument("--video-frames", type=int, default=300, help="frames per --make video")
    p.add_argument("--size", type=int, default=128, help="frame size of --make videos")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args(argv)

    data = Path(args.data)
    if args.make and not list(data.glob("*.tar")):
        make_data(data, videos=args.make, frames=args.video_frames, size=args.size, gop=args.gop)
    sources = [SourceConfig(path=args.data, kind="shards", weight=float(args.passes))]  # P x every shard
    batch = fit_batch(sources, args.batch)
    cfg = DataConfig(
        dataset="files",
        sources=sources,
        frames_per_clip=args.frames,
        frame_step=args.frame_step,
        crop_size=args.crop,
        batch_size=batch,
        num_workers=args.workers,
        decoder=args.decoder,
        max_skip_fraction=1.0,
    )
    # alternate the two in rounds (order flipped every round) so both see the same machine load
    bare_clips = clips = skipped = steady_clips = 0
    bare_s = loader_s = steady_s = bare_cpu = loader_cpu = 0.0
    for r in range(args.rounds):
        for which in ("bare", "loader") if r % 2 == 0 else ("loader", "bare"):
            cpu = cpu_seconds()
            if which == "bare":
                n, s = bare_loop(cfg, args.passes)
                bare_clips, bare_s = bare_clips + n, bare_s + s
                bare_cpu += cpu_seconds() - cpu
            else:
                n, k, s, n_after, s_after = loader_pass(cfg, masks=not args.no_masks)
                loader_cpu += cpu_seconds() - cpu
                clips, skipped, loader_s = clips + n, skipped + k, loader_s + s
                steady_clips, steady_s = steady_clips + n_after, steady_s + s_after
    result = {
        "clips_per_s": round(clips / loader_s, 2),
        "bare_clips_per_s": round(bare_clips / bare_s, 2),
        "ratio": round((clips / loader_s) / (bare_clips / bare_s), 3),
        # after each pass's first batch: without the worker start-up, which a training run pays once
        "steady_clips_per_s": round(steady_clips / steady_s, 2) if steady_clips else None,
        "steady_ratio": round((steady_clips / steady_s) / (bare_clips / bare_s), 3) if steady_clips else None,
        # CPU per clip, every thread and process (the worker's counted once it has exited)
        "cpu_ms_per_clip": round(1000 * loader_cpu / clips, 2) if clips else None,
        "bare_cpu_ms_per_clip": round(1000 * bare_cpu / bare_clips, 2) if bare_clips else None,
        "clips": clips,
        "bare_clips": bare_clips,
        "skipped": skipped,
        "workers": args.workers,
        "passes": args.passes,
        "rounds": args.rounds,
        "batch": batch,
        "batch_asked": args.batch,
        "frames": args.frames,
        "frame_step": args.frame_step,
        "crop": args.crop,
        "masks": not args.no_masks,
        "seconds": round(loader_s, 3),
        "bare_seconds": round(bare_s, 3),
        "data": args.data,
    }
    if not args.json:
        print(f"loader {result['clips_per_s']} clips/s vs bare decord {result['bare_clips_per_s']} clips/s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

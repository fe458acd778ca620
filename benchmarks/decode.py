"""Decoding one clip, decoder against decoder, in the same run: decord, PyAV on the calling thread (the
loader's setting) and PyAV with FFmpeg's automatic thread counts (PyAV's own default). One JSON line:

    python benchmarks/decode.py --data /tmp/lb16 --json
    python benchmarks/decode.py --data /tmp/lb256 --make 16 --size 256 --json   # writes the videos first

Each decoder reads the same clips: the first `--videos` samples of the shards, at `--starts` places each
(spread over the video), `--frames` frames `--frame-step` apart, the way the loader reads a training clip.
Rounds alternate the decoders (order reversed every round). Per clip: wall time, process CPU time (every
thread: decord and threaded FFmpeg use more than one) and voluntary context switches of the calling thread
(how often it waited for another thread). `cpu_ratio_*` are the PyAV-on-one-thread CPU per clip against
the other two.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.loader import make_data
from data_pipelines.config import SourceConfig
from data_pipelines.decode import DecodedVideo, IndexPicker, decode_decord, decode_pyav
from data_pipelines.sources import SampleReader, load_sources

Decode = Callable[[bytes, IndexPicker], DecodedVideo]


def decoders() -> dict[str, Decode]:
    return {
        "decord": decode_decord,
        "pyav_1_thread": decode_pyav,
        "pyav_auto_threads": lambda data, pick: decode_pyav(data, pick, threads=0),
    }


def clip_pickers(starts: int, frames: int, step: int) -> list[IndexPicker]:
    """`starts` pickers, the clip beginning at 0, ..., (starts - 1) / starts of the video's free span."""
    span = (frames - 1) * step + 1

    def at(fraction: float) -> IndexPicker:
        def pick(num_frames: int, fps: float) -> np.ndarray:
            first = int(fraction * max(0, num_frames - span))
            return np.minimum(first + step * np.arange(frames), num_frames - 1)[None]  # [1, T]

        return pick

    return [at(i / starts) for i in range(starts)]


def timed_pass(decode: Decode, videos: list[bytes], pickers: list[IndexPicker]) -> tuple[float, float, int]:
    """(wall s, CPU s, voluntary context switches of this thread) for every (video, picker) clip."""
    r0 = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    t0, c0 = time.perf_counter(), time.process_time()
    for data in videos:
        for pick in pickers:
            decode(data, pick)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - r0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="shard folder")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--starts", type=int, default=3)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--frame-step", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--make", type=int, default=0, help="write this many synthetic videos into --data first")
    p.add_argument("--size", type=int, default=128, help="frame size of --make videos")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args(argv)

    if args.make and not list(Path(args.data).glob("*.tar")):
        make_data(Path(args.data), videos=args.make, frames=300, size=args.size, gop=16)
    reader = SampleReader()
    samples = [
        (u, e)
        for s in load_sources([SourceConfig(path=args.data, kind="shards")])
        for u in s.units
        for e in u.samples
    ][: args.videos]
    videos = [reader.read(unit, entry).data for unit, entry in samples]
    pickers = clip_pickers(args.starts, args.frames, args.frame_step)
    fns = decoders()
    for decode in fns.values():  # first use: imports, codec set-up
        decode(videos[0], pickers[0])
    totals = {name: [0.0, 0.0, 0] for name in fns}
    names = list(fns)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu, waits = timed_pass(fns[name], videos, pickers)
            totals[name][0] += wall
            totals[name][1] += cpu
            totals[name][2] += waits
    clips = args.rounds * len(videos) * len(pickers)
    per_clip = {
        name: {
            "wall_ms": round(1000 * wall / clips, 2),
            "cpu_ms": round(1000 * cpu / clips, 2),
            "waits": round(waits / clips, 1),
        }
        for name, (wall, cpu, waits) in totals.items()
    }
    one = per_clip["pyav_1_thread"]["cpu_ms"]
    result = {
        **per_clip,
        "cpu_ratio_decord": round(per_clip["decord"]["cpu_ms"] / one, 3),
        "cpu_ratio_pyav_auto": round(per_clip["pyav_auto_threads"]["cpu_ms"] / one, 3),
        "clips": clips,
        "videos": len(videos),
        "frames": args.frames,
        "frame_step": args.frame_step,
        "data": args.data,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""The built-in dataset: rendered videos whose class can only be told from motion over time.

Shape legend: T frames, H = W = size pixels; videos are [T, H, W, 3] uint8 RGB.

Every class draws its first frame from the same distribution: the target object's shape, two-tone colours,
size, orientation and position (uniform over the frame) do not depend on the label. The label only decides
how the object moves afterwards. Positions wrap around the frame edges (a torus), so an object can start
anywhere and still travel far. At size 64 (all distances scale with `size`):

- move_right/left/down/up: 28-48 px over the clip, 24-52 px with the drift (1.5-3 patches of 16 px);
- right_then_back, up_then_back: out 26-36 px by mid-clip (at least 24 with the drift), then back;
- rotate_cw/ccw: 180-300 degrees (the object's tips sweep 20+ px);
- grow/shrink: size x2-2.5 or /2-2.5.

Every class also drifts up to 4 px and turns up to 15 degrees. Distractors (1-3 small blobs wandering at
random) and a textured, slowly drifting background make single pixels and frame differences less trivial.

Those are the defaults: `SceneParams` makes each of them configurable (the label set, displacements, turn,
size change, object sizes and shapes, distractors, backgrounds), so a protocol can be checked on settings it
was not tuned on. `SceneParams()` renders exactly the default videos.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipelines.encode import encode_video
from data_pipelines.shard_writer import ShardWriter

__all__ = [
    "BACKGROUNDS",
    "CLASS_NAMES",
    "SceneParams",
    "Trajectory",
    "object_trajectory",
    "render_scene",
    "render_video",
    "write_synthetic_dataset",
]

CLASS_NAMES: list[str] = [
    "move_right",
    "move_left",
    "move_down",
    "move_up",
    "rotate_cw",
    "rotate_ccw",
    "grow",
    "shrink",
    "right_then_back",
    "up_then_back",
]
_DIRECTION = {  # (dy, dx) in image coordinates, y pointing down
    "move_right": (0.0, 1.0),
    "move_left": (0.0, -1.0),
    "move_down": (1.0, 0.0),
    "move_up": (-1.0, 0.0),
    "right_then_back": (0.0, 1.0),
    "up_then_back": (-1.0, 0.0),
}
_SHAPES = ("ellipse", "rect", "triangle")
BACKGROUNDS = ("noise", "stripes", "gradient", "flat")


@dataclass(frozen=True)
class SceneParams:
    """How scenes are drawn. Distances are in pixels at size 64 (they scale with the rendered size); ranges
    are (min, max), drawn uniformly. The defaults render the built-in dataset exactly as before.

    `classes` names the label set in label order (a subset or reordering of CLASS_NAMES).
    """

    classes: tuple[str, ...] = tuple(CLASS_NAMES)
    displacement: tuple[float, float] = (28.0, 48.0)  # move_*: travel over the clip
    back_displacement: tuple[float, float] = (26.0, 36.0)  # *_then_back: distance out by mid-clip
    rotation_deg: tuple[float, float] = (180.0, 300.0)  # rotate_*: total turn over the clip
    scale_change: tuple[float, float] = (2.0, 2.5)  # grow / shrink: size factor over the clip
    drift: float = 4.0  # every class: sideways wander up to this many px
    spin: float = 0.25  # every class: turn up to this many radians
    object_size: tuple[float, float] = (7.0, 12.0)  # half-length of the target along its long axis
    object_aspect: tuple[float, float] = (0.45, 0.75)  # short / long half-length
    shapes: tuple[str, ...] = _SHAPES
    distractors: tuple[int, int] = (1, 3)  # count range, inclusive
    distractor_size: tuple[float, float] = (2.5, 4.5)  # radius
    distractor_wander: float = 5.0  # std of the distractors' path knots, px
    backgrounds: tuple[str, ...] = BACKGROUNDS[:3]  # drawn uniformly; "flat" is one plain colour
    background_drift: float = 6.0  # px over the clip

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        unknown = [c for c in self.classes if c not in CLASS_NAMES]
        if not self.classes or unknown or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes: need distinct names from {CLASS_NAMES}, got {list(self.classes)}")
        for name in (
            "displacement",
            "back_displacement",
            "rotation_deg",
            "scale_change",
            "object_size",
            "object_aspect",
            "distractor_size",
        ):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name}: need 0 <= min <= max, got {getattr(self, name)}")
        if self.scale_change[0] < 1.0 or self.object_size[0] <= 0 or self.object_aspect[0] <= 0:
            raise ValueError("scale_change must be >= 1 and object_size, object_aspect > 0")
        lo, hi = self.distractors
        if not 0 <= lo <= hi:
            raise ValueError(f"distractors: need 0 <= min <= max, got {self.distractors}")
        for name, allowed in (("shapes", _SHAPES), ("backgrounds", BACKGROUNDS)):
            value = getattr(self, name)
            if not value or any(v not in allowed for v in value):
                raise ValueError(f"{name}: need a non-empty subset of {allowed}, got {list(value)}")
        for name in ("drift", "spin", "distractor_wander", "background_drift"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")


DEFAULT_PARAMS = SceneParams()
_GOP = 16
_CRF = 18


@dataclass
class Trajectory:
    """The target object's pose per frame, in pixels at the rendered size (center is not wrapped)."""

    center: np.ndarray  # [T, 2] (y, x)
    angle: np.ndarray  # [T] radians; increasing = clockwise on screen (y points down)
    scale: np.ndarray  # [T] size relative to frame 0


def object_trajectory(
    label: int, *, frames: int, size: int, rng: np.random.Generator, params: SceneParams = DEFAULT_PARAMS
) -> Trajectory:
    """Sample the target's motion for class `label` (an index into `params.classes`); the pose at frame 0 is
    label-independent."""
    if not 0 <= label < len(params.classes):
        raise ValueError(f"label must be in [0, {len(params.classes)}), got {label}")
    name, s, p = params.classes[label], size / 64.0, params
    t = np.linspace(0.0, 1.0, frames)[:, None]  # [T, 1] clip progress
    center0 = rng.uniform(0.0, size, 2)
    drift = rng.uniform(-p.drift, p.drift, 2) * s  # small sideways wander shared by every class
    angle0 = rng.uniform(0.0, 2 * np.pi)
    spin = rng.uniform(-p.spin, p.spin)
    scale_end = rng.uniform(0.9, 1.1)
    offset = t * drift
    if name in ("move_right", "move_left", "move_down", "move_up"):
        offset = offset + t * rng.uniform(*p.displacement) * s * np.array(_DIRECTION[name])
    elif name in ("right_then_back", "up_then_back"):
        half = (frames - 1) // 2  # the turn lands on a frame, so the peak is really shown
        out_and_back = (
            np.interp(np.arange(frames), [0, half, frames - 1], [0, 1, 0])[:, None] if half else 0 * t
        )
        offset = offset + out_and_back * rng.uniform(*p.back_displacement) * s * np.array(_DIRECTION[name])
    elif name in ("rotate_cw", "rotate_ccw"):
        spin = np.deg2rad(rng.uniform(*p.rotation_deg)) * (1.0 if name == "rotate_cw" else -1.0)
    elif name == "grow":
        scale_end = rng.uniform(*p.scale_change)
    elif name == "shrink":
        scale_end = 1.0 / rng.uniform(*p.scale_change)
    t = t[:, 0]
    return Trajectory(center=center0 + offset, angle=angle0 + spin * t, scale=scale_end**t)


def _wrapped(coord: np.ndarray, center: np.ndarray, size: int) -> np.ndarray:
    """Signed distance from center to coord on a circle of length `size` (objects wrap at the edges)."""
    return (coord - center + size / 2) % size - size / 2


def _shape_sdf(kind: str, u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance (negative inside) to a shape with half-length a along u, b along v."""
    if kind == "ellipse":
        return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * b
    if kind == "rect":
        return np.maximum(np.abs(u) - a, np.abs(v) - b)
    # isosceles triangle, apex at (a, 0), base from (-a, -b) to (-a, b)
    slanted = (b * u + 2 * a * np.abs(v) - a * b) / np.hypot(b, 2 * a)
    return np.maximum(-a - u, slanted)


def _object_layers(
    traj: Trajectory, kind: str, a: float, b: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage alpha [T, H, W] and front-half mask [T, H, W] (u > 0) of a posed shape."""
    f32 = np.float32
    grid = np.arange(size, dtype=f32) + f32(0.5)
    dy = _wrapped(grid[None, :, None], traj.center[:, 0, None, None].astype(f32), size)  # [T, H, 1]
    dx = _wrapped(grid[None, None, :], traj.center[:, 1, None, None].astype(f32), size)  # [T, 1, W]
    cos = np.cos(traj.angle).astype(f32)[:, None, None]
    sin = np.sin(traj.angle).astype(f32)[:, None, None]
    inv_scale = (1.0 / traj.scale).astype(f32)[:, None, None]
    u = (cos * dx + sin * dy) * inv_scale  # [T, H, W] object-frame coordinates
    v = (cos * dy - sin * dx) * inv_scale
    sdf = _shape_sdf(kind, u, v, float(a), float(b)) / inv_scale
    return np.clip(f32(0.5) - sdf, f32(0.0), f32(1.0)), u > 0


def _background(
    frames: int, size: int, rng: np.random.Generator, params: SceneParams = DEFAULT_PARAMS
) -> np.ndarray:
    """Noise, stripes or a gradient between two muted colours drifting slowly, or one flat colour:
    [3, T, H, W] float32."""
    grid = np.arange(size, dtype=np.float64)
    span = params.background_drift
    drift = rng.uniform(-span, span, 2) * size / 64.0 * np.linspace(0, 1, frames)[:, None]  # [T, 2] (y, x) px
    kind = params.backgrounds[int(rng.integers(len(params.backgrounds)))]
    if kind == "flat":
        colour = rng.uniform(30, 220, (3, 1, 1, 1)).astype(np.float32)
        return np.broadcast_to(colour, (3, frames, size, size)).copy()
    if kind == "noise":  # smooth noise: a few random low-frequency waves
        count, low, high = 6, 0.5, 3.0
    elif kind == "stripes":
        count, low, high = 1, 3.0, 8.0
    else:  # gradient with a faint ripple
        count, low, high = 1, 0.3, 0.5
    freq = rng.uniform(low, high, count) * 2 * np.pi / size  # [K] radians per px
    theta = rng.uniform(0, 2 * np.pi, count)
    wave = freq[:, None] * np.stack([np.sin(theta), np.cos(theta)], axis=1)  # [K, 2] (ky, kx)
    phase = (
        wave[:, 0, None, None] * grid[:, None]
        + wave[:, 1, None, None] * grid
        + rng.uniform(0, 7, count)[:, None, None]
    )
    shift = -(drift[:, None, :] * wave).sum(-1)  # [T, K] phase change from the drift
    # sin(A + B) = sin A cos B + cos A sin B: one [T, 2K] x [2K, H*W] product instead of T*K sines.
    # einsum, not matmul: a multithreaded BLAS call this small costs more than it saves (and oversubscribes
    # the pool's worker processes).
    basis = np.concatenate([np.sin(phase), np.cos(phase)]).reshape(2 * count, -1).astype(np.float32)
    weights = np.concatenate([np.cos(shift), np.sin(shift)], axis=1).astype(np.float32)  # [T, 2K]
    value = np.einsum("tk,kn->tn", weights, basis).reshape(frames, size, size)
    value = (value - value.min()) / max(float(value.max() - value.min()), 1e-6)
    c1 = rng.uniform(30, 220, (3, 1, 1, 1)).astype(np.float32)
    c2 = c1 + np.float32(0.6) * (rng.uniform(30, 220, (3, 1, 1, 1)).astype(np.float32) - c1)
    return c1 + value[None] * (c2 - c1)


def _distractors(
    video: np.ndarray, size: int, rng: np.random.Generator, params: SceneParams = DEFAULT_PARAMS
) -> None:
    """Paint a few (default 1-3) small blobs that wander along smooth random paths (no consistent
    direction)."""
    frames, s = video.shape[1], size / 64.0  # video: [3, T, H, W] float32, painted in place
    low, high = params.distractors
    for _ in range(int(rng.integers(low, high + 1))):
        knots = rng.normal(0.0, params.distractor_wander * s, (4, 2))  # path through 4 random points
        t = np.linspace(0, 3, frames)
        path = np.stack([np.interp(t, np.arange(4), knots[:, i]) for i in range(2)], axis=1)  # [T, 2]
        traj = Trajectory(
            center=rng.uniform(0, size, 2) + path,
            angle=np.full(frames, rng.uniform(0, np.pi)),
            scale=np.ones(frames),
        )
        a = rng.uniform(*params.distractor_size) * s
        alpha, _ = _object_layers(traj, "ellipse", a, a * rng.uniform(0.6, 1.0), size)
        video += alpha[None] * (rng.uniform(0, 255, (3, 1, 1, 1)).astype(np.float32) - video)


@dataclass
class Scene:
    video: np.ndarray  # [T, H, W, 3] uint8
    target_alpha: np.ndarray  # [T, H, W] float32 coverage of the labelled object
    trajectory: Trajectory


def render_scene(
    label: int, *, frames: int, size: int, rng: np.random.Generator, params: SceneParams = DEFAULT_PARAMS
) -> Scene:
    """Render one video of class `label` with its target mask and trajectory (for tests and inspection)."""
    if frames < 1 or size < 8:
        raise ValueError(f"need frames >= 1 and size >= 8, got frames={frames} size={size}")
    traj = object_trajectory(label, frames=frames, size=size, rng=rng, params=params)
    video = _background(frames, size, rng, params)  # [3, T, H, W]: channel-first keeps numpy's loops long
    _distractors(video, size, rng, params)
    kind = params.shapes[int(rng.integers(len(params.shapes)))]
    a = rng.uniform(*params.object_size) * size / 64.0
    b = a * rng.uniform(*params.object_aspect)
    front = rng.uniform(0, 255, (3, 1, 1, 1)).astype(np.float32)
    back = 255.0 - front  # complementary halves make the orientation (and rotation) visible
    alpha, front_half = _object_layers(traj, kind, a, b, size)
    colour = np.where(front_half[None], front, back)  # [3, T, H, W]
    video += alpha[None] * (colour - video)
    video_u8 = np.clip(video + 0.5, 0, 255).astype(np.uint8)  # [3, T, H, W]
    return Scene(
        video=np.ascontiguousarray(video_u8.transpose(1, 2, 3, 0)), target_alpha=alpha, trajectory=traj
    )


def render_video(
    label: int, *, frames: int, size: int, rng: np.random.Generator, params: SceneParams = DEFAULT_PARAMS
) -> np.ndarray:
    """One [T, H, W, 3] uint8 RGB video of class `label` (see the module docstring for the classes)."""
    return render_scene(label, frames=frames, size=size, rng=rng, params=params).video


def _make_sample(job: tuple) -> tuple[str, bytes, dict]:
    """Worker: render and encode one video; its RNG depends only on (seed, split, index)."""
    split, split_id, index, label, frames, size, seed, fps, params = job
    rng = np.random.default_rng([seed, split_id, index])
    video = render_video(label, frames=frames, size=size, rng=rng, params=params)
    data = encode_video(video, fps=fps, gop=_GOP, crf=_CRF, threads=1)
    meta = {
        "label": label,
        "class": params.classes[label],
        "fps": fps,
        "frames": frames,
        "height": size,
        "width": size,
    }
    return f"{split}_{index:06d}", data, meta


def _split_jobs(
    split: str,
    split_id: int,
    n: int,
    *,
    classes: int,
    frames: int,
    size: int,
    seed: int,
    fps: float,
    params: SceneParams,
) -> list[tuple]:
    labels = np.random.default_rng([seed, split_id]).permutation(np.arange(n) % classes)  # balanced
    return [(split, split_id, i, int(labels[i]), frames, size, seed, fps, params) for i in range(n)]


def write_synthetic_dataset(
    out: str | Path,
    *,
    videos: int = 400,
    val_videos: int | None = None,
    classes: int = 8,
    frames: int = 32,
    size: int = 64,
    fps: float = 15,
    seed: int = 0,
    shard_size: int = 100,
    workers: int = 2,
    params: SceneParams | None = None,
) -> dict:
    """Write `out/train/shard-*.tar`, `out/val/shard-*.tar`, `out/classes.json` and `out/summary.json`.

    Each sample is `KEY.mp4` (H.264, keyframe every 16 frames) + `KEY.json` {label, class, fps, frames,
    height, width}. Labels are balanced over the first `classes` names of `params.classes` (default: the
    built-in scenes, CLASS_NAMES); `val_videos` defaults to 25% of `videos`. The output depends only on the
    arguments (not on `workers`).
    """
    params = DEFAULT_PARAMS if params is None else params
    params.validate()
    if not 1 <= classes <= len(params.classes):
        raise ValueError(f"classes must be in [1, {len(params.classes)}], got {classes}")
    if size < 8 or size % 2:
        raise ValueError(f"size must be an even number >= 8 (yuv420p), got {size}")
    if videos < 1 or frames < 1:
        raise ValueError(f"videos and frames must be >= 1, got videos={videos} frames={frames}")
    val_videos = round(0.25 * videos) if val_videos is None else val_videos
    if val_videos < 0:
        raise ValueError(f"val_videos must be >= 0, got {val_videos}")
    start = time.perf_counter()
    out = Path(out)
    common = dict(classes=classes, frames=frames, size=size, seed=seed, fps=float(fps))
    splits = {
        "train": _split_jobs("train", 0, videos, **common, params=params),
        "val": _split_jobs("val", 1, val_videos, **common, params=params),
    }
    names = list(params.classes[:classes])
    summary: dict = {"out": str(out), **common, "class_names": names}
    if params != DEFAULT_PARAMS:
        summary["params"] = json.loads(json.dumps(dataclasses.asdict(params)))  # lists, as written
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else contextlib.nullcontext()
    with pool:  # a real pool is terminated on exit, also when a worker raised
        for split, jobs in splits.items():
            results = pool.imap(_make_sample, jobs, chunksize=8) if workers > 1 else map(_make_sample, jobs)
            with ShardWriter(out / split, shard_size=shard_size, overwrite=True) as writer:
                for key, data, meta in results:
                    writer.write(key, data, ext="mp4", meta=meta)
            summary[split] = {"videos": writer.samples, "shards": len(writer.shards)}
    summary["seconds"] = round(time.perf_counter() - start, 3)
    (out / "classes.json").write_text(json.dumps(names, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary

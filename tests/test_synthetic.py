"""The synthetic motion dataset: labels live in the motion (not in any single frame), motion spans several
patches, and the written shards read back with webdataset, tarfile and decord."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from data_pipelines.synthetic import (
    CLASS_NAMES,
    SceneParams,
    object_trajectory,
    render_scene,
    render_video,
    write_synthetic_dataset,
)

PATCH = 16
SIZE = 64
FRAMES = 16


def circular_centroid(alpha_thw: np.ndarray) -> np.ndarray:
    """Per-frame (y, x) centroid of a mask on the torus the objects live on, unwrapped over time: [T, 2]."""
    size = alpha_thw.shape[-1]
    angles = 2 * np.pi * (np.arange(size) + 0.5) / size
    out = []
    for axis in (2, 1):  # sum over x for y, over y for x
        weight = alpha_thw.sum(axis=axis)  # [T, size]
        phase = np.angle((weight * np.exp(1j * angles)).sum(-1))
        out.append(np.unwrap(phase) * size / (2 * np.pi))
    return np.stack(out, axis=1)


def scenes(label: int, n: int = 12):
    return [
        render_scene(label, frames=FRAMES, size=SIZE, rng=np.random.default_rng([label, i])) for i in range(n)
    ]


def test_class_names():
    assert len(CLASS_NAMES) >= 8 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)


def test_render_shape_and_determinism():
    a = render_video(3, frames=FRAMES, size=32, rng=np.random.default_rng(7))
    b = render_video(3, frames=FRAMES, size=32, rng=np.random.default_rng(7))
    c = render_video(3, frames=FRAMES, size=32, rng=np.random.default_rng(8))
    assert a.shape == (FRAMES, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.std() > 10  # textured, not a flat frame


def test_render_rejects_unknown_label():
    with pytest.raises(ValueError, match="label"):
        render_video(len(CLASS_NAMES), frames=4, size=32, rng=np.random.default_rng(0))


def test_same_seed_gives_the_same_first_frame_in_every_class():
    """The label only steers the motion: with one seed, frame 0 is identical across all classes."""
    videos = [
        render_video(k, frames=8, size=SIZE, rng=np.random.default_rng(11)) for k in range(len(CLASS_NAMES))
    ]
    for video in videos[1:]:
        assert np.array_equal(video[0], videos[0][0])
    rest = np.stack([v[1:].astype(np.int16) for v in videos])
    assert all(np.abs(rest[i] - rest[j]).mean() > 0.5 for i in range(len(rest)) for j in range(i))


def test_first_frames_carry_no_label_information():
    """Object area, position and frame brightness at t=0 have the same distribution in every class."""
    feats = {}
    for label in range(8):
        rows = []
        for s in scenes(label, n=16):
            alpha0 = s.target_alpha[0]
            rows.append([alpha0.sum(), *circular_centroid(s.target_alpha)[0] % SIZE, s.video[0].mean()])
        feats[label] = np.array(rows)
    pooled = np.concatenate(list(feats.values()))
    for label, rows in feats.items():
        area, y0, x0, bright = rows.mean(0)
        assert 0.7 < area / pooled[:, 0].mean() < 1.4, (CLASS_NAMES[label], area)
        assert abs(y0 - SIZE / 2) < 14 and abs(x0 - SIZE / 2) < 14, (CLASS_NAMES[label], y0, x0)
        assert abs(bright - pooled[:, 3].mean()) < 3 * pooled[:, 3].std() / np.sqrt(len(rows))


@pytest.mark.parametrize(
    "name, direction",
    [("move_right", (0, 1)), ("move_left", (0, -1)), ("move_down", (1, 0)), ("move_up", (-1, 0))],
)
def test_translation_spans_several_patches(name, direction):
    for s in scenes(CLASS_NAMES.index(name)):
        moved = circular_centroid(s.target_alpha)[-1] - circular_centroid(s.target_alpha)[0]
        along = float(moved @ np.array(direction))
        assert along >= 1.5 * PATCH - 1, (name, moved)  # pixels agree with the trajectory (1 px antialiasing)
        assert abs(float(moved @ np.array(direction[::-1]))) <= 6, (name, moved)


@pytest.mark.parametrize("name, direction", [("right_then_back", (0, 1)), ("up_then_back", (-1, 0))])
def test_out_and_back_reaches_far_then_returns(name, direction):
    for s in scenes(CLASS_NAMES.index(name)):
        along = (circular_centroid(s.target_alpha) - circular_centroid(s.target_alpha)[0]) @ np.array(
            direction
        )
        assert along.max() >= 1.5 * PATCH - 1 and abs(along[-1]) <= 5, (name, along)


def test_rotation_direction_and_amount():
    for name, sign in (("rotate_cw", 1), ("rotate_ccw", -1)):
        for i in range(12):
            traj = object_trajectory(
                CLASS_NAMES.index(name), frames=FRAMES, size=SIZE, rng=np.random.default_rng(i)
            )
            turned = sign * (traj.angle[-1] - traj.angle[0])
            assert np.pi - 1e-6 <= turned <= 2 * np.pi, (name, turned)
            assert np.all(sign * np.diff(traj.angle) > 0)


def test_grow_and_shrink_change_area_severalfold():
    for name, low, high in (("grow", 3.5, 7), ("shrink", 1 / 7, 1 / 3.5)):
        for s in scenes(CLASS_NAMES.index(name), n=8):
            ratio = s.target_alpha[-1].sum() / s.target_alpha[0].sum()
            assert low < ratio < high, (name, ratio)


def test_static_classes_do_not_translate_much():
    for name in ("rotate_cw", "grow", "shrink"):
        for s in scenes(CLASS_NAMES.index(name), n=6):
            path = circular_centroid(s.target_alpha)
            assert np.abs(path[-1] - path[0]).max() <= 12, (
                name,
                path[-1] - path[0],
            )  # drift + shape centroid


def read_tar(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_write_dataset_reads_back_with_webdataset_tarfile_and_decord(tmp_path):
    decord = pytest.importorskip("decord")
    wds = pytest.importorskip("webdataset")
    summary = write_synthetic_dataset(
        tmp_path, videos=16, val_videos=4, frames=8, size=32, shard_size=6, workers=2, seed=3
    )
    assert summary["train"] == {"videos": 16, "shards": 3} and summary["val"] == {"videos": 4, "shards": 1}
    assert json.loads((tmp_path / "classes.json").read_text()) == CLASS_NAMES[:8]
    assert json.loads((tmp_path / "summary.json").read_text())["train"]["videos"] == 16
    shards = sorted((tmp_path / "train").glob("*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not list(tmp_path.rglob("*.tmp"))

    members = [m for p in shards for m in read_tar(p)]
    assert len(members) == 16 * 3  # mp4 + json + cls per sample
    assert all(name.count(".") == 1 for name, _ in members)

    labels = []
    for sample in wds.WebDataset([str(p) for p in shards], shardshuffle=False):
        meta = json.loads(sample["json"])
        assert meta["class"] == CLASS_NAMES[meta["label"]] and int(sample["cls"]) == meta["label"]
        assert (meta["frames"], meta["height"], meta["width"]) == (8, 32, 32)
        reader = decord.VideoReader(io.BytesIO(sample["mp4"]))
        assert len(reader) == 8 and reader[0].shape == (32, 32, 3)
        labels.append(meta["label"])
    assert np.bincount(labels, minlength=8).tolist() == [2] * 8  # balanced


def test_dataset_does_not_depend_on_worker_count_and_reruns_replace_shards(tmp_path):
    kwargs = dict(videos=3, val_videos=0, frames=4, size=32, classes=3, seed=1)
    write_synthetic_dataset(tmp_path / "a", workers=1, **kwargs)
    write_synthetic_dataset(tmp_path / "b", workers=1, shard_size=1, **kwargs)  # 3 shards, replaced next
    write_synthetic_dataset(tmp_path / "b", workers=2, **kwargs)
    assert [p.name for p in (tmp_path / "b" / "train").iterdir()] == ["shard-000000.tar"]
    a = (tmp_path / "a" / "train" / "shard-000000.tar").read_bytes()
    assert a == (tmp_path / "b" / "train" / "shard-000000.tar").read_bytes()


def test_write_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="classes"):
        write_synthetic_dataset(tmp_path, videos=2, classes=len(CLASS_NAMES) + 1)
    with pytest.raises(ValueError, match="size"):
        write_synthetic_dataset(tmp_path, videos=2, size=33)


def test_cli_synth(tmp_path, capsys):
    cli = pytest.importorskip("vjepa.cli")
    out = tmp_path / "synth"
    rc = cli.main(
        ["synth", "--out", str(out), "--videos", "4", "--classes", "4", "--frames", "4"]
        + ["--size", "32", "--workers", "1"]
    )
    assert rc == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    summary = json.loads(lines[-1])
    assert summary["train"]["videos"] == 4 and summary["val"]["videos"] == 1
    assert (out / "train" / "shard-000000.tar").is_file()


# ----------------------------------------------------------------------------- configurable scenes (SceneParams)

# Pixel sums of render_video(k, frames=8, size=32, rng=default_rng([5, k])) as rendered before the scene
# parameters existed: the defaults must keep rendering the same videos. A tolerance of a few units absorbs
# last-bit differences of vectorised sin/exp between CPUs; a changed random draw moves a sum by thousands.
DEFAULT_PIXEL_SUMS = [
    2094877,
    2630021,
    3469829,
    4368848,
    2420035,
    3633674,
    3221877,
    2865742,
    3356170,
    3217567,
]


def test_default_params_reproduce_the_videos_rendered_before_they_existed():
    for k, expected in enumerate(DEFAULT_PIXEL_SUMS):
        video = render_video(k, frames=8, size=32, rng=np.random.default_rng([5, k]))
        assert abs(int(video.astype(np.int64).sum()) - expected) <= 64, CLASS_NAMES[k]
        explicit = render_video(k, frames=8, size=32, rng=np.random.default_rng([5, k]), params=SceneParams())
        assert np.array_equal(video, explicit)


def test_params_render_deterministically_and_differ_from_the_defaults():
    params = SceneParams(
        classes=("move_up", "grow"),
        object_size=(4.0, 6.0),
        distractors=(0, 0),
        backgrounds=("flat",),
        displacement=(40.0, 50.0),
    )
    params.validate()
    a = render_video(0, frames=8, size=32, rng=np.random.default_rng(3), params=params)
    b = render_video(0, frames=8, size=32, rng=np.random.default_rng(3), params=params)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_video(0, frames=8, size=32, rng=np.random.default_rng(3)))
    with pytest.raises(ValueError, match="label"):
        render_video(2, frames=8, size=32, rng=np.random.default_rng(3), params=params)


def test_params_change_what_they_name():
    rng = np.random.default_rng
    # labels index params.classes: label 0 is now move_up
    traj = object_trajectory(
        0, frames=FRAMES, size=SIZE, rng=rng(1), params=SceneParams(classes=("move_up",))
    )
    assert traj.center[-1, 0] - traj.center[0, 0] < -20
    # displacement scales the travel
    far = SceneParams(displacement=(80.0, 80.0), drift=0.0)
    traj = object_trajectory(0, frames=FRAMES, size=SIZE, rng=rng(1), params=far)
    assert traj.center[-1, 1] - traj.center[0, 1] == pytest.approx(80.0)
    # a flat background without distractors leaves only the target off the background colour
    plain = SceneParams(backgrounds=("flat",), distractors=(0, 0))
    scene = render_scene(0, frames=4, size=SIZE, rng=rng(2), params=plain)
    outside = scene.video[scene.target_alpha == 0]  # [M, 3] pixels the target does not touch
    assert (outside == outside[0]).all()
    # object size sets the target's area
    small = render_scene(0, frames=4, size=SIZE, rng=rng(2), params=SceneParams(object_size=(3.0, 3.0)))
    large = render_scene(0, frames=4, size=SIZE, rng=rng(2), params=SceneParams(object_size=(14.0, 14.0)))
    assert large.target_alpha[0].sum() > 10 * small.target_alpha[0].sum()


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(classes=("jump",)), "classes"),
        (dict(classes=()), "classes"),
        (dict(classes=("grow", "grow")), "classes"),
        (dict(displacement=(30.0, 10.0)), "displacement"),
        (dict(distractors=(-1, 2)), "distractors"),
        (dict(backgrounds=("plaid",)), "backgrounds"),
        (dict(shapes=()), "shapes"),
        (dict(scale_change=(0.5, 2.0)), "scale_change"),
        (dict(drift=-1.0), "drift"),
    ],
)
def test_params_validate_names_the_bad_field(kwargs, key):
    with pytest.raises(ValueError, match=key):
        SceneParams(**kwargs).validate()


def test_write_dataset_with_params_names_its_classes(tmp_path):
    params = SceneParams(classes=("move_left", "rotate_cw", "shrink"), backgrounds=("flat", "stripes"))
    summary = write_synthetic_dataset(
        tmp_path, videos=3, val_videos=0, frames=4, size=32, classes=3, workers=1, params=params
    )
    assert json.loads((tmp_path / "classes.json").read_text()) == ["move_left", "rotate_cw", "shrink"]
    assert summary["class_names"] == ["move_left", "rotate_cw", "shrink"]
    assert summary["params"]["backgrounds"] == ["flat", "stripes"]
    metas = [
        json.loads(data)
        for name, data in read_tar(tmp_path / "train" / "shard-000000.tar")
        if name.endswith(".json")
    ]
    assert sorted(m["class"] for m in metas) == ["move_left", "rotate_cw", "shrink"]
    with pytest.raises(ValueError, match="classes"):
        write_synthetic_dataset(tmp_path / "x", videos=2, classes=4, workers=1, params=params)

"""Start-up checks of the config: optimizer values, DeepSpeed keys, YAML syntax, train.out_dir, mask geometry
and data source paths, each stopping before any work with the dotted key named."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from config_helpers import _raises_naming, _write

from data_pipelines.config import DataConfig
from vjepa.config import (
    DistConfig,
    OptimConfig,
    load_config,
)

# ----------------------------------------------------------------------------- optimizer values, finiteness


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.final_lr=-1e-6", "optim.final_lr"),  # trained uphill to loss 99847 and exited 0
        ("optim.start_lr=-1e-4", "optim.start_lr"),
        ("optim.weight_decay=-0.04", "optim.weight_decay"),
        ("optim.final_weight_decay=-0.4", "optim.final_weight_decay"),
        ("optim.betas=[0.9, 1.0]", "optim.betas"),
        ("optim.betas=[-0.1, 0.999]", "optim.betas"),
        ("optim.eps=0", "optim.eps"),
        ("optim.eps=-1e-8", "optim.eps"),
        ("optim.cooldown_steps=101", "optim.cooldown_steps"),  # train.steps is 100
        ("train.seed=-1", "train.seed"),
    ],
)
def test_optimizer_and_seed_values_name_the_key(override: str, key: str) -> None:
    with _raises_naming(key):
        load_config(overrides=[override])


def test_optimizer_bounds_themselves_load() -> None:
    cfg = load_config(
        overrides=["optim.final_lr=0", "optim.start_lr=0", "optim.weight_decay=0", "optim.betas=[0, 0.999]"]
        + ["optim.schedule=vjepa2", "optim.cooldown_steps=100", "train.seed=0"]
    )
    assert cfg.optim.final_lr == 0.0 and cfg.optim.cooldown_steps == cfg.train.steps


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.grad_clip=1e999", "optim.grad_clip"),  # overflows to inf
        ("optim.ema_end=.nan", "optim.ema_end"),
        ("optim.betas=[.nan, 0.999]", "optim.betas.0"),
        ("data.fps=.inf", "data.fps"),  # > 0 holds for inf
        ("data.decode_timeout_s=.inf", "data.decode_timeout_s"),
        ("data.crop_aspect=[0.75, .inf]", "data.crop_aspect.1"),
        ("mask.1.ratio=.nan", "mask.1.ratio"),
        ("log.collapse_warn_fraction=.nan", "log.collapse_warn_fraction"),
        ("dist.deepspeed.gradient_clipping=.nan", "dist.deepspeed.gradient_clipping"),
        ("dist.deepspeed.zero_optimization={stage: 2, reduce_bucket_size: .inf}", "reduce_bucket_size"),
    ],
)
def test_non_finite_numbers_are_errors_everywhere(override: str, key: str) -> None:
    with pytest.raises(ValueError, match="finite") as err:
        load_config(overrides=[override])
    assert re.search(rf"(?<![\w.]){re.escape(key)}: ", str(err.value)) or key in str(err.value), err.value


def test_non_finite_numbers_in_yaml_and_in_python_built_sections(tmp_path: Path) -> None:
    with _raises_naming("optim.weight_decay"):
        load_config(_write(tmp_path, "optim:\n  weight_decay: .nan\n"))
    for section, key in [
        (DataConfig(fps=float("inf")), "data.fps"),
        (DataConfig(decode_timeout_s=float("inf")), "data.decode_timeout_s"),
        (DistConfig(deepspeed={"gradient_clipping": float("nan")}), "dist.deepspeed.gradient_clipping"),
        (OptimConfig(grad_clip=float("inf")), "optim.grad_clip"),
    ]:
        with pytest.raises(ValueError, match=rf"^{re.escape(key)}: must be a finite number"):
            section.validate(key.split(".")[0])


# ----------------------------------------------------------------------------- dist.deepspeed keys


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ("dist.deepspeed.gradient_cliping=1.0", "dist.deepspeed.gradient_cliping", "gradient_clipping"),
        (
            "dist.deepspeed.zero_optimization.overlap_com=true",
            "dist.deepspeed.zero_optimization.overlap_com",
            "overlap_comm",
        ),
        (
            "dist.deepspeed.zero_optimization={stage: 2, contiguous_gradient: true}",
            "dist.deepspeed.zero_optimization.contiguous_gradient",
            "contiguous_gradients",
        ),
        ("dist.deepspeed.foo=1", "dist.deepspeed.foo", None),
    ],
)
def test_unknown_deepspeed_keys_are_errors(override: str, key: str, hint: str | None) -> None:
    with pytest.raises(ValueError, match=rf"unknown DeepSpeed key '{re.escape(key)}'") as err:
        load_config(overrides=[override])
    assert hint is None or f"did you mean '{hint}'" in str(err.value)


def test_unknown_deepspeed_key_in_yaml(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dist\.deepspeed\.zero_optimisation"):
        load_config(_write(tmp_path, "dist:\n  deepspeed:\n    zero_optimisation: {stage: 3}\n"))


def test_the_keys_we_derive_and_common_ones_are_known() -> None:
    from vjepa.config import DEEPSPEED_KEYS, DEEPSPEED_ZERO_KEYS
    from vjepa.distributed.deepspeed_config import deepspeed_config

    ds = deepspeed_config(DistConfig(), world_size=2, micro_batch=3, grad_clip=1.0, precision="bf16")
    assert set(ds) <= DEEPSPEED_KEYS and set(ds["zero_optimization"]) <= DEEPSPEED_ZERO_KEYS
    cfg = load_config(
        overrides=[
            "dist.deepspeed.zero_optimization={stage: 2, overlap_comm: true, reduce_bucket_size: 5e8, "
            "offload_optimizer: {device: cpu}, stage3_prefetch_bucket_size: 1e6}",
            "dist.deepspeed.communication_data_type=bf16",
            "dist.deepspeed.flops_profiler={enabled: true}",  # sections below the top are DeepSpeed's to check
        ]
    )
    assert cfg.dist.deepspeed["zero_optimization"]["overlap_comm"] is True


# ----------------------------------------------------------------------------- YAML syntax, duplicate keys


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("train: {steps: 3\n", r"line 2, column 1"),
        ("train:\n  steps: 3\n    seed: 1\n", r"line 3, column 9"),
        ("train:\n\tsteps: 3\n", r"line 2, column 1"),  # a tab as indentation
        ("model: [vit_tiny\n", r"line 2, column 1"),
    ],
)
def test_yaml_syntax_error_in_a_file_is_one_line_with_the_position(
    tmp_path: Path, text: str, position: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}, {position}: YAML error: ") as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_yaml_syntax_error_in_an_override_names_it_and_the_column() -> None:
    with pytest.raises(ValueError) as err:
        load_config(overrides=["optim.betas=[0.9, 0.95"])
    assert str(err.value).startswith("override 'optim.betas=[0.9, 0.95', column 23: YAML error: ")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^override 'data\.sources=\[\{path: a\]', column \d+: YAML error"):
        load_config(overrides=["data.sources=[{path: a]"])


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("train:\n  steps: 3\n  seed: 1\n  steps: 4\n", "train.steps", 4),
        ("train: {steps: 3}\noptim: {lr: 1e-3}\ntrain: {seed: 2}\n", "train", 3),
        ("mask:\n  - kind: tube\n    ratio: 0.8\n    ratio: 0.9\n", "mask.0.ratio", 4),
        (
            "dist:\n  deepspeed:\n    zero_optimization: {stage: 2, stage: 3}\n",
            "dist.deepspeed.zero_optimization.stage",
            3,
        ),
    ],
)
def test_duplicate_yaml_keys_are_errors_naming_the_key(
    tmp_path: Path, text: str, key: str, line: int
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(str(path))}, line {line}, column \d+: duplicate key '{re.escape(key)}'",
    ):
        load_config(path)


def test_duplicate_key_in_an_override_value() -> None:
    with pytest.raises(ValueError, match=r"duplicate key 'dist\.deepspeed\.zero_optimization\.stage'"):
        load_config(overrides=["dist.deepspeed.zero_optimization={stage: 2, stage: 3}"])


def test_yaml_anchors_and_merge_keys_still_load(tmp_path: Path) -> None:
    text = "mask:\n  - &short {kind: multiblock, num_blocks: 8}\n  - {<<: *short, num_blocks: 2}\n"
    cfg = load_config(_write(tmp_path, text))
    assert [m.num_blocks for m in cfg.mask] == [8, 2]


# ----------------------------------------------------------------------------- train.out_dir


@pytest.mark.parametrize("value", ["", "'  '"])
def test_an_empty_out_dir_is_an_error(value: str) -> None:
    with pytest.raises(ValueError, match=r"^train\.out_dir: must name the run folder"):
        load_config(overrides=[f"train.out_dir={value}"])


def test_an_out_dir_below_a_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    """A real unwritable place even for root: a path below a regular file."""
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "run" / "deeper"):
        with pytest.raises(ValueError, match=r"^train\.out_dir: .*file.* is a file, not a folder"):
            load_config(overrides=[f"train.out_dir={out}"], check_paths=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing created


def test_an_out_dir_to_be_created_passes_and_nothing_is_created(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "run"
    cfg = load_config(overrides=[f"train.out_dir={out}"], check_paths=True)
    assert cfg.train.out_dir == str(out) and not (tmp_path / "a").exists()


@contextlib.contextmanager
def _unwritable_folder(path: Path):
    """`path` made a folder nobody can write in: by chmod, or as root (whom chmod does not stop) by the
    immutable attribute, which stops root too (skips where the file system does not support it)."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root, where chmod does not stop writes, and `chattr +i` is unavailable here")
    try:
        yield path
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_an_out_dir_without_write_permission_is_an_error_naming_the_key(tmp_path: Path) -> None:
    with _unwritable_folder(tmp_path / "locked") as locked:
        with pytest.raises(OSError):  # the folder really is unwritable for this process
            (locked / "probe").mkdir()
        for out in (locked, locked / "run", locked / "run" / "deeper"):
            with pytest.raises(ValueError, match=r"^train\.out_dir: no permission to write in .*locked"):
                load_config(overrides=[f"train.out_dir={out}"], check_paths=True)
            load_config(overrides=[f"train.out_dir={out}"])  # printing a config needs no writable folder


# ----------------------------------------------------------------------------- mask geometry


@pytest.mark.parametrize(
    ("overrides", "key", "match"),
    [
        (["data.crop_size=16"], "mask.0", "covers all of the token grid"),  # a 1 x 1 grid
        (["data.crop_size=32", "mask.1.spatial_scale=[1.0, 1.0]"], "mask.1", "covers all of"),
        (["mask.1.spatial_scale=[0.5, 1.0]"], "mask.1", "covers all of"),  # only the largest draws do
        (["data.crop_size=16", "mask=[{kind: tube}]"], "mask.0", "at least 2 spatial positions"),
        (["data.frames_per_clip=2", "mask=[{kind: future}]"], "mask.0", "at least 2 time steps"),
        (
            ["data.crop_size=32", "mask=[{kind: future, future_blocks: 1, spatial_scale: [1.0, 1.0]}]"],
            "mask.0",
            "covers the whole context span",
        ),
    ],
)
def test_mask_geometry_without_context_is_found_at_validation(
    overrides: list[str], key: str, match: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}: .*{match}") as err:
        load_config(overrides=overrides)
    assert "Tp, Hp, Wp" in str(err.value)


def test_blocks_that_nearly_always_cover_the_grid_are_found_and_do_fail_the_sampler() -> None:
    """8 blocks of one time step and the whole frame, on 2 time steps: a draw leaves context only when all
    8 land on the same step (2 in 256); the sampler's re-draws then fail for most samples of a batch."""
    import torch

    from data_pipelines.masking.generator import draw_masks

    overrides = ["data.frames_per_clip=4", "data.crop_size=32"]
    overrides += ["mask.0.spatial_scale=[1.0, 1.0]", "mask.0.temporal_scale=[0.5, 0.5]"]
    with pytest.raises(ValueError, match=r"^mask\.0: 8 blocks cover all of .* in nearly every draw"):
        load_config(overrides=overrides)
    spec = load_config(overrides=[*overrides[:2]]).mask[0]
    spec.spatial_scale, spec.temporal_scale = (1.0, 1.0), (0.5, 0.5)
    with pytest.raises(ValueError, match="left no context"):
        draw_masks([spec], grid=(2, 2, 2), batch_size=24, generator=torch.Generator().manual_seed(0))
    assert load_config(overrides=[*overrides, "mask.0.num_blocks=2"]).mask[0].num_blocks == 2


def test_mask_geometry_that_passes_validation_draws_masks() -> None:
    """Whatever passes the check draws masks on its grid (the check is never looser than the sampler)."""
    import torch

    from data_pipelines import MaskSpec
    from data_pipelines.masking.generator import draw_masks

    gen = torch.Generator().manual_seed(0)
    checked = 0
    for grid in [(1, 1, 2), (2, 1, 2), (2, 2, 2), (4, 3, 3), (8, 4, 4), (1, 3, 5)]:
        for scale in (0.15, 0.5, 0.7, 0.9, 1.0):
            for kind in ("multiblock", "future", "tube"):
                spec = MaskSpec(kind=kind, num_blocks=2, spatial_scale=(scale, scale), future_blocks=1)
                try:
                    spec.check_grid(grid, "mask.0")
                except ValueError:
                    continue
                checked += 1
                for _ in range(5):
                    draw_masks([spec], grid=grid, batch_size=4, generator=gen)
    assert checked > 40


# ----------------------------------------------------------------------------- data source paths


def test_missing_source_paths_are_found_before_anything_is_written(tmp_path: Path) -> None:
    files = ["data.dataset=files"]
    cases = [
        (tmp_path / "no_such_dir", r"folder .*no_such_dir.* does not exist"),
        (tmp_path / "list.csv", r"CSV list .*list\.csv.* does not exist"),
        (tmp_path / "shard-{000..003}.tar", r"shard .*shard-000\.tar.* does not exist"),
        (tmp_path / "clip.mp4", r"video file .*clip\.mp4.* does not exist"),
    ]
    for path, match in cases:
        overrides = [*files, f"data.sources=[{{path: '{tmp_path}'}}, {{path: '{path}'}}]"]
        with pytest.raises(ValueError, match=rf"^data\.sources\.1\.path: {match}"):
            load_config(overrides=[*overrides, f"train.out_dir={tmp_path}/run"], check_paths=True)
        load_config(overrides=overrides)  # without the machine's paths: a config can be read anywhere
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"^data\.sources\.0\.path: .* is a folder, not a CSV list"):
        load_config(overrides=[*files, f"data.sources=[{{path: '{tmp_path}', kind: csv}}]"], check_paths=True)
    url = "data.sources=[{path: 'http://localhost:1/shard-{0..3}.tar'}]"
    assert load_config(overrides=[*files, url], check_paths=True).data.sources[0].path.startswith("http")


@pytest.mark.slow
def test_the_deepspeed_key_lists_match_the_installed_deepspeed() -> None:
    """The lists are DeepSpeed 0.19.8's; with another version installed this says what to add or drop."""
    deepspeed = pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from vjepa.config import DEEPSPEED_KEYS, DEEPSPEED_ZERO_KEYS

    fields = DeepSpeedZeroConfig.model_fields
    zero = set(fields) | {f.alias for f in fields.values() if f.alias}
    assert zero == DEEPSPEED_ZERO_KEYS, (deepspeed.__version__, zero ^ DEEPSPEED_ZERO_KEYS)

    read: set[str] = set()

    class Recording(dict):  # the top-level keys DeepSpeedConfig looks up while it parses
        def get(self, key, *default):
            read.add(key)
            return super().get(key, *default)

        def __getitem__(self, key):
            read.add(key)
            return super().__getitem__(key)

        def __contains__(self, key):
            read.add(key)
            return super().__contains__(key)

        def keys(self):
            return self  # `key in d.keys()` is then recorded too

    batch = {"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}
    DeepSpeedConfig(Recording(batch))
    assert read == DEEPSPEED_KEYS, (deepspeed.__version__, read ^ DEEPSPEED_KEYS)

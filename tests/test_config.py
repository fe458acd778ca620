"""The typed config: strict loading (typos, types, inconsistent combinations name the dotted key), dotted
overrides, the saved resolved config reading back equal, and every shipped YAML file loading."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import typing
from pathlib import Path

import pytest
import yaml

from data_pipelines.config import DataConfig
from vjepa.config import (
    CheckpointConfig,
    Config,
    DistConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    load_config,
    save_config,
    to_dict,
)
from vjepa.yaml_reader import _YamlLoader

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(
    {*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/**/*.yaml"), *ROOT.glob("configs/**/*.yml")}
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def _raises_naming(key: str):
    """ValueError whose message names `key` as a whole dotted key (not as part of a longer one)."""
    return pytest.raises(ValueError, match=rf"(?<![\w.]){re.escape(key)}(?![\w])")


def test_defaults_load_and_validate() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg.model.name == "vit_large" and len(cfg.mask) == 2


# ----------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("modle:\n  name: vit_tiny\n", "modle"),
        ("model:\n  nmae: vit_tiny\n", "model.nmae"),
        ("optim:\n  learning_rate: 0.1\n", "optim.learning_rate"),
        ("mask:\n  - kind: multiblock\n    num_blocks: 2\n  - kind: tube\n    xxx: 1\n", "mask.1.xxx"),
        ("mask:\n  - kind: multiblock\n    num_block: 2\n", "mask.0.num_block"),
        ("data:\n  dataset: files\n  sources:\n    - path: a.csv\n      knd: csv\n", "data.sources.0.knd"),
    ],
)
def test_unknown_yaml_key_names_the_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    with _raises_naming(key):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trian.steps=3", "trian"),
        ("model.nmae=vit_tiny", "model.nmae"),
        ("mask.0.xxx=1", "mask.0.xxx"),
        ("mask.7.num_blocks=3", "mask.7"),
        ("mask.first.num_blocks=3", "mask.first"),
        ("model.name.inner=1", "model.name.inner"),
    ],
)
def test_unknown_override_key_names_the_dotted_key(override: str, key: str) -> None:
    with _raises_naming(key):
        load_config(overrides=[override])


def test_override_needs_key_equals_value() -> None:
    with pytest.raises(ValueError, match="key=value"):
        load_config(overrides=["train.steps"])


# ----------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.steps=ten", "train.steps"),
        ("train.steps=true", "train.steps"),  # a bool is not an int
        ("train.steps=2.5", "train.steps"),
        ("train.steps=1e3", "train.steps"),
        ("optim.lr=fast", "optim.lr"),
        ("optim.lr=true", "optim.lr"),
        ("optim.betas=[0.9]", "optim.betas"),  # tuple length
        ("optim.betas=[0.9, 0.95, 0.99]", "optim.betas"),
        ("optim.betas=0.9", "optim.betas"),
        ("optim.betas=[0.9, high]", "optim.betas.1"),
        ("optim.grad_clip=big", "optim.grad_clip"),
        ("mask.1.spatial_scale=[0.1, 0.2, 0.3]", "mask.1.spatial_scale"),
        ("mask.0.num_blocks=two", "mask.0.num_blocks"),
        ("model.activation_checkpointing=1", "model.activation_checkpointing"),
        ("model.name=3", "model.name"),
        ("dist.deepspeed=[1, 2]", "dist.deepspeed"),
        ("model=vit_tiny", "model"),
    ],
)
def test_wrong_type_names_the_key(override: str, key: str) -> None:
    with _raises_naming(key):
        load_config(overrides=[override])


def test_wrong_type_in_yaml_names_the_key(tmp_path: Path) -> None:
    with _raises_naming("train.seed"):
        load_config(_write(tmp_path, "train:\n  seed: '0'\n"))
    with _raises_naming("mask.0.aspect_ratio"):
        load_config(_write(tmp_path, "mask:\n  - aspect_ratio: [0.75]\n"))
    with _raises_naming("model"):
        load_config(_write(tmp_path, "model: vit_tiny\n"))
    with pytest.raises(ValueError, match="mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


# ----------------------------------------------------------------------------- consistency


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data.frames_per_clip=15"], "data.frames_per_clip"),  # tubelet 2
        (["model.tubelet_size=4", "data.frames_per_clip=6"], "data.frames_per_clip"),
        (["data.crop_size=100"], "data.crop_size"),  # patch 16
        (["model.patch_size=14", "data.crop_size=256"], "data.crop_size"),
        (["model.name=vit_enormous"], "model.name"),
        (["model.attention=flash"], "model.attention"),
        (["model.pos_embed=learned"], "model.pos_embed"),
        (["train.precision=fp16"], "train.precision"),
        (["model.pred_heads=5"], "model.pred_width"),  # 384 % 5
        (["mask.1.kind=random"], "mask.1.kind"),
        (["mask=[]"], "mask"),
    ],
)
def test_inconsistent_combinations_name_the_key(overrides: list[str], key: str) -> None:
    with _raises_naming(key):
        load_config(overrides=overrides)


def test_consistent_non_default_combination_loads() -> None:
    cfg = load_config(overrides=["model.patch_size=14", "data.crop_size=252", "model.tubelet_size=4"])
    assert (cfg.model.patch_size, cfg.data.crop_size, cfg.model.tubelet_size) == (14, 252, 4)


# ----------------------------------------------------------------------------- overrides


def test_dotted_overrides() -> None:
    cfg = load_config(
        overrides=[
            "mask.1.num_blocks=3",
            "optim.betas=[0.9,0.95]",
            "dist.deepspeed.steps_per_print=1",  # a new key under the open DeepSpeed section
            "dist.deepspeed.zero_optimization.stage=3",
            "optim.lr=1e-3",  # YAML 1.1 reads this as a string; ours reads a number
            "optim.grad_clip=null",
            "train.out_dir=runs/a=b",  # only the first '=' splits
            "model.name=vit_test",
        ]
    )
    assert cfg.mask[1].num_blocks == 3 and cfg.mask[0].num_blocks == 8  # only entry 1 changed
    assert cfg.optim.betas == (0.9, 0.95) and isinstance(cfg.optim.betas, tuple)
    assert cfg.dist.deepspeed == {"steps_per_print": 1, "zero_optimization": {"stage": 3}}
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.grad_clip is None
    assert cfg.train.out_dir == "runs/a=b"
    assert cfg.model.name == "vit_test"
    assert load_config(overrides=["optim.grad_clip=1"]).optim.grad_clip == 1.0


def test_overrides_apply_after_the_yaml_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "train:\n  steps: 7\n  seed: 3\noptim:\n  lr: 1e-3\ndist:\n  deepspeed:\n    flops_profiler: {enabled: 1}\n",
    )
    cfg = load_config(path, ["train.steps=9", "dist.deepspeed.flops_profiler.profile_step=2"])
    assert (cfg.train.steps, cfg.train.seed, cfg.optim.lr) == (9, 3, 1e-3)
    assert cfg.dist.deepspeed == {"flops_profiler": {"enabled": 1, "profile_step": 2}}


def test_yaml_mask_list_replaces_the_default_list(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "mask:\n  - kind: tube\n    ratio: 0.8\n"))
    assert len(cfg.mask) == 1 and cfg.mask[0].kind == "tube" and cfg.mask[0].ratio == 0.8
    assert cfg.mask[0].num_blocks == 8  # fields not given keep the dataclass default


# ----------------------------------------------------------------------------- save and reload


def test_saved_config_reads_back_equal(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml",
        [
            "mask.1.num_blocks=3",
            "optim.betas=[0.9,0.95]",
            "optim.lr=1e-3",
            "optim.grad_clip=0.5",
            "dist.deepspeed.zero_optimization={stage: 3, overlap_comm: true}",
            "data.dataset=files",
            "data.sources=[{path: shards/a, weight: 2.0}, {path: b.csv, kind: csv}]",
            "train.out_dir=runs/x",
        ],
    )
    path = tmp_path / "resolved.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    assert again.optim.betas == (0.9, 0.95) and again.data.sources[1].kind == "csv"
    # The file is the whole tree, not only the overrides: it stands on its own.
    text = path.read_text()
    for section in ("model:", "mask:", "data:", "optim:", "train:", "dist:", "checkpoint:", "log:"):
        assert re.search(rf"^{section}", text, flags=re.M), section


# ----------------------------------------------------------------------------- shipped files


def test_config_files_are_found() -> None:
    assert any(p.name == "quickstart.yaml" for p in CONFIG_FILES)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[str(p.relative_to(ROOT)) for p in CONFIG_FILES])
def test_shipped_config_loads(path: Path) -> None:
    raw = yaml.load(path.read_text(), Loader=_YamlLoader) or {}  # the loader load_config uses
    overrides = []
    data = raw.get("data", {})
    if data.get("dataset") == "files" and not data.get("sources"):
        # Recipes leave the user's shards to the command line, as their header comments show.
        overrides.append("data.sources=[{path: /data/shards}]")
    resolved = to_dict(load_config(path, overrides))
    for dotted, value in _leaves(raw):  # every value the file sets arrives in the tree
        node = resolved
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted


def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted != "dist.deepspeed":
            out += _leaves(value, dotted + ".")
        else:
            out.append((dotted, value))
    return out


def test_xformers_on_cpu_stops_before_any_work() -> None:
    with pytest.raises(ValueError, match=r"model\.attention=xformers.*sdpa.*train\.device=cpu"):
        load_config(None, ["model.attention=xformers", "train.device=cpu"])


# ----------------------------------------------------------------------------- allowed values, sections


def _literal_fields(cls: type, prefix: str) -> dict[str, tuple]:
    """Dotted key -> allowed values of every `Literal`-typed field in the tree under `cls`."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        key = f"{prefix}{name}"
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if typing.get_origin(tp) is typing.Literal:
            out[key] = typing.get_args(tp)
        elif dataclasses.is_dataclass(inner):
            out.update(_literal_fields(inner, f"{key}.0." if inner is not tp else f"{key}."))
    return out


def test_allowed_values_come_from_literal_types() -> None:
    fields = _literal_fields(Config, "")
    assert set(fields) >= {
        "model.pos_embed",
        "model.attention",
        "optim.schedule",
        "train.precision",
        "train.device",
        "dist.backend",
        "dist.zero_stage",
        "data.dataset",
        "data.decoder",
        "data.sources.0.kind",
        "mask.0.kind",
    }
    for key, choices in fields.items():
        overrides = ["data.dataset=files", "data.sources=[{path: a, kind: auto}]"] if "sources" in key else []
        with pytest.raises(ValueError, match=rf"^{re.escape(key)}: must be one of") as err:
            load_config(overrides=[*overrides, f"{key}=bogus"])
        assert all(repr(c) in str(err.value) for c in choices), key


def test_sections_validate_themselves() -> None:
    cases = [
        (ModelConfig(pred_heads=5), "model.pred_width"),
        (ModelConfig(attention="flash"), "model.attention"),
        (OptimConfig(lr=0.0), "optim.lr"),
        (TrainConfig(steps=0), "train.steps"),
        (DistConfig(zero_stage=4), "dist.zero_stage"),
        (CheckpointConfig(keep_last=0), "checkpoint.keep_last"),
        (LogConfig(every_steps=0), "log.every_steps"),
        (DataConfig(decoder="ffmpeg"), "data.decoder"),
    ]
    for section, key in cases:
        with _raises_naming(key):
            section.validate(key.split(".")[0])
    for section in (
        ModelConfig(),
        OptimConfig(),
        TrainConfig(),
        DistConfig(),
        CheckpointConfig(),
        LogConfig(),
    ):
        section.validate(type(section).__name__)  # the defaults pass


def test_a_stage_must_be_an_integer_not_a_bool() -> None:
    with _raises_naming("dist.zero_stage"):
        DistConfig(zero_stage=True).validate("dist")  # True == 1, but not a ZeRO stage


def test_sources_with_the_synthetic_dataset_name_both_keys(tmp_path: Path) -> None:
    """The synthetic stream would ignore them silently."""
    with pytest.raises(ValueError, match=r"^data\.sources: .*data\.dataset='synthetic'.*data\.dataset=files"):
        load_config(overrides=["data.sources=[{path: shards/a}]"])
    with pytest.raises(ValueError, match=r"data\.sources.*data\.dataset"):
        load_config(_write(tmp_path, "data:\n  sources:\n    - path: shards/a\n"))
    cfg = load_config(overrides=["data.dataset=files", "data.sources=[{path: shards/a}]"])
    assert cfg.data.sources[0].path == "shards/a"


def test_a_missing_source_folder_is_reported_as_a_folder(tmp_path: Path) -> None:
    from data_pipelines.config import SourceConfig
    from data_pipelines.sources import load_sources

    for path in (tmp_path / "no_such_dir", f"{tmp_path / 'no_such_dir'}/"):
        with pytest.raises(
            ValueError, match=r"^data\.sources\.0\.path: folder .*no_such_dir.* does not exist"
        ):
            load_sources([SourceConfig(path=str(path))])
    with pytest.raises(ValueError, match=r"^data\.sources\.0\.path: CSV list .* does not exist"):
        load_sources([SourceConfig(path=str(tmp_path / "list.csv"))])


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

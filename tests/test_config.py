"""The typed config: strict loading (typos, types, inconsistent combinations name the dotted key), dotted
overrides, the saved resolved config reading back equal, and every shipped YAML file loading."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml
from config_helpers import _raises_naming, _write

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
    kind = path.relative_to(ROOT / "configs").parts[0]
    if kind == "eval":  # evaluation protocols: the eval config tree
        from vjepa.eval.config import load_eval_config

        resolved = to_dict(load_eval_config(path))
    elif kind == "ac":  # world-model training: the AC config tree (its data and encoder are the user's)
        from vjepa.world.config import load_ac_config

        resolved = to_dict(load_ac_config(path, check_paths=False))
    else:
        resolved = to_dict(load_config(path, overrides))
    for dotted, value in _leaves(raw):  # every value the file sets arrives in the tree
        node = resolved
        for part in dotted.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        assert node == value, dotted


def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted != "dist.deepspeed" and not dotted.endswith(".overrides"):
            out += _leaves(value, dotted + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):  # train.phases
            out += _leaves({str(i): v for i, v in enumerate(value)}, dotted + ".")
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


def test_stored_configs_of_earlier_versions_load_and_retired_keys_are_explained(tmp_path):
    """A run folder or model file written before train.spike_guard still reads (the retired keys are
    dropped); a config file that sets one is told what replaced it."""
    from vjepa.config import RETIRED_KEYS, load_config, stored_config, to_dict

    raw = to_dict(load_config(None))
    raw["train"].update(loss_spike_factor=10.0, loss_guard_warmup=20)
    assert stored_config(raw).train.spike_guard.std_factor == 6.0
    (tmp_path / "old.yaml").write_text("train:\n  loss_spike_factor: 10.0\n")
    with pytest.raises(ValueError, match=r"'train.loss_spike_factor' was replaced by train\.spike_guard"):
        load_config(tmp_path / "old.yaml")
    assert set(RETIRED_KEYS) == {"train.loss_spike_factor", "train.loss_guard_warmup"}

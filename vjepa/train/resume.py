"""Resuming a run: which checkpoint to restore, and refusing one that belongs to a different run.

- The newest complete checkpoint is restored. When one of its files cannot be read (a truncated `model.pt`,
  an empty trainer state: bit rot, a partial copy), the warning names the file and the next older complete
  checkpoint is tried; nothing is deleted. All ranks move on together (one rank's damaged file sends every
  rank to the older checkpoint), so the restored state is the same step everywhere.
- A checkpoint saved with another model, data kind, clip, batch size, backend or number of processes stops
  the run with one line that lists what differs and how to go on. A new `data.batch_size` is accepted with
  `checkpoint.allow_new_batch_size=true`: the weights, optimizer and step resume, the data stream starts over.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from vjepa.checkpoint import RunFolder, load_trainer_state, saved_world_size
from vjepa.config import ARCHITECTURE_KEYS, Config, to_dict
from vjepa.models.weights import DamagedFile

log = logging.getLogger(__name__)

# what must match between the saved run and this one (dotted keys of the config)
FIXED_KEYS = (
    *ARCHITECTURE_KEYS,
    "data.dataset",
    "data.frames_per_clip",
    "data.crop_size",
    "dist.backend",
    "dist.zero_stage",
)


# the global batch: changes only with checkpoint.allow_new_batch_size
BATCH_KEYS = ("data.batch_size", "optim.accumulate")
# keys younger than some saved runs: what a saved config without them had
SAVED_DEFAULTS = {"optim.accumulate": 1}


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return SAVED_DEFAULTS.get(dotted)
        tree = tree[part]
    return tree


def differences(folder: Path, cfg: Config, world_size: int) -> list[str]:
    """What differs between the run that wrote checkpoint `folder` and this one, as 'key: saved -> now'."""
    config_file = RunFolder(folder).config
    try:
        saved = yaml.safe_load(config_file.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DamagedFile(f"checkpoint {folder}: unreadable config.yaml ({err})") from err
    now = to_dict(cfg)
    keys = list(FIXED_KEYS) + ([] if cfg.checkpoint.allow_new_batch_size else list(BATCH_KEYS))
    out = [f"{k}: {_get(saved, k)!r} -> {_get(now, k)!r}" for k in keys if _get(saved, k) != _get(now, k)]
    if len(saved.get("mask", [])) != len(now["mask"]):
        out.append(f"mask: {len(saved.get('mask', []))} configurations -> {len(now['mask'])}")
    ranks = saved_world_size(folder)
    if ranks != world_size:
        out.append(f"processes: {ranks} -> {world_size}")
    return out


def refuse_if_foreign(folder: Path, cfg: Config, world_size: int) -> None:
    diff = differences(folder, cfg, world_size)
    if diff:
        raise ValueError(
            f"checkpoint {folder} was saved by a different run ({'; '.join(diff)}). Resume it with the saved "
            "values; start fresh with another train.out_dir (or checkpoint.resume=false); or reuse its weights "
            f"in a new run: vjepa export --checkpoint {folder} --out model.pt, then train.init_from=model.pt"
            + (
                ""
                if not any(k in " ".join(diff) for k in BATCH_KEYS)
                else "; checkpoint.allow_new_batch_size=true keeps the weights and restarts the data"
            )
        )


def restore_newest(run) -> tuple[int, dict[str, Any]] | None:
    """Restores the newest readable complete checkpoint into `run` (engine, data, RNG);
    -> (step, the loop's saved state), or None when the run has no checkpoint."""
    candidates = run.ckpts.complete()
    damaged = []
    for folder in candidates:
        refuse_if_foreign(folder, run.cfg, run.env.world_size)
        try:
            run.engine.load(folder)
            step, data_state, extra = load_trainer_state(folder, run.env.rank)
            error = None
        except DamagedFile as err:
            error = str(err)
        if run.engine.all_ranks(error is None):
            restore_data(run, data_state, folder)
            if damaged:
                log.warning(
                    "resumed from the older checkpoint %s (newer ones damaged: %s)",
                    folder,
                    "; ".join(damaged),
                )
            log.info("resumed from %s at step %d", folder, step)
            return step, extra
        damaged.append(error or f"{folder}: a file another rank reads is damaged")
        log.warning("checkpoint %s cannot be restored (%s); trying the one before it", folder, damaged[-1])
    if damaged:
        raise ValueError(
            f"every checkpoint in {run.ckpts.root} is damaged ({'; '.join(damaged)}); nothing was deleted. "
            "Start fresh with another train.out_dir (or checkpoint.resume=false)"
        )
    return None


def restore_data(run, data_state: dict[str, Any], folder: Path) -> None:
    saved = data_state.get("batch_size")
    if run.cfg.checkpoint.allow_new_batch_size and saved is not None and saved != run.cfg.data.batch_size:
        log.warning(
            "data.batch_size %s -> %s (checkpoint.allow_new_batch_size): the data stream starts over",
            saved,
            run.cfg.data.batch_size,
        )
        return
    run.data.load_state_dict(data_state)

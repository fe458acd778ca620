"""Features on disk in parts: resumable, multi-rank extraction of one split.

A split's samples (in source order) are cut into parts of `part_size` consecutive samples; part p belongs to
rank p % world. Each part is written atomically as `part-PPPPP.pt` (the FeatureSet of its usable videos)
and then `part-PPPPP.json` (its summary: videos, skipped keys); a part is done when its summary exists. A
killed extraction restarted with the same settings redoes only the parts without a summary, on any number
of ranks. Whichever rank finds every part done writes `index.json`, which makes the folder a feature set
(`load_feature_folder`). `extract.json` holds the settings of the extraction; a restart with different
settings, or on changed data, is refused rather than mixed in.

The features of a video do not depend on the number of ranks: a part's forward batches are formed within
the part, so every rank count runs the same batches.

Shape legend: M videos, V clips per video, N tokens per clip (1 with pool="mean"), D width.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipelines import EvalClipSpec, EvalVideo, iter_eval_videos, list_eval_samples
from vjepa.eval.extract import FeatureSet, encode_videos, read_num_classes
from vjepa.models.weights import LOAD_ERRORS
from vjepa.utils import atomic_write

__all__ = ["PartFolder", "extract_parts", "load_feature_folder"]

log = logging.getLogger(__name__)

INDEX, SETTINGS = "index.json", "extract.json"
FORMAT = "vjepa-features/1"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path}: unreadable ({err}); delete it and rerun vjepa extract to redo it"
        ) from None


@dataclass(frozen=True)
class PartFolder:
    """The folder of one split's feature parts."""

    root: Path

    def part(self, p: int) -> Path:
        return self.root / f"part-{p:05d}.pt"

    def summary(self, p: int) -> Path:
        return self.root / f"part-{p:05d}.json"

    def done(self, p: int) -> bool:
        return self.summary(p).is_file()

    def claim(self, settings: dict[str, Any]) -> None:
        """Writes the settings on first use; refuses a folder holding parts made with other settings."""
        path = self.root / SETTINGS
        if path.is_file():
            old = _read_json(path)
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            if changed:
                diffs = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed[:4])
                raise ValueError(
                    f"{self.root} holds features extracted with other settings ({diffs}); use another --out "
                    "or delete the folder to start over"
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json(path, settings)

    def write_part(self, p: int, features: FeatureSet | None, first: int, skipped: list[str]) -> None:
        if features is not None:
            state = {"tokens": features.tokens, "labels": features.labels, "keys": features.keys}
            with atomic_write(self.part(p)) as tmp:
                torch.save(state, tmp)
        shape = list(features.tokens.shape) if features is not None else None
        videos = len(features) if features is not None else 0
        _write_json(self.summary(p), {"first": first, "videos": videos, "shape": shape, "skipped": skipped})

    def write_index(self, parts: int, meta: dict[str, Any]) -> bool:
        """Writes index.json if every part is done; True if it did (or it was already there)."""
        if (self.root / INDEX).is_file():
            return True
        if not all(self.done(p) for p in range(parts)):
            return False
        summaries = [_read_json(self.summary(p)) for p in range(parts)]
        shapes = [s["shape"] for s in summaries if s["shape"] is not None]
        videos = sum(s["videos"] for s in summaries)
        skipped = [k for s in summaries for k in s["skipped"]]
        shape = [videos, *shapes[0][1:]] if shapes else None
        index = {"format": FORMAT, "parts": parts, "videos": videos, "shape": shape, "skipped": skipped}
        _write_json(self.root / INDEX, {**index, "meta": {**meta, "skipped": skipped}})
        return True


def load_feature_folder(path: str | Path) -> FeatureSet:
    """The FeatureSet of a finished part folder (its index.json, then every part in order)."""
    folder = PartFolder(Path(path))
    index_path = folder.root / INDEX
    if not index_path.is_file():
        if not (folder.root / SETTINGS).is_file():
            raise ValueError(f"{folder.root}: not a feature folder (no {INDEX})")
        parts = _read_json(folder.root / SETTINGS)["parts"]
        missing = sum(not folder.done(p) for p in range(parts))
        raise ValueError(
            f"{folder.root}: the extraction is not finished ({missing} of {parts} parts missing); rerun "
            "vjepa extract with the same settings to finish it"
        )
    index = _read_json(index_path)
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_path}: not a vjepa feature index (format {index.get('format')!r})")
    tokens, labels, keys = [], [], []
    for p in range(index["parts"]):
        if _read_json(folder.summary(p))["videos"] == 0:
            continue
        try:
            data = torch.load(folder.part(p), map_location="cpu", weights_only=True)
        except (*LOAD_ERRORS, FileNotFoundError) as err:
            raise ValueError(
                f"{folder.part(p)}: damaged ({type(err).__name__}); delete it and {folder.summary(p).name}, "
                "then rerun vjepa extract with the same settings to redo that part"
            ) from None
        tokens.append(data["tokens"])
        labels.append(data["labels"])
        keys.extend(data["keys"])
    if not tokens:
        raise ValueError(f"{folder.root}: no usable videos (all {len(index['skipped'])} skipped)")
    return FeatureSet(torch.cat(tokens), torch.cat(labels).long(), keys, dict(index["meta"]))


def _fingerprint(keys: list[str]) -> str:
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]


def extract_parts(
    encoder: nn.Module,
    data: str | Path,
    spec: EvalClipSpec,
    out: str | Path,
    *,
    settings: dict[str, Any],
    part_size: int = 256,
    rank: int = 0,
    world: int = 1,
    batch: int = 32,
    device: torch.device | str = "cpu",
    pool: str = "none",
    dtype: str = "float16",
    workers: int = 0,
    meta: dict[str, Any] | None = None,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Extracts this rank's unfinished parts of `data` into the part folder `out`. `settings` (what made
    the features: checkpoint, encoder, ...) guards the folder against mixing. `progress(total)` makes the
    progress reporter (with update(n) and close()). -> a summary; "complete" says whether index.json exists."""
    samples = list_eval_samples(data)
    parts = (len(samples) + part_size - 1) // part_size
    folder = PartFolder(Path(out))
    clip_settings = {k: getattr(spec, k) for k in ("frames", "frame_step", "crop", "segments", "views")}
    folder.claim(
        {
            **settings,
            **clip_settings,
            "pool": pool,
            "dtype": dtype,
            "part_size": part_size,
            "parts": parts,
            "samples": _fingerprint([entry.key for _, entry in samples]),
        }
    )
    mine = [p for p in range(rank, parts, world) if not folder.done(p)]
    bar = progress(sum(min(part_size, len(samples) - p * part_size) for p in mine)) if progress else None
    for p in mine:
        first = p * part_size
        indices = list(range(first, min(first + part_size, len(samples))))
        skipped: list[str] = []
        decoded = iter_eval_videos(samples, spec, workers=workers, skipped=skipped, indices=indices)
        videos = _counted(decoded, bar)
        features = _encode_part(encoder, videos, batch=batch, device=device, pool=pool, dtype=dtype)
        if bar is not None:
            bar.update(len(skipped))
        folder.write_part(p, features, first, skipped)
    if bar is not None:
        bar.close()
    index_meta = {
        **(meta or {}),
        "data": str(data),
        **clip_settings,
        "spatial_views": spec.views,
        "pool": pool,
        "dtype": dtype,
        "num_classes": read_num_classes(data),
    }
    complete = folder.write_index(parts, index_meta)
    return {"parts": parts, "done_here": len(mine), "samples": len(samples), "complete": complete}


def _counted(videos: Iterator[EvalVideo], bar: Any) -> Iterator[EvalVideo]:
    for video in videos:
        yield video
        if bar is not None:
            bar.update(1)


def _encode_part(
    encoder: nn.Module,
    videos: Iterator[EvalVideo],
    *,
    batch: int,
    device: torch.device | str,
    pool: str,
    dtype: str,
) -> FeatureSet | None:
    """The part's FeatureSet, or None when every sample of the part was skipped."""
    first = next(videos, None)
    if first is None:
        return None
    return encode_videos(
        encoder, itertools.chain([first], videos), batch=batch, device=device, pool=pool, dtype=DTYPES[dtype]
    )

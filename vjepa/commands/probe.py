"""`vjepa probe [--config YAML] --train FEATURES --val FEATURES [--out DIR] [key=value ...]`: trains the probe
heads of a sweep (lrs x wds, one pass over the features) on frozen features, evaluates each with the softmax
averaged over the views of a video, reports every head and the best on the validation split (top-1, top-5,
per-class accuracy, confusion matrix), writes DIR/probe.json and PNG plots, prints one JSON line."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from vjepa.eval.config import EvalConfig, ProbeSettings
    from vjepa.eval.evaluate import ProbeConfig

FLAGS = {  # flag dest -> eval config key
    "train": "probe.train",
    "val": "probe.val",
    "out": "probe.out",
    "kind": "probe.kind",
    "epochs": "probe.epochs",
    "batch": "probe.batch",
    "depth": "probe.depth",
    "heads": "probe.heads",
    "seed": "probe.seed",
    "device": "probe.device",
    "attend_across_segments": "probe.attend_across_segments",
    "online": "probe.online",
    "checkpoint": "extract.checkpoint",
    "data": "extract.data",
    "workers": "extract.workers",
}


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="train and evaluate probe heads on frozen features (from vjepa extract); top-1, top-5, plots",
        description="AdamW with a cosine learning rate, as the V-JEPA evaluation; every head of the sweep "
        "sees the same minibatches. Deterministic given the seed. Flags map onto the eval config "
        "(configs/eval/*.yaml); key=value overrides come last.",
    )
    p.add_argument("--config", default=None, help="eval config YAML (e.g. configs/eval/ssv2.yaml)")
    p.add_argument("--train", help="training features: a folder from vjepa extract, or a feature file")
    p.add_argument("--val", help="validation features")
    p.add_argument("--out", help="report folder (probe.json, probe_curves.png, confusion.png)")
    p.add_argument("--kind", choices=("attentive", "linear"), help="probe type (default attentive)")
    p.add_argument("--epochs", type=int, help="default 20")
    p.add_argument("--lr", type=float, help="one learning rate (cosine decay); same as --lrs X")
    p.add_argument("--wd", type=float, help="one AdamW weight decay; same as --wds X")
    p.add_argument("--lrs", type=_floats, help="learning rates of the sweep, comma-separated")
    p.add_argument("--wds", type=_floats, help="weight decays of the sweep, comma-separated")
    p.add_argument("--batch", type=int, help="default 32")
    p.add_argument(
        "--depth", type=int, help="self-attention blocks before the pooler (default 3; V-JEPA 1: 0)"
    )
    p.add_argument("--heads", type=int, help="attention heads (default 16, fewer on narrow widths)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument(
        "--attend-across-segments", action="store_true", default=None, help="a view = all segments of a crop"
    )
    p.add_argument(
        "--online",
        action="store_true",
        default=None,
        help="train on clips decoded and encoded every step by the frozen encoder of --checkpoint over "
        "--data's train/ and val/ (no feature files; the training augmentations)",
    )
    p.add_argument("--checkpoint", help="with --online: the encoder (as for vjepa extract)")
    p.add_argument("--data", help="with --online: a dataset folder with train/ and val/")
    p.add_argument("--workers", type=int, help="with --online: decoding worker processes")
    p.add_argument("--progress", action="store_true", help="a progress bar per epoch on stderr")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="eval config overrides")
    p.set_defaults(func=run)


def probe_config(settings: ProbeSettings) -> ProbeConfig:
    """The library's ProbeConfig for the eval config's probe section."""
    from vjepa.eval.evaluate import ProbeConfig

    return ProbeConfig(
        kind=settings.kind,
        epochs=settings.epochs,
        lr=settings.lrs[0],
        wd=settings.wds[0],
        batch=settings.batch,
        seed=settings.seed,
        depth=settings.depth,
        heads=settings.heads,
        lrs=tuple(settings.lrs),
        wds=tuple(settings.wds),
        attend_across_segments=settings.attend_across_segments,
    )


def run(args: argparse.Namespace) -> int:
    from vjepa.eval.config import flag_overrides, load_eval_config
    from vjepa.eval.extract import load_features
    from vjepa.eval.probe_report import json_safe, write_probe_report
    from vjepa.eval.sweep import train_probes
    from vjepa.utils import resolve_device

    given = {key: getattr(args, dest) for dest, key in FLAGS.items()}
    given["probe.lrs"] = [args.lr] if args.lr is not None else args.lrs
    given["probe.wds"] = [args.wd] if args.wd is not None else args.wds
    cfg = load_eval_config(args.config, [*flag_overrides(given), *args.overrides])
    settings = cfg.probe
    settings.check_paths()
    device = resolve_device(settings.device, key="probe.device")
    if settings.online:
        result = _online(cfg, device, progress=args.progress)
    else:
        train, val = load_features(settings.train), load_features(settings.val)
        result = train_probes(train, val, probe_config(settings), device=device, progress=args.progress)
    report = {"train": settings.train, "val": settings.val, **result}
    if settings.out:
        report["files"] = {k: str(v) for k, v in write_probe_report(report, settings.out).items()}
    print(json.dumps(json_safe(report)), flush=True)
    return 0


def _online(cfg: EvalConfig, device: torch.device, *, progress: bool) -> dict:
    from data_pipelines import find_splits
    from vjepa.commands.extract import frozen_encoder
    from vjepa.eval.online import train_probes_online

    cfg.extract.check_paths(out=False)
    splits = find_splits(cfg.extract.data)
    if not {"train", "val"} <= set(splits):
        raise ValueError(f"extract.data: probe.online needs train/ and val/ in {cfg.extract.data}")
    encoder, spec, settings = frozen_encoder(cfg, device)
    result = train_probes_online(
        encoder,
        splits["train"],
        splits["val"],
        spec,
        probe_config(cfg.probe),
        device=device,
        workers=cfg.extract.workers,
        progress=progress,
    )
    return {**settings, **result}

"""The `vjepa` command. Thin: each module in `vjepa.commands` registers one subcommand, parses its
arguments and calls the library.

Its promise: a mistake the user can fix prints one line, `vjepa: error: ...`, and exits with status 2. That
covers every ValueError (a bad config, bad data, a bad checkpoint), every OSError (a full disk, a missing or
unwritable path) and the RuntimeErrors that stop a run for a reason the user must look at (too many bad
samples, hung decodes or reads, a loss that stays non-finite). The traceback is shown under
`vjepa --debug ...`, and a training run also appends it to `<train.out_dir>/errors.log`. Any other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import os
import pkgutil
import sys
import traceback
from pathlib import Path

import vjepa.commands

ERROR_LOG = "errors.log"  # in the run folder: the tracebacks of the errors that stopped the run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vjepa", description="V-JEPA video pretraining and evaluation.")
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(vjepa.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"vjepa.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        if not isinstance(err, (ValueError, OSError, *stop_errors())):
            raise  # a bug: the traceback is the report
        where = log_traceback(err, getattr(args, "run_dir", None))
        if args.debug:
            traceback.print_exc()
        note = f" (traceback in {where})" if where is not None and not args.debug else ""
        print(f"vjepa: error: {one_line(err)}{note}", file=sys.stderr)
        return 2


def stop_errors() -> tuple[type[BaseException], ...]:
    """The RuntimeErrors that stop a run for a reason the user can act on. Looked up only in modules that
    are already loaded (an error cannot come from a module that never was), so the check loads nothing."""
    found: list[type[BaseException]] = []
    data = sys.modules.get("data_pipelines")
    if data is not None:
        found += [data.TooManyBadSamplesError, data.HungDecodesError, data.HungReadsError]
    trainer = sys.modules.get("vjepa.train.trainer")
    if trainer is not None:
        found.append(trainer.LossGuardError)
    return tuple(found)


def one_line(err: BaseException) -> str:
    """The error's message on one line. An error re-raised from a DataLoader worker carries the worker's
    whole traceback in its message; its last line holds the original message."""
    text = str(err).strip() or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Original Traceback (most recent call last):" in text:
        name, sep, message = lines[-1].partition(": ")
        return message if sep and " " not in name else lines[-1]
    return "; ".join(lines)


def log_traceback(err: BaseException, run_dir: str | None) -> Path | None:
    """Appends the traceback to the run folder's error log when there is a run folder; -> the log's path."""
    if not run_dir or not os.path.isdir(run_dir):
        return None
    path = Path(run_dir) / ERROR_LOG
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rank = os.environ.get("RANK", "0")
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        with open(path, "a") as f:  # one write per error: ranks appending at once do not interleave lines
            f.write(f"--- {stamp} rank {rank} pid {os.getpid()}\n{text}")
    except OSError:
        return None  # the folder went read-only or full: the error line is still printed
    return path


if __name__ == "__main__":
    sys.exit(main())

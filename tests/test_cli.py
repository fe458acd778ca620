"""The `vjepa` command's promise: a mistake the user can fix (a bad config, bad data, a run stopped by bad
samples, hung decodes or a non-finite loss) prints one line `vjepa: error: ...` and exits 2; the traceback is
shown under `vjepa --debug` and appended to the run folder's errors.log; a bug keeps its traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vjepa.cli import main

ERROR_LOG = "errors.log"  # vjepa.cli.ERROR_LOG, spelled out: the file name is part of the promise

TINY = [
    "model.name=vit_test",
    "model.pred_width=32",
    "model.pred_depth=2",
    "model.pred_heads=4",
    "data.frames_per_clip=4",
    "data.crop_size=32",
    "data.batch_size=2",
    "train.precision=fp32",
    "train.device=cpu",
    "train.steps=3",
    "log.progress=false",
    "log.tensorboard=false",
]


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _garbage_videos(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"v{i}.mp4").write_bytes(bytes(range(256)) * (i + 1))  # not a video
    return folder


# ----------------------------------------------------------------------------- config mistakes


def test_a_config_mistake_is_one_line_and_nothing_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "optim.final_lr=-1e-6", "train.steps=0", f"train.out_dir={run}"]) == 2
    assert _error_lines(capsys) == ["vjepa: error: optim.final_lr: must be >= 0, got -1e-06"]
    assert not run.exists()


def test_a_yaml_syntax_error_is_one_line(tmp_path, capsys):
    assert main(["train", "optim.betas=[0.9, 0.95"]) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("vjepa: error: override 'optim.betas=[0.9, 0.95', column 23: YAML error: ")
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  steps: 3\n   seed: 1\n")
    assert main(["train", "--config", str(config)]) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith(f"vjepa: error: {config}, line 3, column 8: YAML error: ")


def test_debug_shows_the_traceback_then_the_line(capsys):
    assert main(["--debug", "train", "optim.eps=0", "train.steps=0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "load_config" in err
    assert err.strip().splitlines()[-1] == "vjepa: error: optim.eps: must be > 0, got 0.0"


def test_missing_data_is_found_before_the_run_folder_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    missing = tmp_path / "videos"
    argv = [
        "train",
        *TINY,
        "data.dataset=files",
        f"data.sources=[{{path: '{missing}'}}]",
        f"train.out_dir={run}",
    ]
    assert main(argv) == 2
    assert _error_lines(capsys) == [f"vjepa: error: data.sources.0.path: folder '{missing}' does not exist"]
    assert not run.exists()


def test_an_unwritable_out_dir_stops_before_the_models_are_built(tmp_path, capsys, monkeypatch):
    from vjepa.train import run

    def no_models(*args, **kwargs):
        raise AssertionError("models were built")

    monkeypatch.setattr(run, "build_models", no_models)
    (tmp_path / "file").write_text("x")
    assert main(["train", *TINY, f"train.out_dir={tmp_path / 'file' / 'run'}"]) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("vjepa: error: train.out_dir: ") and "is a file, not a folder" in line


def test_printing_a_config_needs_neither_the_data_nor_the_run_folder(tmp_path, capsys):
    argv = [
        "train",
        "data.dataset=files",
        f"data.sources=[{{path: '{tmp_path / 'gone'}'}}]",
        "--print-config",
    ]
    assert main(argv) == 0
    assert "gone" in capsys.readouterr().out


def test_a_bug_keeps_its_traceback(monkeypatch):
    from vjepa.commands import train as train_command

    def broken(*args, **kwargs):
        raise KeyError("a bug, not a user mistake")

    monkeypatch.setattr(train_command, "load_config", broken, raising=False)
    monkeypatch.setattr("vjepa.config.load_config", broken)
    with pytest.raises(KeyError):
        main(["train"])


# ----------------------------------------------------------------------------- runs stopped by the data or the loss


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_bad_samples_is_one_line_with_the_traceback_in_the_run_log(tmp_path, capsys, workers):
    """With workers the error comes back from a DataLoader worker with the worker's traceback in its
    message; the line shows the original message only."""
    videos = _garbage_videos(tmp_path / "videos", 4)
    run = tmp_path / "run"
    argv = ["train", *TINY, "data.dataset=files", f"data.sources=[{{path: '{videos}'}}]"]
    argv += ["data.max_skip_fraction=0.5", "data.skip_check_min_samples=2"]
    argv += [f"data.num_workers={workers}", f"train.out_dir={run}"]
    assert main(argv) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("vjepa: error: ") and str(videos) in line, line  # the worst shard is named
    assert "Traceback" not in line and line.endswith(f"(traceback in {run / ERROR_LOG})")
    log = (run / ERROR_LOG).read_text()
    assert "Traceback (most recent call last)" in log and "TooManyBadSamplesError" in log


def test_hung_decodes_are_one_line(tmp_path, capsys, monkeypatch):
    from data_pipelines import decode

    def hangs(data, pick):
        time.sleep(2.0)
        raise AssertionError("unreachable: the decode is abandoned first")

    monkeypatch.setitem(decode._BACKENDS, "pyav", hangs)
    videos = _garbage_videos(tmp_path / "videos", 8)
    argv = ["train", *TINY, "data.dataset=files", f"data.sources=[{{path: '{videos}'}}]", "data.decoder=pyav"]
    argv += ["data.num_workers=0", "data.decode_timeout_s=0.05", f"train.out_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("vjepa: error: 4 video decodes hung past data.decode_timeout_s=0.05"), line


def test_a_non_finite_loss_stop_is_one_line(tmp_path, capsys, monkeypatch):
    from vjepa import objective

    real_loss = objective.jepa_loss

    def poisoned(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(objective, "jepa_loss", poisoned)
    run = tmp_path / "run"
    assert main(["train", *TINY, "train.max_bad_steps=2", f"train.out_dir={run}"]) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("vjepa: error: 2 consecutive ") and "train.max_bad_steps=2" in line, line
    assert "LossGuardError" in (run / ERROR_LOG).read_text()


def test_every_data_stop_is_one_line(tmp_path, capsys, monkeypatch):
    import data_pipelines
    from vjepa.train import trainer

    for name in ("TooManyBadSamplesError", "HungDecodesError", "HungReadsError"):
        error = getattr(data_pipelines, name)

        def stops(cfg, error=error):
            raise error(f"{error.__name__} stopped the run\n(second line)")

        monkeypatch.setattr(trainer, "train", stops)
        assert main(["train", *TINY, f"train.out_dir={tmp_path / name}"]) == 2
        assert _error_lines(capsys) == [f"vjepa: error: {name} stopped the run; (second line)"]


def test_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    from vjepa.train import trainer

    def full(cfg):
        raise OSError(errno.ENOSPC, f"saving the checkpoint of step 4 into {cfg.train.out_dir} failed")

    monkeypatch.setattr(trainer, "train", full)
    assert main(["train", *TINY, f"train.out_dir={tmp_path / 'run'}"]) == 2
    assert _error_lines(capsys) == [
        f"vjepa: error: [Errno 28] saving the checkpoint of step 4 into {tmp_path / 'run'} failed"
    ]


# ----------------------------------------------------------------------------- the one-line form


def test_one_line_of_a_worker_error_is_its_original_message():
    from vjepa.cli import one_line

    wrapped = RuntimeError(
        "Caught TooManyBadSamplesError in DataLoader worker process 1.\n"
        "Original Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "    raise TooManyBadSamplesError(msg)\n"
        "data_pipelines.bad_samples.TooManyBadSamplesError: epoch 0 batch 3: no 2 loadable samples\n"
    )
    assert one_line(wrapped) == "epoch 0 batch 3: no 2 loadable samples"
    assert one_line(ValueError("first\n  second\n")) == "first; second"
    assert one_line(ValueError()) == "ValueError"

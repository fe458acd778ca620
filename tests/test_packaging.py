"""A regular (non-editable) install carries what `vjepa demo` and `vjepa bench` need: the bundled configs
and the benchmark modules. The wheel is built from a copy of the sources and unpacked outside the checkout;
a fresh interpreter run elsewhere must find everything there, not in the repository."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for name in ("vjepa", "data_pipelines", "benchmarks"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", "."]
    subprocess.run(cmd, cwd=src, check=True, capture_output=True, timeout=120)
    (wheel,) = (src / "dist").glob("vjepa-*.whl")
    return wheel


def test_wheel_ships_the_bundled_configs_and_the_benchmarks(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    bundled = {f"vjepa/configs/{p.name}" for p in (ROOT / "vjepa" / "configs").glob("*.yaml")}
    modules = {f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("*.py")}
    assert "vjepa/configs/quickstart.yaml" in bundled
    assert bundled <= names and modules <= names and "benchmarks/step.py" in modules

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import json, benchmarks, vjepa.config as c\n"
        "from vjepa.commands.bench import benchmark_names\n"
        "cfg = c.load_config('quickstart')\n"
        "print(json.dumps({'config': str(c.find_config('quickstart')), 'bench': benchmarks.__file__,\n"
        "                  'names': benchmark_names(), 'model': cfg.model.name}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # not the checkout: nothing may be found relative to it
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(found["config"]).is_relative_to(site) and Path(found["bench"]).is_relative_to(site)
    assert set(found["names"]) >= {"attention", "loader", "masks", "step"} and found["model"] == "vit_tiny"


def test_top_level_configs_link_to_the_bundled_files() -> None:
    """One copy of each bundled config: configs/NAME.yaml in a checkout is a link to vjepa/configs/NAME.yaml."""
    for bundled in (ROOT / "vjepa" / "configs").glob("*.yaml"):
        top = ROOT / "configs" / bundled.name
        assert top.is_symlink() and top.resolve() == bundled.resolve(), top

"""Rank / world / master discovery from torchrun's and SLURM's environments (fake environment dicts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vjepa.distributed.env import DistEnv, expand_nodelist, expand_tasks_per_node, first_host, read_env
from vjepa.distributed.process_group import export_torchrun_env

TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "4",
    "MASTER_ADDR": "node7",
    "MASTER_PORT": "29400",
}
SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "6",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "2",
    "SLURM_TASKS_PER_NODE": "2(x3)",
    "SLURM_JOB_NODELIST": "gpu[01-03]",
    "SLURM_JOB_ID": "123456",
}


def test_nothing_set_is_one_process() -> None:
    env = read_env({})
    assert env == DistEnv() and env.world_size == 1 and env.is_main and not env.distributed


def test_torchrun_variables() -> None:
    env = read_env(TORCHRUN)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 8, 1, 4)
    assert (env.master_addr, env.master_port, env.source) == ("node7", 29400, "torchrun")
    assert not env.is_main and env.distributed


def test_torchrun_wins_over_slurm() -> None:
    """torchrun under srun: both sets are present; torchrun's describe the training processes."""
    env = read_env({**SLURM, **TORCHRUN})
    assert env.source == "torchrun" and env.rank == 3 and env.world_size == 8


@pytest.mark.parametrize("missing", ["RANK", "WORLD_SIZE"])
def test_partial_torchrun_environment_is_an_error(missing: str) -> None:
    env = {k: v for k, v in TORCHRUN.items() if k != missing}
    with pytest.raises(ValueError, match=missing):
        read_env(env)


@pytest.mark.parametrize(
    "override, match",
    [
        ({"RANK": "8"}, "outside world size"),
        ({"LOCAL_RANK": "4"}, "local rank"),
        ({"RANK": "x"}, "RANK='x'"),
        ({"MASTER_PORT": "70000"}, "port"),
    ],
)
def test_inconsistent_torchrun_values(override: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_env({**TORCHRUN, **override})


def test_slurm_variables() -> None:
    env = read_env(SLURM)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (5, 6, 1, 2)
    assert env.master_addr == "gpu01" and env.source == "slurm"
    assert env.master_port == 20000 + 123456 % 20000  # same on every task of the job


def test_slurm_master_overrides() -> None:
    env = read_env({**SLURM, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "12345"})
    assert (env.master_addr, env.master_port) == ("10.0.0.1", 12345)


def test_slurm_uneven_tasks_per_node() -> None:
    """'4(x2),2': this task's node is the third, which runs 2 tasks."""
    env = read_env(
        {
            **SLURM,
            "SLURM_NTASKS": "10",
            "SLURM_PROCID": "9",
            "SLURM_TASKS_PER_NODE": "4(x2),2",
            "SLURM_NODEID": "2",
        }
    )
    assert env.local_world_size == 2 and env.world_size == 10


def test_slurm_node_found_by_name() -> None:
    env = read_env(
        {**SLURM, "SLURM_TASKS_PER_NODE": "1,3,2", "SLURM_NODEID": "0", "SLURMD_NODENAME": "gpu02"}
    )
    assert env.local_world_size == 3


def test_slurm_ntasks_per_node_is_a_fallback() -> None:
    env = {k: v for k, v in SLURM.items() if k != "SLURM_TASKS_PER_NODE"}
    assert read_env({**env, "SLURM_NTASKS_PER_NODE": "2"}).local_world_size == 2
    assert read_env({**env, "SLURM_LOCALID": "0"}).local_world_size == 1


def test_slurm_step_variables_win() -> None:
    """`srun -n2` inside a 6-task allocation: the step has 2 tasks on its own node list."""
    env = read_env(
        {
            **SLURM,
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_PROCID": "1",
            "SLURM_STEP_NODELIST": "gpu03",
            "SLURM_STEP_TASKS_PER_NODE": "2",
            "SLURM_NODEID": "0",
        }
    )
    assert (env.world_size, env.local_world_size, env.master_addr) == (2, 2, "gpu03")


def test_slurm_single_task_is_one_process() -> None:
    assert read_env({**SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == DistEnv()


def test_slurm_without_nodelist_is_an_error() -> None:
    env = {k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"}
    with pytest.raises(ValueError, match="NODELIST"):
        read_env(env)


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node1", ["node1"]),
        ("node1,node2", ["node1", "node2"]),
        ("host[01-04]", ["host01", "host02", "host03", "host04"]),
        ("gpu[003-005,9],cpu1", ["gpu003", "gpu004", "gpu005", "gpu9", "cpu1"]),
        ("n[08-11]", ["n08", "n09", "n10", "n11"]),
        ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
        ("a[7],b[1-2]-ib", ["a7", "b1-ib", "b2-ib"]),
    ],
)
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts
    assert first_host(nodelist) == hosts[0]


@pytest.mark.parametrize("bad", ["gpu[1-", "gpu1]", "gpu[3-1]", "gpu[a-b]", ""])
def test_bad_nodelist(bad: str) -> None:
    with pytest.raises(ValueError):
        expand_nodelist(bad)


@pytest.mark.parametrize(
    "spec, counts", [("2", [2]), ("2(x3)", [2, 2, 2]), ("4(x2),2", [4, 4, 2]), ("1,3,2", [1, 3, 2])]
)
def test_expand_tasks_per_node(spec: str, counts: list[int]) -> None:
    assert expand_tasks_per_node(spec) == counts


def test_bad_tasks_per_node() -> None:
    with pytest.raises(ValueError, match="tasks-per-node"):
        expand_tasks_per_node("2(3)")


def test_export_torchrun_env_fills_only_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a bare srun, DeepSpeed and env:// need torchrun's names; values already set are kept."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "placeholder")
        monkeypatch.delenv(key)
    monkeypatch.setenv("MASTER_PORT", "4242")
    export_torchrun_env(read_env(SLURM))
    assert os.environ["RANK"] == "5" and os.environ["WORLD_SIZE"] == "6" and os.environ["LOCAL_RANK"] == "1"
    assert os.environ["MASTER_ADDR"] == "gpu01" and os.environ["MASTER_PORT"] == "4242"


def test_cli_help_imports_no_heavy_dependency() -> None:
    """`vjepa --help` builds every subcommand's parser; the commands import their dependencies when they
    run. A fresh interpreter, so that modules imported by other tests do not count."""
    heavy = ["deepspeed", "av", "decord", "webdataset", "matplotlib", "tensorboard", "torch", "torchvision"]
    code = (
        "import json, sys\n"
        "import vjepa.cli\n"
        "vjepa.cli.build_parser().format_help()\n"
        f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

"""A real one-node SLURM cluster for the launch tests: munged, slurmctld and slurmd from Debian's packages,
configured in a temporary folder (its own ports, state and spool folders, `SLURM_CONF` pointing there), and
stopped again afterwards. Only what this module started is stopped (a munged already running is reused).

What makes it start on these machines: munged needs /run/munge owned by the munge user (and its key and
log folders too); slurm.conf names this host with CPUs=2, ProctrackType=proctrack/linuxproc,
TaskPlugin=task/none and SlurmUser=root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ports import free_port

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _munge_alive() -> bool:
    probe = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, timeout=10)
    return probe.returncode == 0


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    started: list[Path] = field(default_factory=list)  # pid files of the daemons started here
    munged_pid: int | None = None

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def job(self, job_id: str) -> dict[str, str]:
        """The fields of `scontrol show job` (JobState, Restarts, ...)."""
        out = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.is_file():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        for pid_file in reversed(self.started):
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        if self.munged_pid is not None:
            try:
                os.kill(self.munged_pid, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.time() + 15
        for pid_file in self.started:
            while pid_file.exists() and time.time() < deadline:
                time.sleep(0.2)


def _start_munge(cluster: SlurmCluster) -> None:
    if Path("/run/munge/munge.socket.2").exists() and _munge_alive():
        return
    for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge", "/etc/munge"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    if not Path("/etc/munge/munge.key").is_file():
        subprocess.run(["mungekey", "--create"], check=True, capture_output=True)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "munged --force"], check=True, capture_output=True)
    pid_file = Path("/run/munge/munged.pid")
    deadline = time.time() + 10
    while not _munge_alive() and time.time() < deadline:
        time.sleep(0.2)
    if not _munge_alive():
        raise RuntimeError("munged did not start")
    cluster.munged_pid = int(pid_file.read_text().strip()) if pid_file.is_file() else None


def start_cluster(root: Path) -> SlurmCluster:
    """Starts the daemons; raises RuntimeError with their log tails when they do not come up."""
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=vjepatest",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                "AuthType=auth/munge",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "ReturnToService=2",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "MpiDefault=none",
                "JobRequeue=1",
                "KillWait=30",
                "MinJobAge=600",  # keep finished jobs visible to `scontrol show job`
                f"NodeName={host} CPUs=2 State=UNKNOWN",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    cluster = SlurmCluster(root, env={**os.environ, "SLURM_CONF": str(conf)})
    try:
        _start_munge(cluster)
        for daemon, pid_file in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            cluster.run(daemon)
            cluster.started.append(root / pid_file)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = cluster.run("sinfo", "--noheader", "--format=%t", check=False).stdout.strip()
            if state == "idle":
                return cluster
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node did not become idle (sinfo: {state!r})\n{cluster.logs()}")
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        cluster.stop()
        raise RuntimeError(f"SLURM could not start: {err}\n{cluster.logs()}") from err

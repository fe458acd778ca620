"""Stopping on a signal without losing work: SIGUSR1 (SLURM's warning before the time limit), SIGTERM
(preemption, `scancel`, a torchrun agent stopping its workers) and SIGINT (Ctrl-C) ask the training loop to
finish the current step, write a checkpoint and stop.

The handler only records the first signal; the loop acts on it between steps, so a signal never interrupts a
step or a save, and later signals (a second Ctrl-C during the save) are counted and otherwise ignored. All
ranks agree on the step to stop after (the trainer reduces the flag across ranks every step), because one
rank saving alone would hang the others in the checkpoint's collectives.

Data-loader workers ignore these signals (data_pipelines/loader.py) so that the stream survives until the
main process has saved.

Requeueing is the job script's business (launch/slurm/pretrain.sbatch): the process saves and exits 0, the
script sees the signal it forwarded and runs `scontrol requeue`; the requeued job resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager that turns STOP_SIGNALS into a stop request for the training loop (main thread only;
    elsewhere, e.g. a library caller's worker thread, signals keep their previous handlers)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.ignored = 0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            log.warning(
                "%s received: finishing the current step, then writing a checkpoint and stopping",
                signal.Signals(signum).name,
            )
        else:
            self.ignored += 1
            log.warning("%s received again: already stopping after a checkpoint", signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def stop_with_launcher() -> bool:
    """Under a torchrun agent: asks Linux to send this worker SIGTERM when the agent dies, so an orphaned
    worker saves and stops instead of training on beside the job that replaces it (two jobs would write
    one run folder). -> whether the request was made (Linux under torchrun only)."""
    import ctypes
    import os
    import sys

    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("could not ask to be stopped with the torchrun agent (errno %d)", ctypes.get_errno())
        return False
    if os.getppid() != parent:  # the agent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True

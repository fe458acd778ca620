"""Free TCP ports for the tests' launchers (torchrun agents, SLURM daemons)."""

from __future__ import annotations

import random
import socket


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(span: int = 1) -> int:
    """A port P such that P .. P+span-1 are free now, drawn below Linux's ephemeral range (32768 and up).

    Outgoing connections take their local ports from the ephemeral range, so a port next to one the kernel
    handed out (what binding port 0 gives) may be taken a moment later; an elastic torchrun group needs
    MASTER_PORT + 1 as well (`vjepa.distributed.process_group.fresh_store`)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000 - span)
        if all(_bindable(port + i) for i in range(span)):
            return port
    raise RuntimeError("no free port range found between 20000 and 32000")

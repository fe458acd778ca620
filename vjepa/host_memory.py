"""Host-memory reuse for CPU training: keep the pages a step frees for the next step.

A training step allocates and frees the same few hundred megabytes of activations every step. glibc's malloc
serves every block over its mmap threshold with a fresh mmap and unmaps it on free, and returns the top of
the heap to the system past its trim threshold; the next step then takes a page fault on every 4 KiB page it
writes. Measured on vit_tiny 8x112 batch 4 (one thread, the 2-core development VM): about 125,000 minor
faults and 0.4 s of system time per step with glibc's defaults, under 500 faults with the settings below;
the step was 1.01-1.12x faster in three paired runs (`benchmarks/step_pair.py --before .
--before-set train.host_memory=release --after .`; the machine is shared and noisy).

`keep_freed_memory()` sets, through mallopt(3):
  M_MMAP_THRESHOLD 32 MiB  blocks up to 32 MiB (the largest glibc accepts) come from the heap, not mmap;
  M_TRIM_THRESHOLD 2 GiB   freed heap memory stays with the process instead of going back to the system;
  M_TOP_PAD 64 MiB         the heap grows in larger steps.
The cost: the process keeps its peak heap (its resident memory does not shrink after a step). Blocks over
32 MiB are still mapped per allocation. `train.host_memory: release` leaves malloc as the system set it.
Processes forked afterwards (data-loader workers) inherit the settings. It does nothing where the C library
is not glibc (musl, macOS, Windows) and reports that by returning False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: (2 << 30) - 1, M_TOP_PAD: 64 << 20}


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it; its mallopt takes these parameters)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):
        return None
    return libc


@functools.cache
def keep_freed_memory() -> bool:
    """Sets the malloc parameters above once per process; True where all of them took effect."""
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items())


def apply(policy: str) -> bool:
    """`train.host_memory`: "keep" (the default) calls keep_freed_memory(); "release" changes nothing."""
    if policy not in ("keep", "release"):
        raise ValueError(f"train.host_memory: unknown policy {policy!r} (choose from 'keep', 'release')")
    return keep_freed_memory() if policy == "keep" else False

"""Keeping the C allocator from handing activation memory back to the system between batches.

glibc serves the large buffers of a forward pass with ``mmap`` and returns them with ``munmap``
when they are freed, so the next batch maps fresh memory that the kernel zero-fills page by
page. Fixing the ``mmap`` and trim thresholds, as jemalloc and tcmalloc do by default (the
allocators PyTorch's CPU tuning guide recommends), lets freed buffers be reused: CPU inference
of EfficientNet-Lite0 runs about 1.5x faster here (benchmarks/pipeline.py). The command line and
the benchmarks call :func:`keep_freed_memory` once at start; ``GDF_MALLOC_TUNING=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import logging
import os
from functools import lru_cache

log = logging.getLogger(__name__)

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: blocks below it come from the reusable heap
TRIM_THRESHOLD = 512 * 2**20  # free memory kept at the top of the heap before returning it


@lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Sets glibc's ``mmap`` and trim thresholds once per process; ``False`` where the C library
    is not glibc (nothing changes there) or ``GDF_MALLOC_TUNING=0``."""
    if os.environ.get("GDF_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    log.debug("glibc mmap threshold %d, trim threshold %d: %s", MMAP_THRESHOLD, TRIM_THRESHOLD, done)
    return done

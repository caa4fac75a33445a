"""The machine a process runs on: what it is (for benchmarks/RESULTS.md rows; reads /proc only when called) and
handing freed memory back to it (:func:`release_memory`)."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """``<cpu>, <n> cores, Python <version>``."""
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def release_memory() -> None:
    """Hand freed heap memory back to the operating system: Arrow's pool (mimalloc/jemalloc keep freed pages for
    reuse) and glibc's malloc arenas (``malloc_trim``; faiss's OpenMP threads each grow an arena). For loops that
    hold one large item at a time (an index build per modality): without it the freed pages of one item stay in
    the process's RSS while the next is built (at 100k patients the index build's peak 307 → ~270 MB, see
    benchmarks/RESULTS.md). Never required for correctness; a no-op where neither is available."""
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except Exception:  # pragma: no cover - an older pyarrow without release_unused
        pass
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass

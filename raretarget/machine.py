"""What machine a benchmark ran on (for benchmarks/RESULTS.md rows). Reads /proc only when called."""

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

"""Where the encoders run: ``device="auto"`` resolution, mixed precision for inference, DataLoader
worker counts and host→device moves.

* :func:`resolve_device` – ``"auto"``/``None`` → CUDA when present, else CPU; anything else as given.
* :func:`inference_autocast` – bf16 autocast on CUDA (fp16 where bf16 is unsupported), nothing on CPU,
  so CPU results stay bit-identical to plain float32.
* :func:`resolve_workers` – ``"auto"`` → ``min(4, cpu_count - 1)`` DataLoader workers (0 on one core).
* :func:`to_device` – nested dicts/lists of tensors → ``device`` (pinned + non-blocking for CUDA).

Every tensor the encoders create is placed explicitly: on the device of the tensors it is combined
with, or on ``"cpu"`` for host-side work (collation, seeded random tables); ``tests/test_device.py``
checks that under a torch function mode that refuses factory calls without ``device=``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch


def resolve_device(device: "str | torch.device | None" = "auto") -> torch.device:
    """``"auto"`` or ``None`` → ``cuda`` when a CUDA device is visible, else ``cpu``; any other value is
    passed to :class:`torch.device` (``"cpu"``, ``"cuda:1"``, ...)."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def inference_autocast(device: "str | torch.device", enabled: bool | None = None):
    """Context for inference on ``device``: bf16 autocast on CUDA (fp16 when the GPU lacks bf16), a no-op
    elsewhere. ``enabled=True`` forces bf16 autocast on CPU too (tests use it to run the GPU's
    mixed-precision path on CPU); ``False`` turns it off. Outputs are cast to float32 by the callers
    (:func:`raretarget.encoders.base.normalize`)."""
    dev = torch.device(device)
    on = (dev.type == "cuda") if enabled is None else bool(enabled)
    if not on:
        return contextlib.nullcontext()
    dtype = torch.bfloat16
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(device_type=dev.type, dtype=dtype)


def resolve_workers(n: "int | str | None") -> int:
    """DataLoader workers: an int as given (≥ 0); ``"auto"``/``None`` → ``min(4, cpu_count - 1)``, i.e. one
    core stays with the training process and small machines get 0–1 workers."""
    if n is None or (isinstance(n, str) and n == "auto"):
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(0, min(4, cpus - 1))
    return max(0, int(n))


def to_device(x: Any, device: "str | torch.device", pin: bool | None = None) -> Any:
    """Tensors in nested dicts/lists/tuples → ``device``. For a CUDA target the host tensors are pinned
    first (``pin=None``: when CUDA) and copied non-blocking, so the copy overlaps the previous batch's
    compute; other values pass through."""
    dev = torch.device(device)
    pin = dev.type == "cuda" if pin is None else pin
    if isinstance(x, torch.Tensor):
        if x.device == dev:
            return x
        if pin and x.device.type == "cpu":
            return x.pin_memory().to(dev, non_blocking=True)
        return x.to(dev)
    if isinstance(x, dict):
        return {k: to_device(v, dev, pin) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in x):
        return type(x)(to_device(v, dev, pin) for v in x)
    return x

"""Device and precision choices: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import contextlib
import logging
import os

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
_ANNOUNCED: set[str] = set()


def default_device() -> str:
    """Return the best available device name; under torchrun, this process's own GPU."""
    if torch.cuda.is_available():
        rank = os.environ.get("LOCAL_RANK")
        return f"cuda:{rank}" if rank is not None else "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def fast_bf16(device: str | torch.device) -> bool:
    """Whether bf16 runs natively here (CUDA with bf16, or a CPU with AMX / AVX-512 bf16).

    CPUs without those instructions emulate bf16 and run it slower than fp32.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return False


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """Turn `"auto"` into bf16 where it is fast, else fp32; check other values.

    Raises:
        ValueError: If `precision` is unknown.
    """
    if precision == "auto":
        chosen = "bf16" if fast_bf16(device) else "fp32"
        kind = torch.device(device).type
        # Once per device type: scoring calls this on every predict().
        if kind not in _ANNOUNCED:
            _ANNOUNCED.add(kind)
            logger.info("precision auto -> %s on %s", chosen, kind)
        return chosen
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Return an autocast context for `precision` on `device` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)

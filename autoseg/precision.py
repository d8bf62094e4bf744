"""Where the network computes (:func:`resolve_device`) and in which floating-point type (autocast), for training
and prediction alike.

``auto`` is fp16 on CUDA (nnU-Net's default, with a GradScaler when training), bf16 on a CPU that
computes bf16 natively (AVX512-BF16 or AMX: about 2x faster training steps and inference on the
2-core benchmark machine, docs/performance.md) and fp32 elsewhere. Weights, optimizer state and the
loss reduction stay fp32 in every case.
"""

from __future__ import annotations

import re

import torch

from autoseg.errors import fail

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def compute_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device``; None means plain fp32."""
    if precision not in PRECISIONS:
        raise fail(None, f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def cpu_has_bf16() -> bool:
    """The CPU computes bf16 natively (oneDNN says so); emulated bf16 would be slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def dtype_name(dtype: torch.dtype | None) -> str:
    """How logs and benchmarks name a compute dtype (None is fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) as a device: ``auto`` is CUDA when a GPU is visible,
    else the CPU; a CUDA device becomes the current one, GPU ``local_rank`` for a DDP rank. CUDA without a GPU
    or an unknown name is a one-line error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", name):
        raise fail(None, f"--device {name!r} is not known", "use cuda, cuda:N, cpu or auto")
    if not torch.cuda.is_available():
        raise fail(None, "--device cuda asked for, but no CUDA GPU is visible", "use --device cpu or auto")
    device = torch.device("cuda", local_rank if local_rank is not None else torch.device(name).index or 0)
    torch.cuda.set_device(device)
    return device

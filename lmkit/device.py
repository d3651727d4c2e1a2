"""Choosing the device to run on ("auto" picks cuda, then mps, then cpu; a named device must be present) and
the autocast dtype to compute in there."""

from __future__ import annotations

import contextlib
import re

import torch

from lmkit.errors import InputError

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"


def resolve_device(name: str, option: str = "device") -> torch.device:
    """The torch device for `name` ("auto", "cpu", "mps", "cuda" or "cuda:N").

    InputError, naming `option` (e.g. "train.device" or "--device"), if the name is unknown or the
    device is not available on this machine.
    """
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise InputError(f"unknown device {name!r} for {option}; use auto, cpu, mps, cuda or cuda:N")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f'{option} is "{name}" but no CUDA GPU is visible; use "auto" or "cpu"')
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f'{option} is "mps" but MPS is not available; use "auto" or "cpu"')
    return device


def resolve_autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `name` ("auto", "bfloat16", "float16" or "float32") on `device` (None: plain float32).

    "auto" uses bfloat16 only on a CUDA GPU that supports it; on CPUs and MPS bfloat16 is usually slower than
    float32 or unsupported, so "auto" keeps float32 there. "float16" is for GPUs without bfloat16; training
    with it needs loss scaling.
    """
    if name == "float16":
        return torch.float16
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if name == "float32" or (name == "auto" and not cuda_bf16):
        return None
    if device.type == "cuda" and not cuda_bf16:
        raise InputError('this GPU does not support bfloat16; set train.dtype = "float16" or "float32"')
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (nothing when `dtype` is None: plain float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

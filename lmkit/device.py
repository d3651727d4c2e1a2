"""Choosing the device to run on ("auto" picks cuda, then mps, then cpu; a named device must be present) and
the autocast dtype to compute in there."""

from __future__ import annotations

import contextlib
import re

import torch

from lmkit.errors import InputError

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
INFERENCE_DTYPES = ("auto", "bfloat16", "float16", "float32")


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


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU from Ampere on (torch's plain
    is_bf16_supported() also counts the slow emulation on a V100 or T4), a Mac on macOS 14 or later; CPUs do."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "mps":
        return torch.backends.mps.is_macos_or_newer(14, 0)
    return True


def resolve_autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `name` ("auto", "bfloat16", "float16" or "float32") on `device` (None: plain float32).

    "auto" uses bfloat16 on a CUDA GPU that has it natively and float16 (trained with loss scaling) on one
    without (V100, T4); on CPUs and MPS bfloat16 is usually slower than float32, so "auto" keeps float32
    there. InputError for bfloat16 where the device only emulates it or cannot run it.
    """
    if name == "float16":
        return torch.float16
    if name == "float32" or (name == "auto" and device.type != "cuda"):
        return None
    if has_native_bf16(device):
        return torch.bfloat16
    if name == "auto":
        return torch.float16
    raise InputError(_no_bf16_message(device, 'set train.dtype = "float16" or "float32"'))


def resolve_inference_dtype(name: str, device: torch.device, option: str = "--dtype") -> torch.dtype:
    """The dtype to hold a model in for generation: "auto" is bfloat16 on a CUDA GPU that has it natively
    (half the memory and KV cache of float32, and the flash attention kernel), else float32; "bfloat16",
    "float16" and "float32" as named. InputError, naming `option`, for bfloat16 the device cannot run natively.
    """
    if name not in INFERENCE_DTYPES:
        raise InputError(f"unknown {option} {name!r}; use {', '.join(INFERENCE_DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and has_native_bf16(device) else torch.float32
    if name == "bfloat16" and not has_native_bf16(device):
        raise InputError(_no_bf16_message(device, f"use {option} float16 or float32"))
    return getattr(torch, name)


def _no_bf16_message(device: torch.device, advice: str) -> str:
    if device.type == "mps":
        return f"bfloat16 on MPS needs macOS 14 or later; {advice}"
    return f"this GPU has no native bfloat16 (only a slow emulation); {advice}"


def use_tf32(device: torch.device) -> None:
    """On CUDA let float32 matmuls and convolutions run on TF32 tensor cores (as bf16 autocast already
    gives up more precision than that); elsewhere nothing changes."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (nothing when `dtype` is None: plain float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

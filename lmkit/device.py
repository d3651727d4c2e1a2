"""Choosing the device to run on: "auto" picks cuda, then mps, then cpu; a named device must be present."""

from __future__ import annotations

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

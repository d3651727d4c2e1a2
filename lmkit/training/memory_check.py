"""Refuse a run that cannot fit before building anything: the accounting module's memory estimate against
the device's memory (a config with d_model 2^20 or a batch of 10^8 would otherwise fail minutes later)."""

from __future__ import annotations

import os

import torch

from lmkit.accounting import GB, training_memory
from lmkit.errors import InputError
from lmkit.model import ModelConfig

_INT64_BYTES = 8


def host_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory_bytes(device: torch.device) -> int | None:
    """The memory a model on `device` can use: the GPU's own, else (CPU, Apple's unified memory) the host's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return host_memory_bytes()


# What a training step holds beyond the accounting's count (measured on CPU across shapes from 16 x 5,000 layers
# to 1,024 x 1, tests/test_memory_estimate.py): autograd keeps about 1.3x the activations counted there (the
# norms' statistics, the rotated queries and keys, SwiGLU's gate), and each block costs ~128 KB of graph
# bookkeeping and small buffers whatever its width, which dominates a deep, narrow model.
ACTIVATIONS_KEPT = 1.3
BYTES_PER_BLOCK = 128 * 1024


def training_bytes(model: ModelConfig, rows: int, shards: int = 1, compute_dtype: torch.dtype | None = None) -> int:
    """Estimated bytes to train `model` on `rows` sequences per micro-batch with AdamW, with the float32
    weights, gradients and optimizer state split over `shards` processes (FSDP) or whole (1), and the
    activations in float32, or half that under a 16-bit autocast `compute_dtype`, with what autograd keeps
    beyond them (ACTIVATIONS_KEPT, BYTES_PER_BLOCK)."""
    memory = training_memory(model, model.context_length)
    activations = memory["activations_per_sequence"] * ACTIVATIONS_KEPT
    if compute_dtype is not None and compute_dtype.itemsize == 2:
        activations /= 2
    return memory["fixed"] // shards + int(rows * activations) + model.num_layers * BYTES_PER_BLOCK


def check_run_fits(
    model: ModelConfig,
    batch_size: int,
    eval_batches: int,
    rows: int,
    device: torch.device,
    shards: int = 1,
    compute_dtype: torch.dtype | None = None,
) -> None:
    """InputError with the figures if training (on `device`, activations in `compute_dtype`) or the fixed
    validation batches (in host memory) would need more memory than there is. The estimate is
    docs/accounting.md's, with 16-bit activations under bfloat16 or float16 autocast."""
    needed, available = training_bytes(model, rows, shards, compute_dtype), device_memory_bytes(device)
    if available is not None and needed > available:
        raise InputError(
            f"this run needs about {needed / GB:,.1f} GB to train (weights, gradients, AdamW state and "
            f"activations of {rows:,} sequences; see `lmkit model flops`), more than the {available / GB:,.1f} GB "
            f"of {device.type}; make the model or train.batch_size smaller"
        )
    validation = batch_size * eval_batches * (model.context_length + 1) * _INT64_BYTES
    host = host_memory_bytes()
    if host is not None and validation > host:
        raise InputError(
            f"the fixed validation batches (train.batch_size x train.eval_batches windows) need "
            f"{validation / GB:,.1f} GB, more than this machine's {host / GB:,.1f} GB; lower train.batch_size "
            "or train.eval_batches"
        )

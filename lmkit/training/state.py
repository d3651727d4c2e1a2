"""The random state a run checkpoints, so a resumed run draws what the unbroken run would have drawn.

A checkpoint's `rng` holds `torch` (the CPU generator), `cuda` (the generator of this process's CUDA device,
or None without one) and `batches` (the batch sampler's generator). Each process seeds and draws on its own
device only, so one device's state is all a process needs: saving every visible device's state (what older
checkpoints hold, a list) costs a copy per GPU on the node and restores other processes' devices for nothing.
Restoring still reads such a list, taking the entry of the current device.
"""

from __future__ import annotations

from typing import Any

import torch


def rng_state(batches: torch.Tensor) -> dict[str, Any]:
    """The generators' states to put in a checkpoint, with `batches` the state of the generator that draws
    the training batches (as of the next batch a resumed run must draw)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "batches": batches,
    }


def restore_rng(state: dict[str, Any], batch_rng: torch.Generator) -> None:
    """Put the generators back as `rng_state` saved them (from this lmkit or an older one)."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        cuda = cuda_state_for(state["cuda"], torch.cuda.current_device())
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)
    batch_rng.set_state(state["batches"])


def cuda_state_for(saved: torch.Tensor | list[torch.Tensor] | None, device_index: int) -> torch.Tensor | None:
    """The CUDA generator state to restore on device `device_index` from a checkpoint's `rng["cuda"]`: one
    state as saved, or from an older checkpoint's list of every device's states the current device's entry
    (the last one where the list is shorter, as when the run was written on fewer GPUs); None when the run
    was written without CUDA."""
    if isinstance(saved, list):
        return saved[min(device_index, len(saved) - 1)] if saved else None
    return saved

"""Model FLOPs utilisation (MFU): the share of the accelerators' peak that training turns into model FLOPs.

MFU = tokens/s x training FLOPs per token / (peak FLOP/s per device x devices). The FLOPs per token are
lmkit.accounting's (forward + backward = 3 x the forward's matrix products, attention over the whole
context); the peak is `train.peak_tflops` when set, else looked up by the GPU's name in PEAK_TFLOPS for the
precision the run computes in. On a CPU, on mps and on a GPU not in the table MFU is left out unless
`train.peak_tflops` is given.
"""

from __future__ import annotations

import re

import torch

from lmkit.accounting import train_step_flops
from lmkit.model.config import ModelConfig

# Dense tensor-core peaks in TFLOP/s from the vendors' data sheets (no sparsity): (name pattern, 16-bit, 32-bit).
# "16-bit" is bfloat16 (float16 on V100 and T4, which have no bfloat16). "32-bit" is what a float32 run
# reaches: lmkit enables TF32 matmuls on CUDA, so it is the TF32 peak on GPUs that have TF32, plain FP32 on
# V100 and T4. Patterns are tried in order against torch.cuda.get_device_name().
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    (r"\bH[12]00\b.*\bNVL\b", 835.5, 417.5),  # the PCIe NVL cards of either, at a lower power
    (r"\bH200\b", 989.0, 494.7),
    (r"\bH100\b.*\bPCIe\b", 756.0, 378.0),
    (r"\bH100\b", 989.0, 494.7),  # SXM (reported as "H100 80GB HBM3")
    (r"\bA100\b", 312.0, 156.0),
    (r"\bL4\b", 121.0, 60.0),
    (r"\bA10\b", 125.0, 62.5),
    (r"\bRTX 4090\b", 165.2, 82.6),
    (r"\bV100\b", 125.0, 15.7),
    (r"\bT4\b", 65.0, 8.1),
]


def table_peak_tflops(device_name: str, half_precision: bool) -> float | None:
    """The peak TFLOP/s of the GPU called `device_name` for 16-bit (`half_precision`) or float32 training,
    or None when it is not in PEAK_TFLOPS."""
    for pattern, half, single in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return half if half_precision else single
    return None


def device_peak_tflops(
    device: torch.device, autocast_dtype: torch.dtype | None, configured: float | None = None
) -> float | None:
    """The peak to measure MFU against: `configured` (train.peak_tflops) if given, else the table's figure for
    this CUDA GPU at the run's precision, else None (CPU, mps, or a GPU the table does not know)."""
    if configured is not None:
        return configured
    if device.type != "cuda":
        return None
    return table_peak_tflops(torch.cuda.get_device_name(device), half_precision=autocast_dtype is not None)


def training_flops_per_token(config: ModelConfig) -> float:
    """Training FLOPs per token at full context: one training step on one sequence, divided by its length."""
    return train_step_flops(config, config.context_length, 1) / config.context_length


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float, devices: int = 1) -> float:
    """Achieved training FLOP/s (tokens/s x FLOPs per token) over the peak of `devices` devices."""
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12 * devices)

"""The learning-rate schedule: linear warmup, cosine decay, then a constant floor."""

from __future__ import annotations

import math


def get_lr_cosine_schedule(
    it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int, cosine_cycle_iters: int
) -> float:
    """The learning rate at iteration `it`.

    `it < warmup_iters`: `max * it / warmup_iters`; `warmup_iters <= it <= cosine_cycle_iters`:
    `min + (1 + cos(pi * (it - warmup) / (cycle - warmup))) / 2 * (max - min)`; afterwards `min`.
    """
    if it < warmup_iters:
        return max_learning_rate * it / warmup_iters
    if it > cosine_cycle_iters:
        return min_learning_rate
    if cosine_cycle_iters == warmup_iters:  # a zero-length decay: the peak is the only point on it
        return max_learning_rate
    progress = (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)
    return min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (max_learning_rate - min_learning_rate)

"""Training: the loss, AdamW and Muon, the schedule, clipping, batches, checkpoints, and the loop behind `lmkit train`.

See docs/training.md for the loop, the config reference and resume.
"""

from lmkit.checkpoint import load_checkpoint, load_inference_checkpoint, save_checkpoint
from lmkit.training.data import get_batch
from lmkit.training.loss import cross_entropy
from lmkit.training.muon import Muon, newton_schulz
from lmkit.training.optim import AdamW, clip_grad_norm
from lmkit.training.schedule import get_lr_cosine_schedule

__all__ = [
    "cross_entropy",
    "AdamW",
    "Muon",
    "newton_schulz",
    "get_lr_cosine_schedule",
    "clip_grad_norm",
    "get_batch",
    "save_checkpoint",
    "load_checkpoint",
    "load_inference_checkpoint",
]

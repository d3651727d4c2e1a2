"""Evaluation: loss, perplexity and bits per byte over a text or token array, and multiple-choice scoring.

See docs/evaluation.md for the formulas and how to compare runs.
"""

from lmkit.bpb import bits_per_byte, token_byte_lengths
from lmkit.evaluation.perplexity import EvalResult, evaluate

__all__ = ["bits_per_byte", "token_byte_lengths", "EvalResult", "evaluate"]

"""Samples while training: every `train.sample_every` steps a short continuation of `train.sample_prompt`,
shown with the run's other lines and appended to samples.jsonl in the run folder, so a run can be watched
learning to write and read back afterwards.

Sampling draws from its own generator, seeded with the run's seed at every sample (so samples differ only as
the model does), and leaves the run's random state alone: a run with samples trains exactly as one without.
Every process samples (a sharded model needs all of them for a forward pass); only the first writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmkit.generate import generate
from lmkit.model import TransformerLM
from lmkit.tokenizer import Tokenizer

SAMPLES_FILE = "samples.jsonl"
SAMPLE_TEMPERATURE = 0.8


def training_sample(model: TransformerLM, tokenizer: Tokenizer, prompt: str, tokens: int, seed: int) -> str:
    """`tokens` new tokens (at most) continuing `prompt`, sampled at temperature 0.8; the model is left in
    training mode."""
    model.eval()
    try:
        options = {"max_new_tokens": tokens, "temperature": SAMPLE_TEMPERATURE, "seed": seed}
        return generate(model, tokenizer, prompt, **options).text
    finally:
        model.train()


def record_sample(out_dir: Path, step: int, prompt: str, text: str) -> None:
    """Append one sample to the run folder's samples.jsonl."""
    with (out_dir / SAMPLES_FILE).open("a", encoding="utf-8") as log:
        log.write(json.dumps({"step": step, "prompt": prompt, "text": text}, ensure_ascii=False) + "\n")

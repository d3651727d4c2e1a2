"""Evaluation speed of lmkit.evaluation.evaluate against a plain PyTorch scoring loop, and the cost of encoding a
text on the fly.

The TinyStories-shape model (vocab 10000, d_model 512, 4 layers, 16 heads, d_ff 1344, context 256), randomly
initialised, float32 on the CPU, batch 8, non-overlapping windows over the same ids:
- plain: the loop one would write by hand (nanoGPT's estimate_loss over consecutive windows): slice (B, T + 1)
  windows out of the array, F.cross_entropy with reduction="sum", add up.
- lmkit (.npy): `evaluate` on the token array (streamed windows, byte counting, lmkit's cross_entropy).
- lmkit (text): `evaluate` on the text those ids came from, encoded chunk by chunk while scoring.
The ids are the bundled Tiny Shakespeare encoded by a byte-level BPE tokenizer of 10,000 ids trained on it
(ids above the tokenizer's vocabulary do not occur). Each side runs `--rounds` times, alternating; the best
round of each is quoted, and the ratios. The losses are printed: the three score the same windows.

    python benchmarks/eval.py
    python benchmarks/eval.py --tokens 50000 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import lmkit
from lmkit.evaluation import evaluate
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer, train_bpe

SHAKESPEARE = Path(lmkit.__file__).parent / "data" / "tinyshakespeare.txt"
TINYSTORIES = ModelConfig(vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344)


@torch.inference_mode()
def plain(model: TransformerLM, ids: np.ndarray, batch_size: int) -> tuple[float, int]:
    """(mean loss, tokens scored) over consecutive non-overlapping windows, written the obvious way."""
    context = model.config.context_length
    starts = list(range(0, len(ids) - context, context))
    total, count = 0.0, 0
    for first in range(0, len(starts), batch_size):
        rows = np.stack([ids[s : s + context + 1] for s in starts[first : first + batch_size]]).astype(np.int64)
        window = torch.from_numpy(rows)
        logits = model(window[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten(), reduction="sum").item()
        count += window[:, 1:].numel()
    return total / count, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000, help="ids to score (a prefix of the corpus)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = Tokenizer(*train_bpe(SHAKESPEARE, TINYSTORIES.vocab_size, []), [])
        text = SHAKESPEARE.read_text()
        all_ids = np.array(tokenizer.encode(text), dtype=np.uint16)
        ids = all_ids[: args.tokens + 1]  # the plain loop's windows: whole ones only, as lmkit's when it fits
        ids = ids[: (len(ids) - 1) // TINYSTORIES.context_length * TINYSTORIES.context_length + 1]
        cut = len(tokenizer.decode(ids.tolist()).encode())
        text_path, npy_path = Path(folder) / "text.txt", Path(folder) / "ids.npy"
        text_path.write_bytes(text.encode()[:cut])
        np.save(npy_path, ids)
        torch.manual_seed(0)
        model = TransformerLM(TINYSTORIES).eval()
        sides = {
            "plain": lambda: plain(model, ids, args.batch_size),
            "lmkit (.npy)": lambda: _lmkit(model, tokenizer, npy_path, args.batch_size),
            "lmkit (text)": lambda: _lmkit(model, tokenizer, text_path, args.batch_size),
        }
        best = {name: 0.0 for name in sides}
        losses = {}
        for _ in range(args.rounds):
            for name, run in sides.items():
                start = time.perf_counter()
                loss, count = run()
                best[name] = max(best[name], count / (time.perf_counter() - start))
                losses[name] = (loss, count)
    print(f"threads {torch.get_num_threads()}, {losses['plain'][1]:,} tokens, batch {args.batch_size}")
    for name in sides:
        loss, count = losses[name]
        print(f"{name:14s} {best[name]:10,.0f} tokens/s   loss {loss:.6f} over {count:,} tokens")
    for name in ("lmkit (.npy)", "lmkit (text)"):
        print(f"{name} / plain: {best[name] / best['plain']:.2f}")


def _lmkit(model: TransformerLM, tokenizer: Tokenizer, data: Path, batch_size: int) -> tuple[float, int]:
    result = evaluate(model, tokenizer, data, batch_size=batch_size)
    return result.loss, result.tokens


if __name__ == "__main__":
    main()

"""Generation speed with the KV cache against recomputing the whole sequence for every new token.

The TinyStories-shape model (vocab 10000, d_model 512, 4 layers, 16 heads, d_ff 1344, context 256), randomly
initialised, float32 on the CPU, batch 1: greedy decoding of 256 new tokens after a 16-token prompt.
- cached: lmkit.generate.DecodeSession, the loop behind `lmkit generate` (prompt fed once, then one token per
  step; the window slides once, at position 256).
- recompute: the loop without a cache, as in nanoGPT's sampler: every step runs the model over the whole
  sequence so far, cropped to its last 256 tokens, and takes the last position's logits.
Each side runs `--rounds` times, alternating; the best round of each is quoted, and the ratio.
Both must pick the same tokens until the window first slides (checked and printed).

    python benchmarks/generate.py
    python benchmarks/generate.py --new-tokens 256 --prompt-tokens 16 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from lmkit.generate import DecodeSession, generation_config
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer

TINYSTORIES = ModelConfig(vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row."""
    return logits.argmax(dim=-1)


def cached(model: TransformerLM, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding through lmkit's KV-cache loop (a tokenizer with no end of text: nothing stops it early)."""
    vocab = {i: bytes([i]) if i < 256 else f"<{i}>".encode() for i in range(model.config.vocab_size)}
    tokenizer = Tokenizer(vocab, [])
    session = DecodeSession(model, tokenizer, slots=1)
    sequence = session.add(prompt, generation_config(temperature=0, max_new_tokens=new_tokens))
    while session.sequences:
        session.step()
    return sequence.continuation.ids


@torch.inference_mode()
def recompute(model: TransformerLM, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding that runs the model over the whole (cropped) sequence at every step."""
    sequence = torch.tensor([prompt])
    context = model.config.context_length
    for _ in range(new_tokens):
        next_token = greedy(model(sequence[:, -context:])[:, -1])
        sequence = torch.cat([sequence, next_token[:, None]], dim=1)
    return sequence[0, len(prompt) :].tolist()


def timed(decode, model: TransformerLM, prompt: list[int], new_tokens: int) -> tuple[float, list[int]]:
    """(tokens/s, tokens) of one run."""
    start = time.perf_counter()
    tokens = decode(model, prompt, new_tokens)
    return new_tokens / (time.perf_counter() - start), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = TransformerLM(TINYSTORIES).eval()
    prompt = torch.randint(0, TINYSTORIES.vocab_size, (args.prompt_tokens,)).tolist()
    print(f"model: TinyStories shape, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    print(f"greedy, batch 1: {args.new_tokens} new tokens after a {args.prompt_tokens}-token prompt")
    cached_best = recompute_best = 0.0
    for round_number in range(1, args.rounds + 1):
        cached_rate, cached_tokens = timed(cached, model, prompt, args.new_tokens)
        recompute_rate, recompute_tokens = timed(recompute, model, prompt, args.new_tokens)
        cached_best, recompute_best = max(cached_best, cached_rate), max(recompute_best, recompute_rate)
        print(f"round {round_number}: cached {cached_rate:8.1f} tokens/s   recompute {recompute_rate:8.1f} tokens/s")
    before_slide = TINYSTORIES.context_length - args.prompt_tokens + 1
    same = cached_tokens[:before_slide] == recompute_tokens[:before_slide]
    print(f"same tokens until the window slides ({min(before_slide, args.new_tokens)} tokens): {same}")
    print(f"cached:    {cached_best:8.1f} tokens/s")
    print(f"recompute: {recompute_best:8.1f} tokens/s")
    print(f"ratio:     {cached_best / recompute_best:8.2f}x  (target >= 5x)")


if __name__ == "__main__":
    main()

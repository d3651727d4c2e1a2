"""Serving throughput of `lmkit serve`: concurrent streaming clients against one client, on the CPU.

The TinyStories-shape model (vocab 10000, d_model 512, 4 layers, 16 heads, d_ff 1344, context 256), randomly
initialised, float32, with a 10K BPE tokenizer trained on the bundled Tiny Shakespeare, saved as a checkpoint and
served by `lmkit serve` in a child process. The same `--clients` requests (different prompts and seeds,
temperature 0.8, top-p 0.95, `--max-tokens` each, streamed with the official openai client) are sent
- one after another by one client (the anchor), and
- at once by `--clients` clients, which the server decodes together in one batch.
Each side runs `--rounds` times, alternating; the best round of each is quoted: total generated tokens/s
(usage.completion_tokens over wall-clock time) and the ratio. Every response is compared with
lmkit.generate.generate for the same prompt and seed (printed as "equal to the library: N/N").

    python benchmarks/serve.py
    python benchmarks/serve.py --clients 8 --max-tokens 128 --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai
import torch

import lmkit
from lmkit.checkpoint import model_state, write_checkpoint
from lmkit.generate import generate, load_model_and_tokenizer
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer, train_bpe

TINYSTORIES = ModelConfig(vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344)
CORPUS = Path(lmkit.__file__).parent / "data" / "tinyshakespeare.txt"
SETTINGS = {"temperature": 0.8, "top_p": 0.95}


def write_served_checkpoint(folder: Path) -> Path:
    """A checkpoint of the random TinyStories-shape model with a 10K BPE tokenizer, as `lmkit serve` reads it."""
    vocab, merges = train_bpe(CORPUS, TINYSTORIES.vocab_size, ["<|endoftext|>"])
    tokenizer = Tokenizer(vocab, merges, ["<|endoftext|>"])
    torch.manual_seed(0)
    model = TransformerLM(TINYSTORIES)
    path = folder / "served.pt"
    config = {"model": TINYSTORIES.model_dump(mode="json")}
    write_checkpoint(model_state(model), None, 0, path, config=config, tokenizer_json=tokenizer.to_json())
    return path


def prompts(count: int) -> list[str]:
    """`count` different prompts of different lengths: opening lines of the corpus's speeches."""
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if len(line) > 20]
    return [" ".join(lines[7 * i : 7 * i + 1 + i % 3]) for i in range(count)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(checkpoint: Path, port: int, max_batch: int, threads: int | None) -> subprocess.Popen:
    """`lmkit serve` in a child process (torch on `threads` threads; None: its default), once /health answers."""
    command = [sys.executable, "-m", "lmkit", "serve", str(checkpoint), "--port", str(port), "--device", "cpu"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    server = subprocess.Popen(
        [*command, "--max-batch", str(max_batch)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health").raise_for_status()
            return server
        except httpx.HTTPError:
            if server.poll() is not None:
                raise RuntimeError("lmkit serve exited") from None
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("lmkit serve did not start")


def stream_one(client: openai.OpenAI, prompt: str, seed: int, max_tokens: int) -> tuple[str, int]:
    """Stream one completion; (its text, its completion tokens)."""
    pieces, tokens = [], 0
    response = client.completions.create(
        model="served", prompt=prompt, max_tokens=max_tokens, seed=seed, stream=True,
        stream_options={"include_usage": True}, **SETTINGS,
    )  # fmt: skip
    for chunk in response:
        pieces += [choice.text for choice in chunk.choices]
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return "".join(pieces), tokens


def one_client(client: openai.OpenAI, texts: list[str], max_tokens: int) -> tuple[float, list[str]]:
    """(tokens/s, texts) of the requests sent one after another."""
    start = time.perf_counter()
    results = [stream_one(client, prompt, seed, max_tokens) for seed, prompt in enumerate(texts)]
    return sum(tokens for _, tokens in results) / (time.perf_counter() - start), [text for text, _ in results]


def many_clients(client: openai.OpenAI, texts: list[str], max_tokens: int) -> tuple[float, list[str]]:
    """(tokens/s, texts) of the requests sent at once, one thread each."""
    results: list[tuple[str, int]] = [("", 0)] * len(texts)
    barrier = threading.Barrier(len(texts) + 1)

    def send(seed: int) -> None:
        barrier.wait()
        results[seed] = stream_one(client, texts[seed], seed, max_tokens)

    threads = [threading.Thread(target=send, args=(seed,)) for seed in range(len(texts))]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return sum(tokens for _, tokens in results) / (time.perf_counter() - start), [text for text, _ in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # for the library's side of the comparison
    texts = prompts(args.clients)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_served_checkpoint(Path(folder))
        port = free_port()
        server = start_server(checkpoint, port, max_batch=args.clients, threads=args.threads)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600)
            single, concurrent, answers = [], [], []
            for _ in range(args.rounds):
                speed, replies = one_client(client, texts, args.max_tokens)
                single.append(speed)
                answers.append(replies)
                speed, replies = many_clients(client, texts, args.max_tokens)
                concurrent.append(speed)
                answers.append(replies)
        finally:
            server.terminate()
            server.wait()
        model, tokenizer = load_model_and_tokenizer(checkpoint, "cpu")
    expected = [
        generate(model, tokenizer, prompt, max_new_tokens=args.max_tokens, seed=seed, **SETTINGS).text
        for seed, prompt in enumerate(texts)
    ]
    equal = sum(reply == want for replies in answers for reply, want in zip(replies, expected, strict=True))
    print(f"model: TinyStories shape, CPU, server torch threads: {args.threads or 'the default'}")
    print(f"{args.clients} requests of {args.max_tokens} tokens, best of {args.rounds} rounds")
    print(f"one client, one request at a time: {max(single):8.1f} tokens/s")
    print(f"{args.clients} concurrent clients:             {max(concurrent):8.1f} tokens/s")
    print(f"ratio: {max(concurrent) / max(single):.2f}x")
    print(f"equal to the library: {equal}/{len(answers) * len(texts)}")


if __name__ == "__main__":
    main()

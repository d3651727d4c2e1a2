"""Serving throughput of `lmkit serve`: concurrent streaming clients against one client, and Poisson arrivals
under the continuous and the static scheduler, on the CPU.

The TinyStories-shape model (vocab 10000, d_model 512, 4 layers, 16 heads, d_ff 1344, context 256), randomly
initialised, float32, with a 10K BPE tokenizer trained on the bundled Tiny Shakespeare, saved as a checkpoint and
served by `lmkit serve` in a child process. Sampling: temperature 0.8, top-p 0.95, streamed with the official
openai client. Every response is compared with lmkit.generate.generate for the same prompt and seed (printed
as "equal to the library: N/N").

Default mode: the same `--clients` requests (different prompts and seeds, `--max-tokens` each) are sent
- one after another by one client (the anchor), and
- at once by `--clients` clients, which the server decodes together in one batch.
Each side runs `--rounds` times, alternating; the best round of each is quoted: total generated tokens/s
(usage.completion_tokens over wall-clock time) and the ratio.

`--arrivals N`: N requests arrive as a Poisson process, prompts of 8-200 tokens (cut from the corpus) and
max_tokens 16-256, all drawn from a fixed seed. The rate is `--load` times the server's capacity for this mix,
measured first on the continuous server: the tokens/s of 2 x `--max-batch` requests drawn the same way and sent
at once, divided by the mean max_tokens. The same arrivals are sent to
a server with `--scheduler static` and to one with `--scheduler continuous`; for each: generated tokens/s (over
first arrival to last answer), time to first token p50/p95 and request latency p50/p95.

    python benchmarks/serve.py
    python benchmarks/serve.py --clients 8 --max-tokens 128 --rounds 2 --threads 1
    python benchmarks/serve.py --arrivals 64
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
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


def start_server(
    checkpoint: Path, port: int, max_batch: int, threads: int | None, scheduler: str = "continuous"
) -> subprocess.Popen:
    """`lmkit serve` in a child process (torch on `threads` threads; None: its default), once /health answers."""
    command = [sys.executable, "-m", "lmkit", "serve", str(checkpoint), "--port", str(port), "--device", "cpu"]
    command += ["--max-batch", str(max_batch), "--scheduler", scheduler]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    text, tokens, _ = timed_stream(client, prompt, seed, max_tokens)
    return text, tokens


def timed_stream(client: openai.OpenAI, prompt: str, seed: int, max_tokens: int) -> tuple[str, int, float]:
    """Stream one completion; (its text, its completion tokens, seconds from sending to the first text)."""
    pieces, tokens, first = [], 0, None
    start = time.perf_counter()
    response = client.completions.create(
        model="served", prompt=prompt, max_tokens=max_tokens, seed=seed, stream=True,
        stream_options={"include_usage": True}, **SETTINGS,
    )  # fmt: skip
    for chunk in response:
        if chunk.choices and first is None:
            first = time.perf_counter() - start
        pieces += [choice.text for choice in chunk.choices]
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return "".join(pieces), tokens, first if first is not None else time.perf_counter() - start


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


@dataclass(frozen=True)
class Arrival:
    """One request of the arrival process: when it is sent (seconds from the start), its prompt and length."""

    at: float
    prompt: str
    prompt_tokens: int
    max_tokens: int
    seed: int


def arrival_process(tokenizer: Tokenizer, count: int, rate: float, seed: int = 0) -> list[Arrival]:
    """`count` requests with exponential gaps of mean 1/rate, prompts of 8-200 corpus tokens, max_tokens 16-256."""
    draw = random.Random(seed)
    ids = tokenizer.encode(CORPUS.read_text(encoding="utf-8")[:400_000])
    arrivals, at = [], 0.0
    for index in range(count):
        at += draw.expovariate(rate)
        length, start = draw.randint(8, 200), draw.randrange(len(ids) - 200)
        prompt = tokenizer.decode(ids[start : start + length])
        arrivals.append(Arrival(at, prompt, len(tokenizer.encode(prompt)), draw.randint(16, 256), index))
    return arrivals


def send_arrivals(client: openai.OpenAI, arrivals: list[Arrival]) -> dict[str, object]:
    """Send each request at its time, one thread each; throughput, TTFT and latency percentiles, and the texts."""
    results: list[tuple[str, int, float, float] | None] = [None] * len(arrivals)
    start = time.perf_counter()

    def send(index: int) -> None:
        arrival = arrivals[index]
        sent = time.perf_counter()
        text, tokens, first = timed_stream(client, arrival.prompt, arrival.seed, arrival.max_tokens)
        results[index] = (text, tokens, first, time.perf_counter() - sent)

    threads = []
    for index, arrival in enumerate(arrivals):
        time.sleep(max(0.0, start + arrival.at - time.perf_counter()))
        threads.append(threading.Thread(target=send, args=(index,)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    firsts = [result[2] for result in results]
    latencies = [result[3] for result in results]
    return {
        "tokens_per_second": sum(result[1] for result in results) / elapsed,
        "ttft": percentiles(firsts),
        "latency": percentiles(latencies),
        "texts": [result[0] for result in results],
    }


def percentiles(values: list[float]) -> tuple[float, float]:
    """(p50, p95) of `values`."""
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return statistics.median(values), cuts[18]


def capacity(client: openai.OpenAI, tokenizer: Tokenizer, count: int) -> float:
    """Tokens/s of `count` requests of the arrival mix (their own seed) sent at once: the server at full width."""
    burst = [replace(arrival, at=0.0) for arrival in arrival_process(tokenizer, count, rate=1.0, seed=1)]
    return send_arrivals(client, burst)["tokens_per_second"]


def run_arrivals(args: argparse.Namespace, checkpoint: Path, tokenizer: Tokenizer) -> None:
    """The arrival-process comparison of the static and the continuous scheduler."""
    draft = arrival_process(tokenizer, args.arrivals, rate=1.0)
    mean_tokens = statistics.mean(arrival.max_tokens for arrival in draft)
    measured: dict[str, dict[str, object]] = {}
    rate = None
    for scheduler in ("continuous", "static"):
        port = free_port()
        server = start_server(checkpoint, port, args.max_batch, args.threads, scheduler)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600)
            if rate is None:  # from the first server, so both see the same arrivals
                rate = args.load * capacity(client, tokenizer, 2 * args.max_batch) / mean_tokens
            arrivals = arrival_process(tokenizer, args.arrivals, rate)
            measured[scheduler] = send_arrivals(client, arrivals)
        finally:
            server.terminate()
            server.wait()
    model, tokenizer = load_model_and_tokenizer(checkpoint, "cpu")
    expected = [
        generate(model, tokenizer, one.prompt, max_new_tokens=one.max_tokens, seed=one.seed, **SETTINGS).text
        for one in arrivals
    ]
    print(f"model: TinyStories shape, CPU, server torch threads: {args.threads or 'the default'}")
    print(
        f"{args.arrivals} Poisson arrivals at {rate:.2f} requests/s ({args.load:.0%} of capacity), --max-batch "
        f"{args.max_batch}; prompts {min(a.prompt_tokens for a in arrivals)}-{max(a.prompt_tokens for a in arrivals)} "
        f"tokens, max_tokens {min(a.max_tokens for a in arrivals)}-{max(a.max_tokens for a in arrivals)}"
    )
    header = ("scheduler", "tokens/s", "TTFT p50", "TTFT p95", "latency p50", "latency p95")
    print(f"{header[0]:<11} {header[1]:>9} {header[2]:>9} {header[3]:>9} {header[4]:>12} {header[5]:>12}  equal")
    for scheduler in ("static", "continuous"):
        result = measured[scheduler]
        equal = sum(text == want for text, want in zip(result["texts"], expected, strict=True))
        (ttft50, ttft95), (lat50, lat95) = result["ttft"], result["latency"]
        print(
            f"{scheduler:<11} {result['tokens_per_second']:9.1f} {ttft50:8.2f}s {ttft95:8.2f}s "
            f"{lat50:11.2f}s {lat95:11.2f}s  {equal}/{len(expected)}"
        )
    static, continuous = measured["static"], measured["continuous"]
    print(
        f"continuous vs static: TTFT p95 {continuous['ttft'][1] / static['ttft'][1]:.2f}x, "
        f"throughput {continuous['tokens_per_second'] / static['tokens_per_second']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's)")
    parser.add_argument("--arrivals", type=int, default=0, help="requests in a Poisson arrival process (0: off)")
    parser.add_argument("--load", type=float, default=0.9, help="arrival rate as a fraction of the capacity")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (arrivals mode)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # for the library's side of the comparison
    if args.arrivals:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = write_served_checkpoint(Path(folder))
            _, tokenizer = load_model_and_tokenizer(checkpoint, "cpu")
            run_arrivals(args, checkpoint, tokenizer)
        return
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

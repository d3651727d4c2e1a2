"""The first run on a GPU: training, FSDP2, generation, serving and the Hugging Face export, checked in one go.

    python benchmarks/gpu_check.py                      # on a CUDA GPU: about 3-5 minutes
    python benchmarks/gpu_check.py --device cpu --tiny  # the same code path on a CPU with a tiny model

Five checks, each printing one line (figures, or FAIL with what went wrong):

1. train: `lmkit train` at the TinyStories shape (vocab 10000, context 256, d_model 512, 4 layers, 16 heads,
   d_ff 1344; batch 32) with train.dtype "auto" (bfloat16 on a GPU with it) and torch.compile, on random
   tokens: the median tokens/s and MFU of the logged steps after the first few (compilation, warm-up).
2. fsdp: the model sharded by FSDP2 (lmkit's shard_model: blocks compiled, its mixed-precision policy) on a one-process
   group over this device, trained with Muon (its sharded path) for 2k steps; and again for k steps, its
   whole state gathered into a checkpoint file, rebuilt, sharded and resumed for k more: the losses of the
   resumed steps must match the unbroken run's.
3. generate: `lmkit generate` on the trained checkpoint with --dtype auto (bfloat16 weights and KV cache on
   such a GPU): new tokens per second, greedy.
4. serve: `lmkit serve` on a free local port (continuous batching), one /v1/completions request answered, then
   8 sent at once: their generated tokens per second.
5. hf: `lmkit export hf`, loaded by transformers' AutoModelForCausalLM on the device; its logits against
   lmkit's, both float32 (TF32 off): the largest difference.

Exit status 0 when every check passes, 1 when one fails, 2 (one line) when the device is not there.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lmkit.device import autocast, resolve_autocast_dtype
from lmkit.generate import load_model_and_tokenizer
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer
from lmkit.training.config import OptimConfig
from lmkit.training.loss import cross_entropy
from lmkit.training.muon import build_optimizer

TINYSTORIES = {
    "vocab_size": 10000,
    "context_length": 256,
    "d_model": 512,
    "num_layers": 4,
    "num_heads": 16,
    "d_ff": 1344,
}
# Tiny, but with more ids than the byte tokenizer has, as at the TinyStories shape.
TINY = {"vocab_size": 320, "context_length": 32, "d_model": 32, "num_layers": 2, "num_heads": 4}
PROMPT = "Once upon a time"


def write_run(folder: Path, shape: dict[str, int], device: str, batch: int, steps: int, compile: bool) -> Path:
    """A run config over random byte tokens (ids the byte tokenizer, plus <|endoftext|>, can decode)."""
    rng = np.random.default_rng(0)
    np.save(folder / "train.npy", rng.integers(0, 256, 2_000_000, dtype=np.uint16))
    np.save(folder / "val.npy", rng.integers(0, 256, 100_000, dtype=np.uint16))
    Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]).save(folder / "tokenizer.json")
    model = "\n".join(f"{key} = {value}" for key, value in shape.items())
    config = folder / "run.toml"
    config.write_text(
        f'[data]\ntrain = "{folder / "train.npy"}"\nval = "{folder / "val.npy"}"\n'
        f'tokenizer = "{folder / "tokenizer.json"}"\n[model]\n{model}\n[optim]\nlr = 1e-3\n'
        f'[train]\nbatch_size = {batch}\nsteps = {steps}\ndevice = "{device}"\ndtype = "auto"\n'
        f"compile = {str(compile).lower()}\nlog_every = 1\neval_every = {steps}\neval_batches = 1\n"
        f'ckpt_every = {steps}\nout_dir = "{folder / "run"}"\n'
    )
    return config


def lmkit(*args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m lmkit ARGS`, its output captured; RuntimeError with its stderr if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "lmkit", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"lmkit {args[0]} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done


def check_train(config: Path, warmup: int) -> str:
    """Train; the median tokens/s and MFU of the logged steps after `warmup`."""
    lmkit("train", "--quiet", "--config", config)
    metrics = (config.parent / "run" / "metrics.jsonl").read_text().splitlines()
    lines = [record for record in map(json.loads, metrics) if record["event"] == "train"][warmup:]
    speed = statistics.median(record["tokens_per_s"] for record in lines)
    mfus = [record["mfu"] for record in lines if record.get("mfu") is not None]
    mfu = f"{statistics.median(mfus):.1%}" if mfus else "n/a (peak unknown)"
    return f"{speed:,.0f} tokens/s, MFU {mfu} (median of {len(lines)} steps)"


def _sharded_training(
    shape: dict[str, int], device: torch.device, steps: int, resume_after: int | None, folder: Path, compile: bool
) -> list[float]:
    """Losses of `steps` steps of a TinyStories-like model sharded by FSDP2 and trained with Muon; with
    `resume_after`, the run is checkpointed there (whole tensors), rebuilt from the file and resumed."""
    from torch.distributed.device_mesh import init_device_mesh

    from lmkit.training.distributed import shard_like_parameters, shard_model, whole_state

    config = ModelConfig(**shape)
    dtype = resolve_autocast_dtype("auto", device)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (4, config.context_length + 1), generator=generator) for _ in range(steps)]

    def build(state: dict | None) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = TransformerLM(config).to(device)
        if state is not None:
            model.load_state_dict(state["model"])
        model = shard_model(model, init_device_mesh(device.type, (1,)), dtype, compile)
        optimizer = build_optimizer(model, OptimConfig(name="muon", lr=1e-3, muon_lr=0.02))
        if state is not None:
            optimizer.load_state_dict(shard_like_parameters(state["optimizer"], optimizer))
        return model, optimizer

    model, optimizer = build(None)
    losses = []
    for step, batch in enumerate(batches):
        if step == resume_after:
            model_state, optimizer_state = whole_state(model, optimizer, keep=True)
            torch.save({"model": model_state, "optimizer": optimizer_state}, folder / "fsdp.pt")
            model, optimizer = build(torch.load(folder / "fsdp.pt", weights_only=True))
        batch = batch.to(device)
        with autocast(device, dtype):
            loss = cross_entropy(model(batch[:, :-1]), batch[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def check_fsdp(shape: dict[str, int], device: torch.device, folder: Path, compile: bool) -> str:
    """FSDP2 on a one-process group: the resumed run's losses against the unbroken run's."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        unbroken = _sharded_training(shape, device, 6, None, folder, compile)
        resumed = _sharded_training(shape, device, 6, 3, folder, compile)
    finally:
        dist.destroy_process_group()
    gap = max(abs(a - b) for a, b in zip(unbroken, resumed, strict=True))
    if gap > 1e-3 * max(map(abs, unbroken)):
        raise RuntimeError(f"resumed losses {resumed} differ from the unbroken run's {unbroken}")
    return f"6 Muon steps sharded, resumed after 3: losses {unbroken[0]:.4f} -> {unbroken[-1]:.4f}, gap {gap:.2e}"


def check_generate(checkpoint: Path, device: str, new_tokens: int) -> str:
    """Greedy `lmkit generate --dtype auto`: new tokens per second."""
    done = lmkit("generate", checkpoint, "-p", PROMPT, "-n", new_tokens, "-t", 0, "--json", "--device", device)
    result = json.loads(done.stdout)
    return f"{result['tokens_per_s']:,.1f} new tokens/s ({result['new_tokens']} tokens, on {result['device']})"


def check_serve(checkpoint: Path, device: str) -> str:
    """`lmkit serve` on a free port answers one completion."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "lmkit", "serve", str(checkpoint), "--port", str(port), "--device", device]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"lmkit serve exited {server.returncode}: {server.stderr.read()[-500:]}")
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("lmkit serve did not answer /health within 180 s") from None
                time.sleep(0.5)
        start = time.perf_counter()
        tokens = complete(base, checkpoint.stem, PROMPT, seed=0)
        seconds = time.perf_counter() - start
        together = [0] * 8

        def send(i: int) -> None:
            together[i] = complete(base, checkpoint.stem, f"{PROMPT} {i}", seed=i)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rate = sum(together) / (time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return f"/v1/completions answered {tokens} tokens in {seconds:.2f} s; 8 at once: {rate:,.1f} tokens/s"


def complete(base: str, model: str, prompt: str, seed: int) -> int:
    """One sampled 64-token completion from the server at `base`: its completion tokens."""
    body = {"model": model, "prompt": prompt, "max_tokens": 64, "seed": seed}
    request = urllib.request.Request(
        f"{base}/v1/completions", json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())["usage"]["completion_tokens"]


def check_hf(checkpoint: Path, device: str, folder: Path) -> str:
    """`lmkit export hf`, loaded by transformers on the device: logits against lmkit's, float32 both."""
    from transformers import AutoModelForCausalLM

    lmkit("export", "hf", checkpoint, "--out", folder / "hf")
    ours, _ = load_model_and_tokenizer(checkpoint, device, "float32")
    torch.set_float32_matmul_precision("highest")  # loading enabled TF32 on CUDA; compare exact float32
    theirs = AutoModelForCausalLM.from_pretrained(folder / "hf").float().to(device).eval()
    ids = torch.randint(0, 256, (2, ours.config.context_length), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)
    with torch.no_grad():
        expected = ours(ids)
        got = theirs(ids).logits[..., : expected.shape[-1]]
    gap = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    if gap > 1e-4 * max(scale, 1.0):
        raise RuntimeError(f"transformers' logits differ from lmkit's by up to {gap:.3g} (largest logit {scale:.3g})")
    return f"transformers on {device}: logits within {gap:.2e} of lmkit's (largest {scale:.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to try the path")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and few steps (for a CPU)")
    parser.add_argument("--no-compile", action="store_true", help="train without torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible; run with --device cpu --tiny to try this script's path on a CPU")
        return 2
    shape = TINY if args.tiny else TINYSTORIES
    batch, steps, warmup, new_tokens = (4, 8, 2, 16) if args.tiny else (32, 60, 10, 200)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"lmkit GPU check on {name}, torch {torch.__version__}, shape {shape}")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = write_run(folder, shape, args.device, batch, steps, compile=not args.no_compile)
        checkpoint = folder / "run" / "last.pt"
        checks: list[tuple[str, Callable[[], str]]] = [
            ("train", lambda: check_train(config, warmup)),
            ("fsdp", lambda: check_fsdp(shape, device, folder, not args.no_compile)),
            ("generate", lambda: check_generate(checkpoint, args.device, new_tokens)),
            ("serve", lambda: check_serve(checkpoint, args.device)),
            ("hf", lambda: check_hf(checkpoint, args.device, folder)),
        ]
        for label, check in checks:
            start = time.perf_counter()
            try:
                line = check()
            except Exception as err:  # a check that fails reports and the others still run
                failures += 1
                line = f"FAIL {type(err).__name__}: {err}"
            print(f"{label:>8}: {line} [{time.perf_counter() - start:.0f} s]", flush=True)
    print("all checks passed" if not failures else f"{failures} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

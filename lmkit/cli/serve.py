"""`lmkit serve`: an OpenAI-compatible HTTP server (completions) and a playground page over a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lmkit.cli.common import byte_size, device_option, err_console, inference_dtype_option, threads_option
from lmkit.errors import InputError

if TYPE_CHECKING:
    from lmkit.model import TransformerLM


def serve(
    checkpoint: Path = typer.Argument(
        ..., help="A checkpoint written by lmkit train (runs/x/best.pt), or a run folder (its best.pt)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 opens it to the network."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port to listen on."),
    device: str = device_option(),
    dtype: str = inference_dtype_option(),
    max_batch: int = typer.Option(
        8, "--max-batch", min=1, help="Sequences decoded together, at most: the KV cache holds this many."
    ),
    prefill_chunk: int = typer.Option(
        256, "--prefill-chunk", min=1, help="Prompt tokens fed per step, at most, between the others' decoding steps."
    ),
    scheduler: str = typer.Option(
        "continuous",
        "--scheduler",
        help="continuous: requests join the running batch at the next step; static: batches admit nobody once "
        "they run (kept to compare against).",
    ),
    max_queue: int = typer.Option(
        256, "--max-queue", min=1, help="Sequences held at once (decoding or waiting); a request past it gets 429."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="LMKIT_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1 routes."
    ),
    model_name: str | None = typer.Option(
        None, "--model-name", help="The model id clients send (default: the checkpoint's file name without .pt)."
    ),
    shutdown_timeout: float = typer.Option(
        10.0,
        "--shutdown-timeout",
        min=0,
        help="On Ctrl-C or SIGTERM, seconds open requests get to finish; then streams end and others get 503.",
    ),
    threads: int | None = threads_option(),
) -> None:
    """Serve a checkpoint over an OpenAI-compatible API (/v1/completions), with a playground page at /.

    Example:

        lmkit serve runs/tinystories/best.pt --port 8000
    """
    from lmkit.generate import load_model_and_tokenizer
    from lmkit.serve.app import create_app, listening_socket, loopback, run_server
    from lmkit.serve.engine import BatchEngine
    from lmkit.threads import apply_threads

    if api_key == "":
        raise InputError("--api-key is empty; give a key, or leave the option out")
    if scheduler not in ("continuous", "static"):
        raise InputError(f"--scheduler must be continuous or static, got {scheduler!r}")
    apply_threads(threads)
    listening = listening_socket(host, port)  # a port in use is found before the model is loaded
    model, tokenizer = load_model_and_tokenizer(checkpoint, device, dtype)
    name = model_name or checkpoint.stem
    if not loopback(host) and api_key is None:
        err_console.print(
            f"[yellow]warning:[/yellow] listening on {host} without --api-key: anyone who can reach this machine "
            "can use the model",
            highlight=False,
        )
    err_console.print(f"serving {name!r} on http://{host}:{port}/ (playground) and http://{host}:{port}/v1")
    err_console.print(_cache_line(model, max_batch, scheduler), highlight=False)
    engine = BatchEngine(
        model, tokenizer, max_batch=max_batch, max_queue=max_queue, prefill_chunk=prefill_chunk, scheduler=scheduler
    )
    app = create_app(engine, name, api_key=api_key, shutdown_timeout=shutdown_timeout)
    run_server(app, listening)


def _cache_line(model: TransformerLM, max_batch: int, scheduler: str) -> str:
    """What the KV cache holds in memory: one slot of the full context per sequence decoded together."""
    from lmkit.accounting import kv_cache_bytes

    config = model.config
    size = kv_cache_bytes(config, config.context_length, max_batch, model.lm_head.weight.element_size())
    held = "allocated once" if scheduler == "continuous" else "per batch, at most"
    slots = f"{max_batch} slots x {config.context_length} positions"
    return f"KV cache: {slots} = {byte_size(size)} ({held}); {scheduler} batching"

"""`lmkit serve`: an OpenAI-compatible HTTP server (completions) and a playground page over a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from lmkit.cli.common import device_option, err_console, inference_dtype_option, threads_option
from lmkit.errors import InputError


def serve(
    checkpoint: Path = typer.Argument(
        ..., help="A checkpoint written by lmkit train (runs/x/best.pt), or a run folder (its best.pt)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 opens it to the network."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port to listen on."),
    device: str = device_option(),
    dtype: str = inference_dtype_option(),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Sequences decoded together in one batch, at most."),
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
    from lmkit.threads import apply_threads

    if api_key == "":
        raise InputError("--api-key is empty; give a key, or leave the option out")
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
    app = create_app(
        model,
        tokenizer,
        name,
        max_batch=max_batch,
        max_queue=max_queue,
        api_key=api_key,
        shutdown_timeout=shutdown_timeout,
    )
    run_server(app, listening)

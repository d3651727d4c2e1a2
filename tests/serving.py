"""Helpers for the server tests: a tiny random model and `lmkit serve`'s app running on a free local port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import uvicorn

from lmkit.model import ModelConfig, TransformerLM
from lmkit.serve.app import create_app
from lmkit.serve.engine import BatchEngine
from lmkit.tokenizer import Tokenizer


def byte_tokenizer() -> Tokenizer:
    """Byte-level: id b is byte b, and 256 is <|endoftext|>."""
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


def random_model(context_length: int = 32, seed: int = 0) -> TransformerLM:
    """A tiny model with random weights: attention and positions matter to every logit."""
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=257, context_length=context_length, d_model=32, num_layers=2, num_heads=4)
    return TransformerLM(config).eval()


@contextmanager
def running_server(model: TransformerLM, tokenizer: Tokenizer, **options: object) -> Iterator[str]:
    """Serve the model as "tiny" with uvicorn on a free port; yield its base URL. `api_key` goes to create_app,
    the other options to the BatchEngine."""
    api_key = options.pop("api_key", None)
    app = create_app(BatchEngine(model, tokenizer, **options), "tiny", api_key=api_key)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the port is taken before the server starts: no race for a "free" one
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def spelling_model(text: str, end_of_text: int = 256) -> TransformerLM:
    """A model that, greedily, continues any prefix of `text` (no byte repeated) with the rest, then <|endoftext|>.

    Hand-set weights, no training: the blocks are zeroed, so the residual stream is the token's one-hot
    embedding, and the LM head puts a large logit on the byte that follows it in `text`.
    """
    data = text.encode()
    if len(set(data)) != len(data):
        raise ValueError("each byte of the text may appear once")
    config = ModelConfig(vocab_size=end_of_text + 1, context_length=64, d_model=264, num_layers=1, num_heads=4)
    model = TransformerLM(config).eval()
    with torch.no_grad():
        for parameter in model.layers.parameters():
            parameter.zero_()
        model.token_embeddings.weight.zero_()
        model.token_embeddings.weight[:, : end_of_text + 1] = torch.eye(end_of_text + 1)
        model.lm_head.weight.zero_()
        for a, b in zip(data, [*data[1:], end_of_text], strict=True):
            model.lm_head.weight[b, a] = 10.0
    return model

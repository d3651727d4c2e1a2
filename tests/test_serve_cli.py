"""`lmkit serve` on the command line: a real server process on a checkpoint, the binding, bad inputs."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from helpers import assert_input_error
from serving import byte_tokenizer, random_model

import lmkit.serve.app
from lmkit.checkpoint import model_state, write_checkpoint
from lmkit.cli.app import app
from lmkit.generate import generate, load_model_and_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A run checkpoint of a tiny random model with a byte tokenizer, as `lmkit train` writes them."""
    model = random_model(context_length=32, seed=3)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    config = {"model": model.config.model_dump(mode="json")}
    write_checkpoint(model_state(model), None, 0, path, config=config, tokenizer_json=byte_tokenizer().to_json())
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(checkpoint: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`lmkit serve` in its own process on a free port, once it answers /health; its base URL. A port found
    free can be taken by another process before the server binds it: then the server exits, and another
    port is tried."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(3):
        port = free_port()
        command = [sys.executable, "-m", "lmkit", "serve", str(checkpoint), "--port", str(port), "--device", "cpu"]
        server = subprocess.Popen(
            [*command, *options], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 60
        while server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    return server, f"http://127.0.0.1:{port}"
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "lmkit serve did not start"
                time.sleep(0.1)
        output, _ = server.communicate()
        if "address already in use" not in output.lower():
            raise AssertionError(f"lmkit serve exited before serving:\n{output}")
    raise AssertionError("no free port found in three tries")


def test_lmkit_serve_serves_the_checkpoint_over_http(checkpoint) -> None:
    server, base = start_server(checkpoint)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        assert [card.id for card in client.models.list().data] == ["best"]  # the checkpoint's name
        response = client.completions.create(model="best", prompt="To be", max_tokens=24, temperature=0.7, seed=9)
        model, tokenizer = load_model_and_tokenizer(checkpoint, "cpu")
        expected = generate(model, tokenizer, "To be", max_new_tokens=24, temperature=0.7, top_p=1.0, seed=9)
        assert response.choices[0].text == expected.text
        assert "<title>lmkit playground</title>" in httpx.get(f"{base}/").text
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert f"{base}/" in output


def test_binding_beyond_this_machine_warns_without_an_api_key(runner, checkpoint, monkeypatch) -> None:
    served = []
    monkeypatch.setattr(lmkit.serve.app, "listening_socket", lambda host, port: served.append((host, port)))
    monkeypatch.setattr(lmkit.serve.app, "run_server", lambda app, listening: None)
    result = runner.invoke(app, ["serve", str(checkpoint), "--host", "0.0.0.0", "--port", "9999", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert served == [("0.0.0.0", 9999)]
    assert "warning: listening on 0.0.0.0 without --api-key" in " ".join(result.stderr.split())
    result = runner.invoke(app, ["serve", str(checkpoint), "--device", "cpu", "--api-key", "k", "--host", "0.0.0.0"])
    assert result.exit_code == 0 and "warning" not in result.stderr
    result = runner.invoke(app, ["serve", str(checkpoint), "--device", "cpu"])
    assert served[-1] == ("127.0.0.1", 8000) and "warning" not in result.stderr


def test_the_kv_cache_memory_is_stated_at_start_up(runner, checkpoint, monkeypatch) -> None:
    monkeypatch.setattr(lmkit.serve.app, "listening_socket", lambda host, port: None)
    monkeypatch.setattr(lmkit.serve.app, "run_server", lambda app, listening: None)
    result = runner.invoke(app, ["serve", str(checkpoint), "--device", "cpu", "--max-batch", "64"])
    # keys and values x 2 layers x 64 slots x 32 positions x 32 numbers x 4 bytes = 1,048,576 bytes
    assert "KV cache: 64 slots x 32 positions = 1.049 MB (allocated once); continuous batching" in result.stderr
    options = ["--device", "cpu", "--max-batch", "2", "--scheduler", "static"]
    result = runner.invoke(app, ["serve", str(checkpoint), *options])
    assert "2 slots x 32 positions = 0.033 MB (per batch, at most); static batching" in result.stderr


def test_a_port_in_use_is_one_line_before_the_model_is_loaded(runner, checkpoint, monkeypatch) -> None:
    loaded = []
    monkeypatch.setattr("lmkit.generate.load_model_and_tokenizer", lambda *args: loaded.append(args))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", str(checkpoint), "--port", str(port)])
    assert_input_error(result, f"cannot listen on 127.0.0.1:{port}: address already in use; choose another --port")
    assert loaded == []


def test_bad_inputs_exit_2_with_one_line(runner, checkpoint, tmp_path) -> None:
    assert_input_error(runner.invoke(app, ["serve", str(tmp_path / "none.pt")]), "does not exist")
    assert_input_error(runner.invoke(app, ["serve", str(checkpoint), "--device", "tpu"]), "unknown device 'tpu'")
    assert_input_error(runner.invoke(app, ["serve", str(checkpoint), "--dtype", "fp8"]), "unknown --dtype 'fp8'")
    assert_input_error(runner.invoke(app, ["serve", str(checkpoint), "--api-key", ""]), "--api-key is empty")
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("hello")
    assert_input_error(runner.invoke(app, ["serve", str(not_a_checkpoint)]), "not a complete PyTorch checkpoint")
    assert_input_error(
        runner.invoke(app, ["serve", str(checkpoint), "--scheduler", "fifo"]),
        "--scheduler must be continuous or static, got 'fifo'",
    )
    for option in (["--max-batch", "0"], ["--port", "70000"], ["--prefill-chunk", "0"]):
        result = runner.invoke(app, ["serve", str(checkpoint), *option])
        assert result.exit_code == 2 and "Invalid value" in result.stderr


def test_without_the_serve_extra_the_message_says_what_to_install(runner, checkpoint, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now raises ImportError
    monkeypatch.delitem(sys.modules, "lmkit.serve.app")
    assert_input_error(runner.invoke(app, ["serve", str(checkpoint)]), 'pip install "lmkit[serve]"')


@pytest.mark.slow
def test_sigterm_ends_open_streams_within_the_shutdown_timeout(tmp_path) -> None:
    """A 5,000-token stream does not keep a stopping server alive: it ends with finish_reason "length" and
    [DONE] once --shutdown-timeout has passed, a whole completion still waiting gets 503, and the exit is 0."""
    import threading

    model = random_model(context_length=8192, seed=3)
    path = tmp_path / "long.pt"
    config = {"model": model.config.model_dump(mode="json")}
    write_checkpoint(model_state(model), None, 0, path, config=config, tokenizer_json=byte_tokenizer().to_json())
    server, base = start_server(path, "--shutdown-timeout", "1")
    try:
        body = {"model": "long", "prompt": "To be", "max_tokens": 5000, "temperature": 0.0}  # greedy: never ends early
        whole: list[httpx.Response] = []
        post = lambda: whole.append(httpx.post(f"{base}/v1/completions", json=body, timeout=60))  # noqa: E731
        waiter = threading.Thread(target=post)
        lines, stopped_at = [], None
        with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}, timeout=60) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    lines.append(line.removeprefix("data: "))
                if len(lines) >= 5 and stopped_at is None:  # both requests are decoding: ask the server to stop
                    waiter.start()
                    time.sleep(0.5)
                    stopped_at = time.monotonic()
                    server.terminate()
        ended_after = time.monotonic() - stopped_at
        waiter.join(timeout=30)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
    assert lines[-1] == "[DONE]" and '"finish_reason": "length"' in lines[-2].replace('":"', '": "')
    assert len(lines) < 5000 and ended_after < 15  # cut by the 1 s drain, not run to 5,000 tokens
    assert whole and whole[0].status_code == 503 and "shutting down" in whole[0].json()["error"]["message"]

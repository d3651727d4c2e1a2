"""The playground page in headless Chromium: a prompt typed into it streams the model's text into the page.

Chromium comes from the system package manager (.ci/run installs it). The test is marked `browser`, which the
default test run leaves out (it needs a system package pip cannot install); `python -m pytest -m browser` runs
it, as .ci/run does, and a missing browser is a failure there.
"""

import itertools
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from serving import byte_tokenizer, running_server, spelling_model
from websockets.sync.client import ClientConnection, connect

from lmkit.generate import generate

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]

TEXT = "The_quick-brown.fxy!"


def chromium() -> str:
    """The Chromium executable; the test fails when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium is not installed (Debian: apt-get install chromium)")


class Page:
    """A page of a headless Chromium, driven over the Chrome DevTools protocol (a websocket, JSON messages)."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    def call(self, method: str, **params: object) -> dict:
        ident = next(self._ids)
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=30))
            if message.get("id") == ident:  # other messages are events, which this test does not follow
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 30) -> object:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.05)
        raise AssertionError(f"still false after {seconds} s: {expression}")


@contextmanager
def open_page(executable: str, url: str, profile: Path) -> Iterator[Page]:
    """Headless Chromium (offline-safe flags, a fresh profile) showing `url`, closed afterwards."""
    browser = subprocess.Popen(
        [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if browser.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("Chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=30).json()
        [target] = [t for t in targets if t["type"] == "page" and t["url"].startswith(url)]
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as socket:
            yield Page(socket)
    finally:
        browser.kill()
        browser.wait(timeout=30)


def test_a_prompt_typed_into_the_page_streams_the_text_into_it(tmp_path) -> None:
    executable = chromium()
    model, tokenizer = spelling_model(TEXT), byte_tokenizer()
    expected = generate(model, tokenizer, "The", max_new_tokens=50, temperature=0).text
    assert expected == TEXT[3:]  # the model spells the rest of TEXT, then ends at <|endoftext|>
    with running_server(model, tokenizer) as url:
        with open_page(executable, f"{url}/", tmp_path / "profile") as page:
            page.wait_for("document.getElementById('model')?.textContent === 'model: tiny'")
            page.evaluate("document.getElementById('prompt').value = ''; document.getElementById('prompt').focus()")
            page.call("Input.insertText", text="The")
            page.evaluate("document.getElementById('temperature').value = '0'")
            page.evaluate("document.getElementById('max_tokens').value = '50'")
            # Record the completion's length after every change, to see it arrive in pieces.
            page.evaluate(
                "window.lengths = []; new MutationObserver((records) => { for (const r of records) "
                "for (const node of r.addedNodes) window.lengths.push(node.textContent.length); })"
                ".observe(document.getElementById('completion'), {childList: true, characterData: true, subtree: true})"
            )
            page.evaluate("document.getElementById('generate').click()")
            status = page.wait_for(
                "!document.getElementById('generate').disabled && document.getElementById('status').textContent"
            )
            assert str(status).startswith("stopped:"), status
            # The seed the page drew is shown, and repeats the completion through the API.
            seed = int(re.search(r", seed (\d+)$", str(status))[1])
            body = {"model": "tiny", "prompt": "The", "max_tokens": 50, "temperature": 0.0, "seed": seed}
            again = httpx.post(f"{url}/v1/completions", json=body, timeout=30).json()["choices"][0]["text"]
            assert again == page.evaluate("document.getElementById('completion').textContent")
            # On a narrow screen the controls wrap, but Stop stays beside Generate.
            page.call("Emulation.setDeviceMetricsOverride", width=360, height=800, deviceScaleFactor=1, mobile=False)
            tops = page.evaluate("['generate', 'stop'].map((id) => document.getElementById(id).offsetTop)")
            assert tops[0] == tops[1], tops
            assert page.evaluate("document.getElementById('echo').textContent") == "The"
            assert page.evaluate("document.getElementById('completion').textContent") == expected
            lengths = page.evaluate("window.lengths")
            assert len(set(lengths) - {0}) > 1 and lengths[-1] == len(expected), lengths


def test_chat_mode_holds_a_conversation_through_chat_completions(tmp_path) -> None:
    """In chat mode each Generate sends the prompt box as the next user turn; the answer streams in after the
    transcript and joins the conversation."""
    from lmkit.chat import add_chat_tokens

    executable = chromium()
    tokenizer = add_chat_tokens(byte_tokenizer())  # <|im_start|> 257, <|im_end|> 258
    model = spelling_model("\nHowdy", end_of_text=258)  # after the assistant header's newline: "Howdy", then end
    with running_server(model, tokenizer) as url:
        with open_page(executable, f"{url}/", tmp_path / "profile") as page:
            page.wait_for("document.getElementById('model')?.textContent === 'model: tiny'")
            page.evaluate("document.getElementById('mode').value = 'chat'")
            page.evaluate("document.getElementById('mode').dispatchEvent(new Event('change'))")
            page.evaluate("document.getElementById('temperature').value = '0'")
            for text in ("Hi", "Again"):
                page.evaluate(f"document.getElementById('prompt').value = {json.dumps(text)}")
                page.evaluate("document.getElementById('generate').click()")
                status = page.wait_for(
                    "!document.getElementById('generate').disabled && document.getElementById('status').textContent"
                    " .startsWith('stopped')"
                )
                assert page.evaluate("document.getElementById('completion').textContent") == "Howdy", status
            shown = page.evaluate("document.getElementById('echo').textContent")
            assert shown == "user: Hi\nassistant: Howdy\nuser: Again\nassistant: "

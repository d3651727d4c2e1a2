"""`lmkit serve` through the official openai client and raw HTTP: results equal to the library's, streaming,
stops, n, seeds, usage, batching of concurrent requests, dropped clients, errors, the API key."""

import json
import threading
import time

import httpx
import openai
import pytest
from serving import byte_tokenizer, random_model, running_server

import lmkit.generate
from lmkit.generate import generate, generation_config
from lmkit.serve.engine import BatchEngine, Finished, SequenceRequest
from lmkit.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = 32


@pytest.fixture(scope="module")
def model():
    return random_model(CONTEXT)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def url(model, tokenizer):
    with running_server(model, tokenizer, max_batch=8) as base:
        yield base


@pytest.fixture
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def library(model, tokenizer, prompt: str, **options):
    """The same request through lmkit.generate, with the server's (OpenAI's) defaults."""
    settings = {"max_new_tokens": 16, "temperature": 1.0, "top_p": 1.0, **options}
    return generate(model, tokenizer, prompt, **settings)


def test_models_and_health(client, url) -> None:
    assert [card.id for card in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "lmkit"
    client.completions.create(model="tiny", prompt="x", max_tokens=10, seed=0, stop=None)
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["max_batch"] == 8
    # The 10 tokens just generated count over a 5-second window: at least 2 per second.
    assert (health["running"], health["waiting"]) == (0, 0) and health["tokens_per_second"] >= 2.0


def test_completion_equals_the_library_with_the_same_seed(client, model, tokenizer) -> None:
    response = client.completions.create(
        model="tiny", prompt="Hello there", max_tokens=40, temperature=0.9, top_p=0.9, seed=5
    )
    expected = library(model, tokenizer, "Hello there", max_new_tokens=40, temperature=0.9, top_p=0.9, seed=5)
    [only] = response.choices
    assert only.text == expected.text and only.index == 0
    assert only.finish_reason == expected.stop_reason
    assert response.usage.prompt_tokens == len(b"Hello there")
    assert response.usage.completion_tokens == len(expected.ids)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    again = client.completions.create(
        model="tiny", prompt="Hello there", max_tokens=40, temperature=0.9, top_p=0.9, seed=5
    )
    assert again.choices[0].text == only.text
    other = client.completions.create(
        model="tiny", prompt="Hello there", max_tokens=40, temperature=0.9, top_p=0.9, seed=6
    )
    assert other.choices[0].text != only.text


def test_top_k_extension_and_greedy(client, model, tokenizer) -> None:
    response = client.completions.create(
        model="tiny", prompt="abc", max_tokens=20, temperature=1.3, seed=2, extra_body={"top_k": 3}
    )
    assert (
        response.choices[0].text
        == library(model, tokenizer, "abc", max_new_tokens=20, temperature=1.3, top_k=3, seed=2).text
    )
    greedy = client.completions.create(model="tiny", prompt="abc", max_tokens=20, temperature=0)
    assert greedy.choices[0].text == library(model, tokenizer, "abc", max_new_tokens=20, temperature=0).text


def test_streaming_sends_the_same_text_in_pieces_then_usage_and_done(client, url, model, tokenizer) -> None:
    expected = library(model, tokenizer, "Once", max_new_tokens=30, temperature=0.8, seed=11)
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="Once",
            max_tokens=30,
            temperature=0.8,
            seed=11,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert "".join(texts) == expected.text and len([t for t in texts if t]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.stop_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.ids)
    body = {"model": "tiny", "prompt": "Once", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        text = raw.read().decode()
    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(event.startswith("data: ") for event in events[:-1])


def test_stop_strings_cut_the_text_and_finish_with_stop(client, model, tokenizer) -> None:
    whole = library(model, tokenizer, "The", max_new_tokens=30, temperature=0).text
    assert len(whole) > 12
    stop = whole[8:10]
    cut = whole[: whole.index(stop)]
    for stream in (False, True):
        response = client.completions.create(
            model="tiny", prompt="The", max_tokens=30, temperature=0, stop=[stop, "never said"], stream=stream
        )
        if stream:
            chunks = [chunk.choices[0] for chunk in response]
            text, reason = "".join(c.text for c in chunks), chunks[-1].finish_reason
        else:
            text, reason = response.choices[0].text, response.choices[0].finish_reason
        assert (text, reason) == (cut, "stop")


def test_n_choices_use_seed_plus_their_index(client, model, tokenizer) -> None:
    response = client.completions.create(
        model="tiny", prompt=["ab", "xyz"], n=3, max_tokens=12, temperature=1.5, seed=100, echo=True
    )
    assert [choice.index for choice in response.choices] == list(range(6))
    for choice in response.choices:
        prompt = ["ab", "xyz"][choice.index // 3]
        expected = library(model, tokenizer, prompt, max_new_tokens=12, temperature=1.5, seed=100 + choice.index % 3)
        assert choice.text == prompt + expected.text
    assert len({choice.text for choice in response.choices[:3]}) > 1
    assert response.usage.prompt_tokens == 2 + 3


def record_batch_sizes(monkeypatch) -> list[int]:
    """The sequences decoding together at every step the engine runs from now on, in order (a list that fills
    as it runs)."""
    sizes: list[int] = []
    step = lmkit.generate.DecodeSession.step

    def recording_step(session):
        sizes.append(len(session.sequences))
        return step(session)

    monkeypatch.setattr(lmkit.generate.DecodeSession, "step", recording_step)
    return sizes


def test_concurrent_requests_are_batched_and_independent(client, model, tokenizer, monkeypatch) -> None:
    """Eight requests sent together, with different prompt lengths, settings and lengths past the context
    (the window slides), are decoded in one batch and each equals the library's result."""
    batch_sizes = record_batch_sizes(monkeypatch)
    requests = [
        {
            "prompt": "a" * (1 + 3 * i),
            "max_tokens": 10 + 7 * i,
            "temperature": 0.5 + 0.1 * i,
            "seed": i,
            "top_p": 0.8 if i % 2 else 1.0,
            "stream": i % 3 == 0,
        }
        for i in range(8)
    ]
    results: list[str | None] = [None] * 8
    start = threading.Barrier(8)

    def send(i: int) -> None:
        start.wait()
        response = client.completions.create(model="tiny", **requests[i])
        if requests[i]["stream"]:
            results[i] = "".join(chunk.choices[0].text for chunk in response if chunk.choices)
        else:
            results[i] = response.choices[0].text

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for request, text in zip(requests, results, strict=True):
        options = {key: request[key] for key in ("temperature", "seed", "top_p")}
        assert (
            text == library(model, tokenizer, request["prompt"], max_new_tokens=request["max_tokens"], **options).text
        )
    assert max(batch_sizes) >= 4, batch_sizes


def test_requests_arriving_during_a_stream_join_it_and_equal_the_library(model, monkeypatch) -> None:
    """Over HTTP: a second request (n = 2, a stop string, not streamed) is sent once the first stream has
    produced text; it joins the running batch, and both responses equal the library's."""
    tokenizer = Tokenizer({i: bytes([i]) for i in range(256)}, [])  # no <|endoftext|>: nothing ends early
    sizes = record_batch_sizes(monkeypatch)
    with running_server(model, tokenizer, max_batch=4) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
        second: list = []
        sender = threading.Thread(
            target=lambda: second.append(
                client.completions.create(
                    model="tiny", prompt="Then", n=2, max_tokens=30, temperature=1.2, seed=5, stop=["e "]
                )
            )
        )
        pieces = []
        stream = client.completions.create(model="tiny", prompt="Once", max_tokens=400, seed=1, stream=True)
        for chunk in stream:
            pieces += [choice.text for choice in chunk.choices]
            if len(pieces) == 1:
                sender.start()
        sender.join()
    assert max(sizes) == 3, sizes  # the stream and both choices of the second request, decoded together
    assert "".join(pieces) == library(model, tokenizer, "Once", max_new_tokens=400, seed=1).text
    for choice in second[0].choices:
        options = {"max_new_tokens": 30, "temperature": 1.2, "seed": 5 + choice.index, "stop": ["e "]}
        assert choice.text == library(model, tokenizer, "Then", **options).text


def wait_for_idle(url: str, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        load = httpx.get(f"{url}/health").json()
        if load["running"] == 0 and load["waiting"] == 0:
            return load
        time.sleep(0.05)
    raise AssertionError(f"the server is still decoding: {load}")


def test_a_disconnected_stream_is_dropped_and_a_stalled_one_stalls_nobody(model) -> None:
    # No <|endoftext|> in this tokenizer: nothing ends the million-token requests but their clients.
    tokenizer = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    body = {"model": "tiny", "prompt": "Go", "max_tokens": 1_000_000, "stream": True}
    with running_server(model, tokenizer) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        with httpx.Client(timeout=30) as stalled, stalled.stream("POST", f"{url}/v1/completions", json=body) as slow:
            # A client that reads nothing: the other requests still complete.
            quick = client.completions.create(model="tiny", prompt="Hi", max_tokens=20, seed=1)
            assert quick.choices[0].text == library(model, tokenizer, "Hi", max_new_tokens=20, seed=1).text
            assert slow.status_code == 200 and httpx.get(f"{url}/health").json()["running"] == 1
        # The stalled client hung up: its sequence leaves the batch.
        wait_for_idle(url)
        with httpx.stream("POST", f"{url}/v1/completions", json=body) as reader:
            next(reader.iter_lines())
        wait_for_idle(url)
        # A client that gives up waiting for a whole completion: its sequence leaves the batch too.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=1.5)
        wait_for_idle(url)


def post(url: str, body: object, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{url}/v1/completions", content=content, headers={"content-type": "application/json"}, timeout=60, **kwargs
    )


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        ({"model": "tiny", "prompt": "x", "max_tokens": "ten"}, "max_tokens", "valid integer"),
        ({"model": "tiny", "prompt": "x", "temperature": "hot"}, "temperature", "valid number"),
        ({"model": "tiny", "prompt": "x", "stream": "yes"}, "stream", "valid boolean"),
        ({"model": "tiny", "prompt": "x", "best_of": 2}, "best_of", "'best_of' is not supported by this server"),
        ({"prompt": "x", "suffix": "y"}, "suffix", "'suffix' is not supported by this server"),
        ({"model": "tiny", "prompt": "x", "bestof": 2}, "bestof", "unknown key 'bestof': check its spelling"),
        ({"model": "tiny", "prompt": "x", "temperature": -0.5}, "temperature", "greater than or equal to 0"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 0}, None, "max_tokens = 0 generates nothing"),
        ({"model": "tiny", "prompt": "x", "max_tokens": -1}, "max_tokens", "greater than or equal to 0"),
        ({"model": "tiny", "prompt": "x", "logprobs": 21}, "logprobs", "less than or equal to 20"),
        ({"model": "tiny", "prompt": "x", "logprobs": 1, "stream": True}, None, "logprobs are not streamed"),
        ({"model": "tiny", "prompt": [1, 300]}, "prompt", "a prompt holds a token id outside 0 .. 256"),
        ({"model": "tiny", "prompt": [[]]}, "prompt", "a prompt must not be empty"),
        ({"model": "tiny", "prompt": "x", "top_p": 0}, "top_p", "greater than 0"),
        ({"model": "tiny", "prompt": ""}, "prompt", "must not be empty"),
        ({"model": "tiny", "prompt": "x", "stop": [""]}, "stop", "must not be empty"),
        ({"prompt": "x"}, "model", "Field required"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 1_000_001}, "max_tokens", "less than or equal to 1000000"),
        ({"model": "tiny", "prompt": ["x", "y", "z"], "n": 50}, None, "prompts x n must be at most 128, got 3 x 50"),
        ({"model": "tiny", "prompt": "x" * (CONTEXT + 1)}, "prompt", f"{CONTEXT + 1} tokens long"),
    ],
)
def test_bad_requests_get_400_in_openai_error_shape(url, body, param, message) -> None:
    response = post(url, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == param and error["type"] == "invalid_request_error"


def test_error_statuses_through_the_openai_client(client, url) -> None:
    with pytest.raises(openai.BadRequestError, match="greater than or equal to 0"):
        client.completions.create(model="tiny", prompt="x", temperature=-1)
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny", prompt="y" * 100)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="gpt-4", prompt="x")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    with pytest.raises(openai.APIStatusError) as too_large:
        client.completions.create(model="tiny", prompt="z" * 1_100_000)
    assert too_large.value.status_code == 413 and "limit of 1000000 bytes" in too_large.value.message
    missing = httpx.get(f"{url}/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()


def test_the_api_key_is_required_when_set(model, tokenizer) -> None:
    with running_server(model, tokenizer, api_key="s3cret") as base:
        wrong = openai.OpenAI(base_url=f"{base}/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.completions.create(model="tiny", prompt="x")
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        assert httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "x"}).status_code == 401
        right = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        assert right.completions.create(model="tiny", prompt="x", max_tokens=3).usage.completion_tokens >= 1
        assert httpx.get(f"{base}/health").status_code == 200


def test_with_the_static_scheduler_sequences_sent_in_a_burst_share_one_batch(model, tokenizer, monkeypatch) -> None:
    """The static scheduler waits until arrivals pause, so a burst spread over more than the pause still batches.
    The engine reads the test's clock, so the arrivals' spacing is exact and no sleep is needed."""
    batch_sizes = record_batch_sizes(monkeypatch)
    now = [0.0]
    engine = BatchEngine(
        model,
        tokenizer,
        max_batch=8,
        scheduler="static",
        gather_seconds=0.2,
        max_gather_seconds=5,
        clock=lambda: now[0],
    )
    finished = threading.Semaphore(0)
    engine.start()
    try:
        for seed in range(5):  # five arrivals over 0.32 s: longer than the 0.2 s pause, each gap shorter
            config = generation_config(max_new_tokens=3, seed=seed)
            engine.submit(
                [SequenceRequest([65, 66], config)],
                lambda event: finished.release() if isinstance(event, Finished) else None,
            )
            now[0] += 0.08
        load = engine.load
        assert (load["running"], load["waiting"]) == (0, 5)  # the pause has not come on the engine's clock
        now[0] += 0.2  # it comes: the five make one batch
        assert all(finished.acquire(timeout=30) for _ in range(5))
    finally:
        engine.stop()
    assert batch_sizes[0] == 5 and max(batch_sizes) == 5


def staggered_arrivals(model, tokenizer, scheduler: str) -> dict[int, str]:
    """A long sequence starts; its first text submits a second, whose first text submits a third: each
    sequence's text. The callbacks run on the engine's worker, so each arrival lands at an exact point of the
    others' decoding: no sleeps, no races."""
    requests = [
        SequenceRequest(list(b"Once"), generation_config(max_new_tokens=80, temperature=0.9, seed=1)),
        SequenceRequest(list(b"a longer prompt, fed in chunks"), generation_config(max_new_tokens=12, seed=2)),
        SequenceRequest(list(b"x"), generation_config(max_new_tokens=20, temperature=0, stop=("zz",))),
    ]
    texts: dict[int, str] = {}
    finished = threading.Semaphore(0)
    engine = BatchEngine(model, tokenizer, max_batch=4, prefill_chunk=8, scheduler=scheduler)

    def submit(number: int) -> None:
        def handle(event) -> None:
            if isinstance(event, Finished):
                texts[number] = event.text
                finished.release()
            elif number + 1 < len(requests) and number + 1 not in submitted:
                submitted.add(number + 1)
                submit(number + 1)

        engine.submit([requests[number]], handle)

    submitted = {0}
    engine.start()
    try:
        submit(0)
        assert all(finished.acquire(timeout=60) for _ in requests)
    finally:
        engine.stop()
    return texts


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_sequences_arriving_one_by_one_join_the_running_batch(model, monkeypatch, scheduler) -> None:
    """Continuous batching takes each arrival into the batch already decoding (the static scheduler does not,
    which shows the check can fail); every result equals the library's, whenever it arrived."""
    tokenizer = Tokenizer({i: bytes([i]) for i in range(256)}, [])  # no <|endoftext|>: nothing ends early
    sizes = record_batch_sizes(monkeypatch)
    texts = staggered_arrivals(model, tokenizer, scheduler)
    assert max(sizes) == (3 if scheduler == "continuous" else 1), sizes
    expected = [
        generate(model, tokenizer, "Once", max_new_tokens=80, temperature=0.9, seed=1, top_p=0.95).text,
        generate(model, tokenizer, "a longer prompt, fed in chunks", max_new_tokens=12, seed=2).text,
        generate(model, tokenizer, "x", max_new_tokens=20, temperature=0, stop=["zz"]).text,
    ]
    assert [texts[number] for number in range(3)] == expected


def test_a_failure_inside_the_server_is_a_500_in_openai_error_shape(model, tokenizer, monkeypatch) -> None:
    def broken_encode(text: str) -> list[int]:
        raise RuntimeError("the tokenizer broke")

    with running_server(model, tokenizer) as base:
        monkeypatch.setattr(tokenizer, "encode", broken_encode)
        response = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=60)
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "the server failed: RuntimeError: the tokenizer broke",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_a_batch_that_fails_answers_500_and_the_server_goes_on(model, tokenizer, monkeypatch) -> None:
    calls = []

    step = lmkit.generate.DecodeSession.step

    def failing_once(session):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return step(session)

    monkeypatch.setattr(lmkit.generate.DecodeSession, "step", failing_once)
    with running_server(model, tokenizer) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError, match="generation failed: RuntimeError: out of memory"):
            client.completions.create(model="tiny", prompt="x", max_tokens=4)
        after = client.completions.create(model="tiny", prompt="x", max_tokens=4, seed=4)
        assert after.choices[0].text == library(model, tokenizer, "x", max_new_tokens=4, seed=4).text


def direct_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, from one forward pass and a log-softmax: no server code involved."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, :-1].double()
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1).tolist()


def test_echo_and_logprobs_score_a_prompt_as_evaluation_harnesses_ask(url, model, tokenizer) -> None:
    """lm-eval's local-completions loglikelihood request: token-id prompts, echo, logprobs 1, max_tokens 1; the
    context's continuation is read from token_logprobs[ctxlen:-1], its greediness from top_logprobs."""
    context, continuation = list(b"To be or"), list(b" not")
    body = {"model": "tiny", "prompt": [context + continuation, context], "max_tokens": 1, "temperature": 0,
            "logprobs": 1, "echo": True, "seed": 1234}  # fmt: skip
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    first, second = sorted(response.json()["choices"], key=lambda c: c["index"])
    logprobs = first["logprobs"]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    expected = direct_logprobs(model, context + continuation)  # the prompt's tokens (then one generated)
    prompt_length = len(context + continuation)
    assert len(logprobs["token_logprobs"]) == prompt_length + 1
    assert logprobs["token_logprobs"][1:prompt_length] == pytest.approx(expected, abs=1e-4)
    ctxlen = len(context)
    assert sum(logprobs["token_logprobs"][ctxlen:-1]) == pytest.approx(sum(expected[ctxlen - 1 :]), abs=1e-4)
    for score, top in zip(logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:], strict=True):
        assert len(top) == 1 and max(top.values()) >= score - 1e-6
    assert logprobs["tokens"][: ctxlen + 4] == [chr(b) for b in context + continuation]
    assert logprobs["text_offset"][:3] == [0, 1, 2] and first["text"].startswith("To be or not")
    assert second["text"].startswith("To be or") and len(second["logprobs"]["tokens"]) == ctxlen + 1


def test_max_tokens_0_with_echo_scores_the_prompt_alone_and_logprobs_cover_new_tokens_otherwise(url, model) -> None:
    prompt = list(b"Hello there")
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 0}
    scored = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    [only] = scored["choices"]
    assert only["text"] == "Hello there" and scored["usage"]["completion_tokens"] == 0
    assert only["logprobs"]["token_logprobs"][1:] == pytest.approx(direct_logprobs(model, prompt), abs=1e-4)
    assert only["logprobs"]["top_logprobs"][1:] == [None] * (len(prompt) - 1)  # logprobs 0: no alternatives
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 5, "temperature": 0, "logprobs": 2}
    generated = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]
    assert "".join(generated["logprobs"]["tokens"]) == generated["text"] and len(generated["logprobs"]["tokens"]) == 5
    too_long = {"model": "tiny", "prompt": "x" * 30, "max_tokens": 5, "logprobs": 1}
    response = httpx.post(f"{url}/v1/completions", json=too_long, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_a_request_past_the_queue_limit_gets_429_and_one_that_fits_is_served(model, tokenizer) -> None:
    with running_server(model, tokenizer, max_queue=4) as base:
        body = {"model": "tiny", "prompt": "To be", "max_tokens": 2, "n": 5}
        response = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
        assert response.status_code == 429, response.text
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert error["code"] == "server_busy" and "at most 4 sequences" in error["message"]
        body["n"] = 4
        assert httpx.post(f"{base}/v1/completions", json=body, timeout=60).status_code == 200

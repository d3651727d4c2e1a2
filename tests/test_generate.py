"""Generation with the KV cache: equal to recomputing, the sliding window, batches, stops, UTF-8, the API."""

import pytest
import torch

from lmkit.chat import add_chat_tokens, render
from lmkit.errors import InputError
from lmkit.generate import DecodeSession, chat_reply, generate, generation_config, stream
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.formats import Layout

pytestmark = pytest.mark.usefixtures("one_thread")

EOT = 256  # the id of <|endoftext|> in the byte tokenizer below


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """Byte-level: id b is byte b, and 256 is <|endoftext|>."""
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


def random_model(context_length: int = 32, seed: int = 0, vocab_size: int = EOT + 1) -> TransformerLM:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=32, num_layers=2, num_heads=4)
    return TransformerLM(config).eval()


def bigram_model(successor: dict[int, int]) -> TransformerLM:
    """A model that, greedily, follows token a with successor[a]: hand-set weights, no training.

    The blocks are zeroed, so the residual stream is the token's one-hot embedding, and the LM head maps
    it to a large logit on the successor.
    """
    config = ModelConfig(vocab_size=EOT + 1, context_length=64, d_model=264, num_layers=1, num_heads=4)
    model = TransformerLM(config).eval()
    with torch.no_grad():
        for parameter in model.layers.parameters():
            parameter.zero_()
        model.token_embeddings.weight.zero_()
        model.token_embeddings.weight[:, : EOT + 1] = torch.eye(EOT + 1)
        model.lm_head.weight.zero_()
        for a, b in successor.items():
            model.lm_head.weight[b, a] = 10.0
    return model


def chain(text: bytes) -> dict[int, int]:
    """Successors that spell out `text` (each byte at most once before the last)."""
    return dict(zip(text, text[1:], strict=False))


@torch.no_grad()
def recompute_greedy(model: TransformerLM, prompt: list[int], new_tokens: int, keep: int) -> list[int]:
    """The documented rule, without a cache: token n is predicted from tokens s … n-1 of the (cropped) sequence,
    where s starts at 0 and jumps to n - keep whenever n - s would exceed the context."""
    context = model.config.context_length
    sequence, start = prompt[-context:], 0
    for _ in range(new_tokens):
        n = len(sequence)
        if n - start > context:
            start = n - keep
        logits = model(torch.tensor([sequence[start:n]]))[0, -1]
        sequence.append(int(logits.argmax()))
    return sequence[len(prompt[-context:]) :]


def byte_tokenizer() -> Tokenizer:
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


def cached_greedy(model: TransformerLM, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    session = DecodeSession(model, byte_tokenizer(), slots=len(prompts))
    config = generation_config(temperature=0, max_new_tokens=new_tokens)
    sequences = [session.add(prompt, config) for prompt in prompts]
    while session.sequences:
        session.step()
    return [sequence.continuation.ids for sequence in sequences]


# --- the KV cache --------------------------------------------------------------------------------------------


def test_cached_greedy_equals_recomputing_everything():
    model = random_model(context_length=64)
    prompt = list(b"The KV cache")
    # 12 + 40 tokens stay inside the context: no slide, so this is plain recomputation.
    assert cached_greedy(model, [prompt], 40) == [recompute_greedy(model, prompt, 40, keep=32)]


def test_sequences_join_and_leave_a_session_at_any_step_and_each_decodes_as_alone():
    """Staggered arrivals, chunked prompts, a sequence dropped midway and its slot taken by a newcomer: every
    sequence still gets what the documented rule gives it alone (the window slides on the way)."""
    model = random_model(context_length=16)
    session = DecodeSession(model, byte_tokenizer(), slots=3, prefill_chunk=4)
    greedy = generation_config(temperature=0, max_new_tokens=30)
    first = session.add(list(b"abc"), greedy)
    for _ in range(3):
        session.step()
    second = session.add(list(b"defghijklmn"), greedy)  # 11 tokens: three chunks of at most 4
    widths = []
    for _ in range(2):
        widths.append(len(session.step()))
    assert widths == [1, 1]  # `second` is still being fed its prompt; `first` decodes meanwhile
    dropped = session.add(list(b"opq"), greedy)
    session.step()
    session.step()
    session.remove(dropped)
    assert dropped.slot == -1 and len(dropped.continuation.ids) < 30
    third = session.add(list(b"rstuvw"), greedy)
    assert third.slot == 2 and session.free_slots == 0
    while session.sequences:
        session.step()
    for sequence in (first, second, third):
        assert len(sequence.continuation.ids) == 30
        assert sequence.continuation.ids == recompute_greedy(model, sequence.prompt_ids, 30, keep=8)
    partial = dropped.continuation.ids
    assert partial == recompute_greedy(model, dropped.prompt_ids, len(partial), keep=8)


@pytest.mark.parametrize("prefill_chunk", [1, 5, None])
def test_a_full_context_prompt_slides_at_once_in_any_chunking(prefill_chunk):
    """A prompt that fills the context: its first new token already makes the window slide; fed one token per
    step, five, or whole, every sequence still follows the documented rule."""
    model = random_model(context_length=16)
    session = DecodeSession(model, byte_tokenizer(), slots=2, prefill_chunk=prefill_chunk)
    greedy = generation_config(temperature=0, max_new_tokens=20)
    full = session.add(list(b"exactly sixteen!"), greedy)
    short = session.add(list(b"hi"), greedy)
    while session.sequences:
        session.step()
    assert full.continuation.ids == recompute_greedy(model, full.prompt_ids, 20, keep=8)
    assert short.continuation.ids == recompute_greedy(model, short.prompt_ids, 20, keep=8)


def test_a_session_refuses_what_does_not_fit(tokenizer):
    model = random_model(context_length=16)
    session = DecodeSession(model, tokenizer, slots=1)
    with pytest.raises(ValueError, match="1 … 16 tokens"):
        session.add(list(range(17)), generation_config(temperature=0))
    with pytest.raises(ValueError, match="needs a seed"):
        session.add([1], generation_config(temperature=0.5))
    session.add([1], generation_config(temperature=0))
    with pytest.raises(ValueError, match="no free slot"):
        session.add([2], generation_config(temperature=0))


def test_past_the_context_the_window_slides_by_half():
    model = random_model(context_length=16)
    prompt = list(b"abcdefghij")
    # 10 + 50 tokens: the cache fills at position 16 and then every 8 tokens.
    assert cached_greedy(model, [prompt], 50) == [recompute_greedy(model, prompt, 50, keep=8)]


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens(tokenizer):
    model = random_model(context_length=16)
    prompt = "a long prompt, longer than the sixteen-token context"
    out = generate(model, tokenizer, prompt, temperature=0, max_new_tokens=20)
    assert out.prompt_ids == list(prompt.encode())[-16:]
    expected = recompute_greedy(model, list(prompt.encode()), 20, keep=8)
    assert out.ids == expected[: len(out.ids)]
    # Cropping happens first: only the last 16 tokens matter.
    assert generate(model, tokenizer, prompt[-16:], temperature=0, max_new_tokens=20).ids == out.ids


def test_a_tokenizer_that_adds_a_bos_token_starts_every_prompt_with_it(tokenizer):
    bos = "<|begin_of_text|>"
    with_bos = Tokenizer(tokenizer.vocab, [], ["<|endoftext|>", bos], Layout(bos_token=bos))  # id 257
    model = random_model(context_length=16, vocab_size=EOT + 2)
    long_prompt = "a prompt longer than the sixteen-token context"
    out = generate(model, with_bos, ["hi", long_prompt], temperature=0, max_new_tokens=4)
    assert out[0].prompt_ids == [257, *b"hi"]
    assert out[1].prompt_ids == [257, *long_prompt.encode()[-15:]]  # cropped to the context, the BOS kept
    assert generate(model, tokenizer, "hi", temperature=0, max_new_tokens=4).prompt_ids == list(b"hi")
    # A chat reply reads the conversation as it was fine-tuned: the template's tokens alone, no BOS.
    chat_tokenizer = add_chat_tokens(with_bos)  # <|im_start|> 258, <|im_end|> 259
    messages = [{"role": "user", "content": "hi"}]
    reply = chat_reply(random_model(vocab_size=260), chat_tokenizer, messages, max_new_tokens=2)
    list(reply)
    expected = render(chat_tokenizer, messages, add_generation_prompt=True)[0].tolist()
    assert reply.generation.prompt_ids == expected and expected[0] == 258


def test_a_batch_gives_each_prompt_what_it_gets_alone(tokenizer):
    model = random_model(context_length=16)
    prompts = ["Hi", "Good morning", "x" * 30, "Once upon a time"]
    together = generate(model, tokenizer, prompts, temperature=0, max_new_tokens=25)
    alone = [generate(model, tokenizer, prompt, temperature=0, max_new_tokens=25) for prompt in prompts]
    assert [g.ids for g in together] == [g.ids for g in alone]
    assert [g.text for g in together] == [g.text for g in alone]


def test_each_prompt_of_a_sampled_batch_equals_it_alone_with_its_own_seed(tokenizer):
    model = random_model()
    prompts = ["one", "two three", "one"]
    together = generate(model, tokenizer, prompts, temperature=1.0, top_p=0.9, seed=5, max_new_tokens=30)
    assert [g.seed for g in together] == [5, 6, 7]
    for prompt, result in zip(prompts, together, strict=True):
        alone = generate(model, tokenizer, prompt, temperature=1.0, top_p=0.9, seed=result.seed, max_new_tokens=30)
        assert alone.ids == result.ids
    assert together[0].ids != together[2].ids  # the same prompt twice: two different samples


def test_sampled_batches_repeat_with_a_seed(tokenizer):
    model = random_model()
    prompts = ["one", "two three"]
    first = generate(model, tokenizer, prompts, temperature=1.0, top_p=0.9, seed=5, max_new_tokens=30)
    again = generate(model, tokenizer, prompts, temperature=1.0, top_p=0.9, seed=5, max_new_tokens=30)
    other = generate(model, tokenizer, prompts, temperature=1.0, top_p=0.9, seed=6, max_new_tokens=30)
    assert [g.ids for g in first] == [g.ids for g in again] != [g.ids for g in other]
    assert first[0].seed == 5


# --- stopping and decoding -----------------------------------------------------------------------------------


def test_greedy_follows_the_hand_made_model(tokenizer):
    model = bigram_model(chain(b"abcdefgh"))
    out = generate(model, tokenizer, "a", temperature=0, max_new_tokens=5)
    assert (out.text, out.ids, out.stop_reason) == ("bcdef", list(b"bcdef"), "length")


def test_end_of_text_stops_and_is_not_printed(tokenizer):
    model = bigram_model({**chain(b"abcd"), ord("d"): EOT})
    out = generate(model, tokenizer, "a", temperature=0, max_new_tokens=50)
    assert (out.text, out.ids, out.stop_reason) == ("bcd", [*b"bcd", EOT], "stop")


def test_a_stop_string_across_tokens_cuts_the_text_before_it(tokenizer):
    model = bigram_model(chain(b"abcdefghijklmnop"))
    pieces = stream(model, tokenizer, "a", temperature=0, max_new_tokens=50, stop=["xyz", "efg"])
    streamed = list(pieces)
    # "e" and "f" were held back while they could begin "efg"; nothing past the stop was ever printed.
    assert "".join(streamed) == "bcd"
    out = pieces.generation
    assert (out.text, out.ids, out.stop_reason) == ("bcd", list(b"bcdefg"), "stop")


def test_a_held_back_prefix_that_is_no_stop_is_released(tokenizer):
    model = bigram_model(chain(b"abcdefgh"))
    pieces = list(stream(model, tokenizer, "a", temperature=0, max_new_tokens=6, stop=["dex", "gh"]))
    assert "".join(pieces) == "bcdefg"


def test_multibyte_characters_stream_whole(tokenizer):
    text = "xé€😀y".encode()
    model = bigram_model(chain(text))
    pieces = list(stream(model, tokenizer, "x", temperature=0, max_new_tokens=len(text) - 1))
    assert "".join(pieces) == "é€😀y"
    assert "é" in pieces and "€" in pieces and "😀" in pieces  # each printed whole, never as U+FFFD


def test_text_equals_decoding_the_ids_even_with_broken_utf8(tokenizer):
    model = random_model()  # samples arbitrary bytes: many invalid UTF-8 sequences
    for seed in range(3):
        pieces = stream(model, tokenizer, "bytes:", temperature=1.5, top_p=1.0, seed=seed, max_new_tokens=60)
        streamed = "".join(pieces)
        out = pieces.generation
        if out.stop_reason == "length":
            assert out.text == tokenizer.decode(out.ids)
        assert streamed == out.text


# --- the API -------------------------------------------------------------------------------------------------


def test_only_ids_the_tokenizer_knows_are_sampled(tokenizer):
    config = ModelConfig(vocab_size=400, context_length=16, d_model=32, num_layers=1, num_heads=4)
    model = TransformerLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[300:] += 100.0  # the padded ids would win every draw
    out = generate(model, tokenizer, "pad", temperature=1.0, seed=0, max_new_tokens=30)
    assert max(out.ids) < 257


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": [""]}, "stop string must not be empty"),
        ({"temprature": 1.0}, "unknown key 'temprature'"),
    ],
)
def test_bad_options_are_input_errors(tokenizer, options, message):
    with pytest.raises(InputError, match=message):
        generate(random_model(), tokenizer, "hi", **options)


def test_an_empty_prompt_is_an_input_error(tokenizer):
    with pytest.raises(InputError, match="prompt 2 is empty"):
        generate(random_model(), tokenizer, ["hi", ""])
    with pytest.raises(InputError, match="empty"):
        stream(random_model(), tokenizer, "")


def test_the_last_position_alone_gives_the_same_logits_as_the_whole_pass():
    config = ModelConfig(vocab_size=300, context_length=32, d_model=32, num_layers=2, num_heads=4)
    torch.manual_seed(0)
    model = TransformerLM(config).eval()
    tokens = torch.randint(0, 300, (3, 20))
    with torch.no_grad():
        last = model(tokens, last_only=True)
        assert last.shape == (3, 1, 300)
        torch.testing.assert_close(last, model(tokens)[:, -1:], rtol=0, atol=1e-6)

"""Conversations and supervised fine-tuning: the chat template against transformers, the trained-token mask,
malformed records, the masked loss, the vocabulary's growth, and a fine-tuning run end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_input_error
from typer.testing import CliRunner

import lmkit
from lmkit.chat import CHAT_TEMPLATE, add_chat_tokens, read_conversations, render
from lmkit.chat.template import render_text
from lmkit.checkpoint import load_model_and_tokenizer, read_checkpoint
from lmkit.cli.app import app
from lmkit.errors import InputError
from lmkit.generate import generate
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer, train_bpe
from lmkit.training.chat_data import grown_vocabulary, pack_conversations
from lmkit.training.loss import IGNORE, cross_entropy

pytestmark = pytest.mark.usefixtures("one_thread")

SHAKESPEARE = Path(lmkit.__file__).parent / "data" / "tinyshakespeare.txt"
FIXTURES = Path(__file__).parent / "fixtures"
CONVERSATION = [
    {"role": "system", "content": "Be  brief.\n"},
    {"role": "user", "content": " What is 2+2?"},
    {"role": "assistant", "content": "\n\n4, of course!  "},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6."},
]


@pytest.fixture(scope="module")
def chat_tokenizer() -> Tokenizer:
    vocab, merges = train_bpe(FIXTURES / "tinystories_sample.txt", 400, ["<|endoftext|>"])
    return add_chat_tokens(Tokenizer(vocab, merges, ["<|endoftext|>"]))


def test_the_template_gives_transformers_ids_and_trains_on_the_assistant_only(chat_tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast

    chat_tokenizer.save(tmp_path / "tokenizer.json")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), chat_template=CHAT_TEMPLATE)
    for messages, prompt in ((CONVERSATION, False), (CONVERSATION[:2], True)):
        ids, trained = render(chat_tokenizer, messages, add_generation_prompt=prompt)
        expected = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert ids.tolist() == list(expected)
    ids, trained = render(chat_tokenizer, CONVERSATION)
    pieces, current = [], []
    for token, keep in zip(ids.tolist(), trained.tolist(), strict=True):
        if keep:
            current.append(token)
        elif current:
            pieces.append(chat_tokenizer.decode(current)), current.clear()
    assert pieces == ["\n\n4, of course!  <|im_end|>", "6.<|im_end|>"]
    assert add_chat_tokens(chat_tokenizer) is chat_tokenizer
    assert chat_tokenizer.special_ids["<|im_start|>"] == 400 and chat_tokenizer.special_ids["<|im_end|>"] == 401


def test_malformed_records_are_skipped_and_named_or_refused(tmp_path):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    records = [
        good,
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"messages": [{"role": "assistant", "content": 3}]}),
        json.dumps({"messages": [{"role": "assistant", "content": "a <|im_end|> b"}]}),
        json.dumps(["a list"]),
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(records) + "\n")
    read = read_conversations(tmp_path / "c.jsonl")
    assert [c.line for c in read.conversations] == [1]
    assert read.skipped == [
        (2, "not valid JSON"),
        (3, "no assistant message to learn from"),
        (4, "message 0 has no role among system, user, assistant"),
        (5, "message 0's content is not a string"),
        (6, "message 0's content holds a template marker (<|im_start|> or <|im_end|>)"),
        (7, 'not an object with a "messages" list'),
    ]
    with pytest.raises(InputError, match=r"c.jsonl, line 2: not valid JSON"):
        read_conversations(tmp_path / "c.jsonl", strict=True)
    with pytest.raises(InputError, match="does not exist"):
        read_conversations(tmp_path / "none.jsonl")


def test_packed_rows_target_only_assistant_tokens(chat_tokenizer):
    conversations = [CONVERSATION, CONVERSATION[1:3], CONVERSATION * 9]  # the last is longer than a row
    ids, targets, too_long = pack_conversations(conversations, chat_tokenizer, context_length=96)
    first, trained_first = render(chat_tokenizer, CONVERSATION)
    second, trained_second = render(chat_tokenizer, CONVERSATION[1:3])
    assert too_long == 1 and ids.shape[1] == 97
    flat_ids = [token for row in ids.tolist() for token in row]
    assert flat_ids[: len(first)] == first.tolist()  # conversations whole, in order
    expected = np.where(trained_first[1:], first[1:], IGNORE)
    assert targets[0, : len(first) - 1].tolist() == expected.tolist()
    assert (targets != IGNORE).sum() == trained_first.sum() + trained_second.sum()  # nothing else trained


def test_the_loss_leaves_out_ignored_targets():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 40, requires_grad=True)
    targets = torch.randint(0, 40, (3, 5))
    targets[0, :4], targets[2, 1] = IGNORE, IGNORE
    reference = logits.detach().clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(reference.view(-1, 40), targets.view(-1), ignore_index=IGNORE)
    ours = cross_entropy(logits, targets)
    ours.backward(), expected.backward()
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(logits.grad, reference.grad)
    assert logits.grad[0, :4].abs().max() == 0


@pytest.mark.parametrize("tied", [False, True])
def test_a_grown_vocabulary_leaves_the_old_tokens_logits_alone(tied):
    config = ModelConfig(vocab_size=50, context_length=16, d_model=32, num_layers=1, num_heads=2, tie_embeddings=tied)
    torch.manual_seed(0)
    base = TransformerLM(config).eval()
    grown = TransformerLM(config.model_copy(update={"vocab_size": 52})).eval()
    state = grown_vocabulary(base.state_dict(), 52)
    grown.load_state_dict(state)
    tokens = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(grown(tokens)[..., :50], base(tokens))
        torch.testing.assert_close(grown.lm_head.weight[50], base.lm_head.weight.mean(dim=0))


def write_tables(path: Path, tables: dict[str, dict]) -> Path:
    path.write_text(
        "".join(f"[{t}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in f.items()) for t, f in tables.items())
    )
    return path


@pytest.fixture(scope="module")
def sft_folder(tmp_path_factory) -> Path:
    """A base model pretrained a little on byte-level Tiny Shakespeare, and conversations to fine-tune it on:
    whatever the user says, the assistant answers "Aye."."""
    folder = tmp_path_factory.mktemp("sft")
    Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]).save(folder / "tokenizer.json")
    ids = np.frombuffer(SHAKESPEARE.read_bytes()[:100_000], dtype=np.uint8).astype(np.uint16)
    np.save(folder / "train.npy", ids[:90_000]), np.save(folder / "val.npy", ids[90_000:])
    lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()[:600]
    for split, part in (("train", lines[:500]), ("val", lines[500:])):
        records = [{"messages": [{"role": "user", "content": line}, {"role": "assistant", "content": "Aye."}]}
                   for line in part if line.strip()]  # fmt: skip
        (folder / f"chat.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tables = {
        "data": {"train": str(folder / "train.npy"), "val": str(folder / "val.npy"),
                 "tokenizer": str(folder / "tokenizer.json")},
        "model": {"vocab_size": 257, "context_length": 128, "d_model": 32, "num_layers": 1, "num_heads": 2},
        "optim": {"lr": 3e-3},
        "train": {"batch_size": 8, "steps": 20, "eval_every": 20, "eval_batches": 1, "out_dir": str(folder / "base"),
                  "device": "cpu"},
    }  # fmt: skip
    write_tables(folder / "base.toml", tables)
    assert CliRunner().invoke(app, ["train", "-q", "--config", str(folder / "base.toml")]).exit_code == 0
    tables["data"].update(train=str(folder / "chat.train.jsonl"), val=str(folder / "chat.val.jsonl"), format="chat")
    tables["model"]["vocab_size"] = 259
    tables["optim"]["lr"] = 1e-2
    tables["train"].update(
        steps=60, eval_every=30, out_dir=str(folder / "sft"), init_from=str(folder / "base" / "best.pt")
    )
    write_tables(folder / "sft.toml", tables)
    return folder


@pytest.mark.slow
def test_fine_tuning_teaches_the_reply_and_resumes(sft_folder):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "-q", "--config", str(sft_folder / "sft.toml"), "--until-step", "30"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "-q", "--resume", str(sft_folder / "sft")])
    assert result.exit_code == 0, result.output
    model, tokenizer = load_model_and_tokenizer(sft_folder / "sft" / "last.pt", "cpu")
    assert tokenizer.special_ids == {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
    prompt = render_text([{"role": "user", "content": "What say you, good sir?"}], add_generation_prompt=True)
    answer = generate(model, tokenizer, prompt, max_new_tokens=10, temperature=0, stop=["<|im_end|>"]).text
    assert answer == "Aye."
    checkpoint = read_checkpoint(sft_folder / "sft" / "last.pt")
    assert checkpoint["iteration"] == 60 and checkpoint["val_loss"] < 0.5


def test_fine_tuning_settings_that_cannot_work_are_refused(sft_folder, tmp_path):
    runner = CliRunner()
    config = str(sft_folder / "sft.toml")
    out = ["--set", f"train.out_dir={tmp_path / 'out'}"]
    result = runner.invoke(app, ["train", "--config", config, *out, "--set", "model.vocab_size=257"])
    assert_input_error(
        result, "model.vocab_size (257) is smaller than the tokenizer's vocabulary with the chat template's"
    )
    result = runner.invoke(app, ["train", "--config", config, *out, "--set", "train.batching=documents"])
    assert_input_error(result, 'data.format = "chat" packs whole conversations itself')
    result = runner.invoke(app, ["train", "--config", config, *out, "--set", f"data.val={tmp_path / 'none.jsonl'}"])
    assert_input_error(result, "does not exist")
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\n')
    result = runner.invoke(app, ["train", "--config", config, *out, "--set", f"data.val={tmp_path / 'bad.jsonl'}"])
    assert_input_error(result, "holds no conversation (1 malformed records)")
    assert not (tmp_path / "out" / "last.pt").exists()


def test_an_exported_chat_model_renders_conversations_as_lmkit_does(chat_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from lmkit.checkpoint import save_checkpoint

    config = ModelConfig(vocab_size=402, context_length=64, d_model=32, num_layers=1, num_heads=2)
    model = TransformerLM(config)
    config_tables = {"model": config.model_dump(mode="json")}
    save_checkpoint(model, None, 0, tmp_path / "chat.pt", config=config_tables, tokenizer_json=chat_tokenizer.to_json())
    result = CliRunner().invoke(app, ["export", "hf", str(tmp_path / "chat.pt"), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for prompt in (False, True):
        expected = hf.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=prompt)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert list(expected) == render(chat_tokenizer, CONVERSATION, add_generation_prompt=prompt)[0].tolist()
    base = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    save_checkpoint(model, None, 0, tmp_path / "base.pt", config=config_tables, tokenizer_json=base.to_json())
    assert (
        CliRunner().invoke(app, ["export", "hf", str(tmp_path / "base.pt"), "--out", str(tmp_path / "b")]).exit_code
        == 0
    )
    assert "chat_template" not in json.loads((tmp_path / "b" / "tokenizer_config.json").read_text())


@pytest.fixture(scope="module")
def fine_tuned(sft_folder) -> Path:
    """The fine-tuned run folder (answers "Aye." to anything)."""
    out = sft_folder / "chat-run"
    args = ["train", "-q", "--config", str(sft_folder / "sft.toml"), "--set", f"train.out_dir={out}"]
    assert CliRunner().invoke(app, args).exit_code == 0
    return out


def test_lmkit_chat_answers_turn_by_turn_and_refuses_a_base_model(fine_tuned, sft_folder):
    runner = CliRunner()
    result = runner.invoke(app, ["chat", str(fine_tuned), "-m", "Speak, friend.", "-t", "0", "--system", "Be brief."])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Aye.\n"
    turns = runner.invoke(
        app, ["chat", str(fine_tuned), "-t", "0"], input="Who goes there?\n/reset\nWhat news?\n/exit\n"
    )
    assert turns.exit_code == 0, turns.output
    assert turns.stdout.splitlines() == ["Aye.", "Aye."] and "(a new conversation)" in turns.stderr
    assert_input_error(
        runner.invoke(app, ["chat", str(sft_folder / "base"), "-m", "hi"]), "this model has no chat template"
    )
    assert_input_error(runner.invoke(app, ["chat", str(fine_tuned), "-m", "hi", "--top-p", "0"]), "top_p")


def test_a_handled_ctrl_c_lets_the_next_one_raise_again():
    import signal

    from lmkit.interrupts import Interrupted, raise_again_on_signals, raise_on_signals

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with raise_on_signals():
            with pytest.raises(Interrupted):
                signal.raise_signal(signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the first one ignores the rest
            raise_again_on_signals()
            with pytest.raises(Interrupted):
                signal.raise_signal(signal.SIGINT)
    finally:  # the last one left them ignored, as a stopping command wants; this test process does not
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_the_server_answers_chat_completions_as_the_openai_client_expects(fine_tuned, sft_folder):
    import httpx
    import openai
    from serving import running_server

    model, tokenizer = load_model_and_tokenizer(fine_tuned / "best.pt", "cpu")
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who's there?"}]
    with running_server(model, tokenizer) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        whole = client.chat.completions.create(model="tiny", messages=conversation, temperature=0, max_tokens=12)
        assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")
        [answer] = whole.choices
        assert (answer.message.role, answer.message.content, answer.finish_reason) == ("assistant", "Aye.", "stop")
        prompt = render(tokenizer, conversation, add_generation_prompt=True)[0]
        assert whole.usage.prompt_tokens == len(prompt) and whole.usage.completion_tokens >= len("Aye.")
        chunks = list(
            client.chat.completions.create(
                model="tiny", messages=conversation, temperature=0, max_tokens=12, stream=True,
                stream_options={"include_usage": True},
            )
        )  # fmt: skip
        assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Aye."
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop" and chunks[-1].usage
        two = client.chat.completions.create(model="tiny", messages=conversation, n=2, seed=4, max_completion_tokens=3)
        assert [c.index for c in two.choices] == [0, 1] and two.choices[0].finish_reason == "length"
        for body, param in (
            ({"model": "tiny", "messages": []}, "messages"),
            ({"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}, "messages"),
            ({"model": "tiny", "messages": conversation, "logit_bias": {}}, "logit_bias"),
        ):
            response = httpx.post(f"{url}/v1/chat/completions", json=body)
            assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    base, base_tokenizer = load_model_and_tokenizer(sft_folder / "base" / "best.pt", "cpu")
    with running_server(base, base_tokenizer) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="this model has no chat template"):
            client.chat.completions.create(model="tiny", messages=conversation)

"""`lmkit eval` and lmkit.evaluation: bits per byte by hand, two tokenizers over the same bytes, strided windows,
multiple choice against a direct forward pass, val bpb in training logs and runs, and every bad input."""

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHAKESPEARE, assert_input_error, write_tiny_run

from lmkit.checkpoint import save_checkpoint
from lmkit.cli.app import app
from lmkit.evaluation import evaluate
from lmkit.evaluation.choices import ChoiceScore, Question, evaluate_choices, read_questions, score_question
from lmkit.evaluation.perplexity import windows
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer, train_bpe

pytestmark = pytest.mark.usefixtures("one_thread")

EOT = "<|endoftext|>"
TEXT = "Thé quick brown fox jumps over the lazy dog. 狐狸跳了!\nA second line, and a third: done.\n" * 2


def byte_tokenizer() -> Tokenizer:
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOT])


def tiny_model(vocab_size: int, context: int = 16, seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab_size, context_length=context, d_model=16, num_layers=1, num_heads=2)
    return TransformerLM(config).eval()


def save_run_checkpoint(model: TransformerLM, tokenizer: Tokenizer, path: Path) -> Path:
    """A checkpoint with what `lmkit train` stores for inference: weights, the model config and the tokenizer."""
    config = {"model": model.config.model_dump(mode="json")}
    save_checkpoint(model, None, 0, path, config=config, tokenizer_json=tokenizer.to_json())
    return path


def direct_nats(model: TransformerLM, context_ids: list[int], target: int) -> float:
    """-ln p(target | context_ids) from one forward pass and a log-softmax: no lmkit loss involved."""
    with torch.no_grad():
        logits = model(torch.tensor([context_ids]))[0, -1].double()
    return -(logits.log_softmax(-1)[target]).item()


# --- bits per byte --------------------------------------------------------------------------------------------


def test_bits_per_byte_equals_a_hand_computation_over_one_window(tmp_path):
    tokenizer, model = byte_tokenizer(), tiny_model(257, context=256)
    text = "Hello, wörld!\nIt's a test."
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    result = evaluate(model, tokenizer, tmp_path / "t.txt")
    stream = [256, *text.encode("utf-8")]  # <|endoftext|> (id 256) first, then one id per byte
    with torch.no_grad():
        logits = model(torch.tensor([stream[:-1]]))[0].double()
    nats = -logits.log_softmax(-1)[torch.arange(len(stream) - 1), torch.tensor(stream[1:])].sum().item()
    n_bytes = len(text.encode("utf-8"))
    assert result.tokens == n_bytes and result.bytes == n_bytes
    assert result.total_nats == pytest.approx(nats, rel=1e-5)
    assert result.loss == pytest.approx(nats / n_bytes, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nats / n_bytes), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-5)


@pytest.mark.parametrize(("context", "stride"), [(8, 8), (8, 3), (8, 1), (5, 4)])
def test_windowed_scores_equal_each_token_scored_alone_with_its_context(tmp_path, context, stride):
    """Every token once: the first window's from the stream's start, a later window's from its end - context."""
    tokenizer, model = byte_tokenizer(), tiny_model(257, context=context)
    text = "To be, or not to be: that is the question."
    (tmp_path / "t.txt").write_text(text)
    result = evaluate(model, tokenizer, tmp_path / "t.txt", stride=stride, batch_size=3)
    stream = [256, *text.encode()]
    nats = 0.0
    for position in range(1, len(stream)):
        if position <= context:
            start = 0
        else:  # the window scoring `position` ends at the next multiple of the stride past the first window
            end = min(context + stride * math.ceil((position - context) / stride), len(stream) - 1)
            start = end - context
        nats += direct_nats(model, stream[start:position], stream[position])
    assert result.tokens == len(stream) - 1 == result.bytes
    assert result.total_nats == pytest.approx(nats, rel=1e-5)


def test_stride_windows_score_each_token_exactly_once_with_enough_context():
    rng = np.random.default_rng(0)
    for context, stride, length in [(16, 16, 100), (16, 5, 100), (16, 1, 40), (7, 3, 8), (7, 7, 7), (4, 2, 2)]:
        stream = np.arange(length)
        cuts = np.sort(rng.choice(np.arange(1, length), size=min(4, length - 1), replace=False))
        scored = []
        for number, (window, n) in enumerate(windows(np.split(stream, cuts), context, stride)):
            assert 1 <= n <= len(window) - 1 and len(window) <= context + 1
            assert np.array_equal(window, np.arange(window[0], window[-1] + 1))  # contiguous stream positions
            if number > 0:  # the first scored token of a later window sees at least context - stride tokens
                assert len(window) - n >= context - stride + 1 or window[0] == 0
            scored += window[-n:].tolist()
        assert scored == list(range(1, length)), (context, stride, length)


def test_max_tokens_stops_after_that_many(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    result = evaluate(tiny_model(257), byte_tokenizer(), tmp_path / "t.txt", max_tokens=37)
    assert result.tokens == result.bytes == 37


def test_the_same_text_under_two_tokenizers_is_scored_over_the_same_bytes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:20_000])
    vocab, merges = train_bpe(corpus, 400, [EOT])
    bpe = Tokenizer(vocab, merges, [EOT])
    text = SHAKESPEARE.read_text()[30_000:31_000] + EOT + "Second document.\n"
    (tmp_path / "t.txt").write_text(text)
    byte_result = evaluate(tiny_model(257), byte_tokenizer(), tmp_path / "t.txt")
    bpe_result = evaluate(tiny_model(bpe.vocab_size), bpe, tmp_path / "t.txt")
    text_bytes = len(text.encode("utf-8")) - len(EOT)  # the special token in the text counts no bytes
    assert byte_result.bytes == bpe_result.bytes == text_bytes
    assert bpe_result.tokens < byte_result.tokens  # ... over fewer, longer tokens
    # Same bytes, so bits per byte relate the two losses by their tokens-per-byte ratio.
    assert bpe_result.bits_per_byte == pytest.approx(bpe_result.total_nats / math.log(2) / text_bytes)


def test_a_token_array_scores_like_its_text(tmp_path):
    tokenizer, model = byte_tokenizer(), tiny_model(257)
    (tmp_path / "t.txt").write_text(TEXT)
    np.save(tmp_path / "t.npy", np.array(tokenizer.encode(TEXT), dtype=np.uint16))
    from_text = evaluate(model, tokenizer, tmp_path / "t.txt", stride=5)
    from_array = evaluate(model, tokenizer, tmp_path / "t.npy", stride=5)
    assert (from_array.tokens, from_array.bytes) == (from_text.tokens, from_text.bytes)
    assert from_array.total_nats == pytest.approx(from_text.total_nats, rel=1e-6)


# --- multiple choice ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_tokens", [False, True])
def test_progress_moves_with_each_scored_batch(tmp_path, monkeypatch, as_tokens):
    """The bar advances per batch (not once the data is used up), by bytes of text or by tokens scored."""
    import lmkit.evaluation.perplexity as perplexity

    advances: list[float] = []

    class Bar:
        def advance(self, amount: float) -> None:
            advances.append(amount)

        def update(self, **_: object) -> None:
            pass

    @contextlib.contextmanager
    def recording_bar(*_: object, **__: object):
        yield Bar()

    monkeypatch.setattr(perplexity, "progress_bar", recording_bar)
    tokenizer, model = byte_tokenizer(), tiny_model(257, context=16)
    data = tmp_path / ("t.npy" if as_tokens else "t.txt")
    if as_tokens:
        np.save(data, np.frombuffer(TEXT.encode(), dtype=np.uint8).astype(np.uint16))
    else:
        data.write_text(TEXT, encoding="utf-8")
    result = evaluate(model, tokenizer, data, batch_size=2)
    assert len(advances) >= math.ceil(result.tokens / 32) > 3 and max(advances) <= 2 * 16 * 4  # a batch at most
    assert sum(advances) == (result.tokens if as_tokens else result.bytes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny byte-level model trained briefly on tinyshakespeare: it prefers English letters to 'qzx'."""
    folder = tmp_path_factory.mktemp("run")
    config = write_tiny_run(folder, f'batch_size = 16\nsteps = 150\neval_every = 150\nout_dir = "{folder}/out"\n')
    text = config.read_text().replace("lr = 1e-3", "lr = 1e-2")
    config.write_text(
        text.replace("d_model = 16", "d_model = 32").replace("context_length = 16", "context_length = 64")
    )
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["train", "--quiet", "--config", str(config), "--set", "train.device=cpu"])
    assert result.exit_code == 0, result.output
    return folder / "out" / "last.pt"


def test_the_scorer_picks_the_right_answer_and_its_likelihoods_are_a_forward_pass(trained):
    from lmkit.generate import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(trained, "cpu")
    question = Question("ROMEO:\nBut soft, what light through yonder window", [" qzx vvk jjp?", " breaks?"], 1)
    scores = score_question(model, tokenizer, question)
    assert int(np.argmax([s.loglik for s in scores])) == 1
    assert int(np.argmax([s.loglik_norm for s in scores])) == 1
    context = list(question.context.encode())  # a byte tokenizer without special tokens: nothing goes first
    for choice, score in zip(question.choices, scores, strict=True):
        ids = list(choice.encode())
        row = context + ids
        first = max(0, len(row) - 65)  # context + choice longer than 64 + 1: the context loses its first ids
        expected = -sum(direct_nats(model, row[first : len(context) + i], ids[i]) for i in range(len(ids)))
        assert score.loglik == pytest.approx(expected, rel=1e-5)
        assert score.loglik_norm == pytest.approx(expected / len(choice), rel=1e-5)
    assert evaluate_choices(model, tokenizer, [question])["accuracy"] == 1.0


def test_summed_and_normalised_accuracies_differ_where_length_matters(monkeypatch):
    """A long right answer loses on its sum but wins per character."""
    import lmkit.evaluation.choices as choices

    fake = {
        "long": [ChoiceScore(loglik=-10.0, tokens=5, characters=20), ChoiceScore(loglik=-6.0, tokens=2, characters=4)],
        "short": [ChoiceScore(loglik=-9.0, tokens=3, characters=9), ChoiceScore(loglik=-3.0, tokens=1, characters=6)],
    }
    monkeypatch.setattr(choices, "score_question", lambda model, tokenizer, question, dtype: fake[question.context])
    questions = [
        Question("long", ["a", "b"], 0),
        Question("short", ["a", "b"], 1),
        Question("long", ["a", "b", "c"], 1),
    ]
    report = evaluate_choices(tiny_model(257), byte_tokenizer(), questions)
    # long (label 0): sum picks 1, per character picks 0; short (label 1): both pick 1; long (label 1): sum only.
    assert report["accuracy"] == pytest.approx(2 / 3) and report["accuracy_norm"] == pytest.approx(2 / 3)
    assert report["questions"] == 3 and report["chance"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)


def test_the_example_questions_run_through_the_cli(runner, trained, fixtures):
    result = runner.invoke(app, ["eval", str(trained), "--choices", str(fixtures / "choices.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["choices"]
    questions = read_questions(fixtures / "choices.jsonl")
    assert report["questions"] == len(questions) == 6
    assert report["chance"] == pytest.approx(sum(1 / len(q.choices) for q in questions) / 6)
    assert 0 <= report["accuracy"] <= 1 and 0 <= report["accuracy_norm"] <= 1


def test_cli_reports_text_figures_as_table_and_json(runner, trained, tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    result = runner.invoke(app, ["eval", str(trained), str(tmp_path / "t.txt"), "--json", "--stride", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    data = report["data"]
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    # No special token to start from: the first byte is context only.
    assert (data["context"], data["stride"], data["tokens"], data["bytes"]) == (64, 8, *[len(TEXT.encode()) - 1] * 2)
    assert data["bits_per_byte"] == pytest.approx(data["loss"] * data["tokens"] / (math.log(2) * data["bytes"]))
    table = runner.invoke(app, ["eval", str(trained), str(tmp_path / "t.txt"), "--quiet"])
    assert table.exit_code == 0, table.output
    assert "bits_per_byte" in table.stdout and "perplexity" in table.stdout


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_checkpoint(tmp_path) -> Path:
    return save_run_checkpoint(tiny_model(257), byte_tokenizer(), tmp_path / "c.pt")


def test_bad_checkpoints_and_data_exit_2_with_one_line(runner, small_checkpoint, tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    np.save(tmp_path / "empty.npy", np.zeros(0, dtype=np.uint16))
    np.save(tmp_path / "big.npy", np.array([1, 2, 300, 4], dtype=np.uint16))
    np.save(tmp_path / "one.npy", np.array([5], dtype=np.uint16))
    np.save(tmp_path / "matrix.npy", np.zeros((2, 3), dtype=np.uint16))
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    cases = [
        ([tmp_path / "missing.pt", tmp_path / "t.txt"], "does not exist"),
        ([tmp_path / "corrupt.pt", tmp_path / "t.txt"], "not a complete PyTorch checkpoint"),
        ([small_checkpoint, tmp_path / "nothing.txt"], "data file"),
        ([small_checkpoint, tmp_path / "empty.txt"], "is empty"),
        ([small_checkpoint, tmp_path / "empty.npy"], "holds no tokens"),
        ([small_checkpoint, tmp_path / "big.npy"], "token id 300, outside the vocabulary of 257"),
        ([small_checkpoint], "nothing to evaluate"),
        ([small_checkpoint, tmp_path / "t.txt", "--stride", "17"], "--stride must be in 1 … 16"),
        ([small_checkpoint, tmp_path / "t.txt", "--context", "17"], "--context must be in 1 … 16"),
        ([small_checkpoint, tmp_path / "t.txt", "--batch-size", "0"], "--batch-size must be at least 1"),
        ([small_checkpoint, tmp_path / "t.txt", "--dtype", "int8"], "unknown --dtype"),
        ([small_checkpoint, tmp_path / "t.txt", "--workers", "0"], "--workers must be at least 1"),
        ([small_checkpoint, tmp_path, "--quiet"], "is a folder"),
        ([small_checkpoint, tmp_path / "matrix.npy"], "not 1-D ids"),
        ([small_checkpoint, tmp_path / "latin1.txt", "--quiet"], "not UTF-8: invalid byte 0xe9 at byte 3"),
    ]
    for args, message in cases:
        assert_input_error(runner.invoke(app, ["eval", *map(str, args)]), message)
    # One token after <|endoftext|> is scorable; a tokenizer without special tokens needs two.
    result = runner.invoke(app, ["eval", str(small_checkpoint), str(tmp_path / "one.npy"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["data"]["tokens"] == 1


def test_ids_the_tokenizer_does_not_define_are_refused(tmp_path):
    """A model vocabulary padded past the tokenizer's: those ids have no text, so no bytes to count."""
    np.save(tmp_path / "t.npy", np.array([1, 2, 3, 260], dtype=np.uint16))
    with pytest.raises(Exception, match="token id 260, which the tokenizer does not define"):
        evaluate(tiny_model(320), byte_tokenizer(), tmp_path / "t.npy")


def test_bad_question_files_name_the_line(runner, small_checkpoint, tmp_path):
    good = json.dumps({"context": "a", "choices": [" b", " c"], "label": 0})
    cases = {
        "not-json": (f"{good}\n\n{{oops\n", "line 3 is not valid JSON"),
        "label": (f"{good}\n{json.dumps({'context': 'a', 'choices': ['b', 'c'], 'label': 2})}\n", "line 2: label 2"),
        "choices": (json.dumps({"context": "a", "choices": ["b"], "label": 0}), "line 1: choices must be a list"),
        "key": (json.dumps({"context": "a", "choices": ["b", "c"], "label": 0, "lable": 1}), "unknown key 'lable'"),
        "array": ("[1, 2]\n", "line 1: expected a JSON object"),
        "empty": ("\n\n", "holds no questions"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / f"{name}.jsonl").write_text(content)
        result = runner.invoke(app, ["eval", str(small_checkpoint), "--choices", str(tmp_path / f"{name}.jsonl")])
        assert_input_error(result, message)
    too_long = json.dumps({"context": "a", "choices": ["b" * 17, "c"], "label": 0})
    (tmp_path / "long.jsonl").write_text(f"{good}\n{too_long}\n")
    result = runner.invoke(app, ["eval", str(small_checkpoint), "--choices", str(tmp_path / "long.jsonl"), "-q"])
    assert_input_error(result, "the question on line 2 has a choice of 17 tokens, more than the model's context of 16")


# --- training logs and runs -----------------------------------------------------------------------------------


def test_training_logs_val_bpb_over_the_validation_windows(tmp_path, runner):
    """With a BPE tokenizer (several bytes per token) val_bpb = val_loss x tokens / (ln 2 x their text bytes)."""
    from lmkit.training.data import validation_batches

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:30_000])
    tokenizer = Tokenizer(*train_bpe(corpus, 320, [EOT]), [EOT])
    tokenizer.save(tmp_path / "tokenizer.json")
    ids = np.array(tokenizer.encode(corpus.read_text()), dtype=np.uint16)
    np.save(tmp_path / "train.npy", ids[:8000])
    np.save(tmp_path / "val.npy", ids[8000:])
    (tmp_path / "run.toml").write_text(
        f'[data]\ntrain = "{tmp_path / "train.npy"}"\nval = "{tmp_path / "val.npy"}"\n'
        f'tokenizer = "{tmp_path / "tokenizer.json"}"\n'
        "[model]\nvocab_size = 320\ncontext_length = 16\nd_model = 16\nnum_layers = 1\nnum_heads = 2\n"
        "[train]\nbatch_size = 4\nsteps = 4\neval_every = 2\neval_batches = 3\n"
        f'device = "cpu"\nout_dir = "{tmp_path}/out"\n'
    )
    result = runner.invoke(app, ["train", "--quiet", "--config", str(tmp_path / "run.toml")])
    assert result.exit_code == 0, result.output
    evals = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [record for record in evals if record["event"] == "eval"]
    targets = torch.cat([w[:, 1:] for w in validation_batches(np.load(tmp_path / "val.npy"), 4, 16, 3)]).ravel()
    text_bytes = sum(len(tokenizer.vocab[i]) for i in targets.tolist())
    assert text_bytes > 1.5 * len(targets)
    assert [record["step"] for record in evals] == [2, 4]
    for record in evals:
        expected = record["val_loss"] * len(targets) / (math.log(2) * text_bytes)
        assert record["val_bpb"] == pytest.approx(expected, rel=1e-9)

    listed = json.loads(runner.invoke(app, ["runs", "list", str(tmp_path / "out"), "--json"]).stdout)["runs"][0]
    assert listed["best_val_bpb"] == min(record["val_bpb"] for record in evals)
    assert listed["final_val_bpb"] == evals[-1]["val_bpb"]
    table = runner.invoke(app, ["runs", "list", str(tmp_path / "out")])
    assert "best bpb" in table.stdout and f"{listed['best_val_bpb']:.4g}" in table.stdout

    from lmkit.tracking.plot import curves
    from lmkit.tracking.runs import load_runs

    [series] = curves(load_runs([tmp_path / "out"]), "val_bpb", "steps")
    assert series.x == [2, 4] and series.y == [record["val_bpb"] for record in evals]


def test_runs_compare_shows_bpb_and_tolerates_runs_without_it(tmp_path, runner):
    for name, extra in (("new", {"val_bpb": 1.5}), ("old", {})):
        folder = write_tiny_run_folder(tmp_path / name)
        lines = [{"event": "eval", "step": 4, "tokens": 64, "time_s": 1.0, "val_loss": 3.0, **extra}]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = json.loads(
        runner.invoke(app, ["runs", "compare", str(tmp_path / "new"), str(tmp_path / "old"), "--json"]).stdout
    )
    assert report["metrics"]["best_val_bpb"] == [1.5, None]
    assert report["metrics"]["final_val_bpb"] == [1.5, None]


def write_tiny_run_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.toml").write_text(
        '[data]\ntrain = "t.npy"\nval = "v.npy"\ntokenizer = "tok.json"\n'
        "[model]\nvocab_size = 256\ncontext_length = 16\nd_model = 16\nnum_layers = 1\nnum_heads = 2\n"
        f'[train]\nbatch_size = 4\nsteps = 4\nout_dir = "{folder}"\n'
    )
    return folder


def test_worker_processes_encode_a_long_text_to_the_same_result(tmp_path):
    """Two chunks (256 KB and the rest), encoded by two worker processes: the same figures as one process."""
    tokenizer = byte_tokenizer()
    (tmp_path / "t.txt").write_bytes(SHAKESPEARE.read_bytes()[:300_000])
    model = tiny_model(257, context=256)
    one = evaluate(model, tokenizer, tmp_path / "t.txt", batch_size=64)
    two = evaluate(model, tokenizer, tmp_path / "t.txt", batch_size=64, workers=2)
    assert one.tokens == two.tokens == one.bytes == 300_000
    assert two.total_nats == pytest.approx(one.total_nats, rel=1e-9)
    stopped = evaluate(model, tokenizer, tmp_path / "t.txt", max_tokens=1000, workers=2)  # workers stopped early
    assert stopped.tokens == 1000

"""Hostile and broken inputs, each answered with one line and exit 2, nothing lost, in bounded time and memory.

Checkpoints whose config claims more than their weights, corrupt embedded configs and tokenizers, token
ids beyond the vocabulary anywhere in the data, tokenizer files with absurd ids or nesting, loose config
types, symlinks and foreign files in a run folder, unwritable outputs, absurd model sizes, usage errors.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_input_error, write_tiny_run
from typer.testing import CliRunner

from lmkit.cli.app import app
from lmkit.errors import InputError
from lmkit.training import data as data_module
from lmkit.training.data import check_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run trained for 2 steps; returns its run.toml (the run folder is beside it, `out`)."""
    folder = tmp_path_factory.mktemp("run")
    config = write_tiny_run(folder, f'batch_size = 4\nsteps = 2\nout_dir = "{folder / "out"}"\ndevice = "cpu"\n')
    result = CliRunner().invoke(app, ["train", "--quiet", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return config


def _doctored(trained: Path, tmp_path: Path, change) -> Path:
    """A copy of the run's last.pt with `change(payload)` applied."""
    payload = torch.load(trained.parent / "out" / "last.pt", weights_only=True)
    change(payload)
    path = tmp_path / "doctored.pt"
    torch.save(payload, path)
    return path


def _set_model(**fields):
    def change(payload):
        payload["config"]["model"].update(fields)

    return change


# --- 1. a config that claims a bigger model than its weights --------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"d_model": 1 << 20, "num_heads": 2}, "weights do not fit this model (its config describes"),
        ({"num_layers": 100_000}, "its config says 100,000 layers, the weights hold 1"),
    ],
)
def test_a_config_claiming_more_than_the_weights_is_refused_before_building(runner, trained, tmp_path, fields, message):
    path = _doctored(trained, tmp_path, _set_model(**fields))
    assert_input_error(runner.invoke(app, ["generate", str(path), "-p", "a", "-n", "1"]), message)
    assert_input_error(runner.invoke(app, ["train", "--quiet", "--resume", str(path)]), message)


# --- 8. a checkpoint with a corrupt config or tokenizer -------------------------------------------------


def _set(key, value):
    def change(payload):
        payload[key] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("config", "garbage"), "damaged lmkit checkpoint: its config is not a set of tables"),
        (_set("config", {"model": 5}), "damaged lmkit checkpoint: its config is not a set of tables"),
        (_set("tokenizer_json", 42), "damaged lmkit checkpoint: its tokenizer is not JSON text"),
        (_set("iteration", "two"), "damaged lmkit checkpoint: its step (iteration) is not an integer"),
        (_set("model", {"w": 3}), "damaged lmkit checkpoint: its weights are not a dict of named tensors"),
    ],
)
def test_a_damaged_checkpoint_layout_is_one_line(runner, trained, tmp_path, change, message):
    path = _doctored(trained, tmp_path, change)
    assert_input_error(runner.invoke(app, ["ckpt", "info", str(path)]), message)
    assert_input_error(runner.invoke(app, ["generate", str(path), "-p", "a"]), message)
    assert_input_error(runner.invoke(app, ["train", "--quiet", "--resume", str(path)]), message)


def test_a_corrupt_stored_tokenizer_is_one_line(runner, trained, tmp_path):
    path = _doctored(trained, tmp_path, _set("tokenizer_json", '{"model": {'))
    assert_input_error(runner.invoke(app, ["ckpt", "info", str(path)]), "the stored tokenizer is not valid JSON")
    assert_input_error(runner.invoke(app, ["generate", str(path), "-p", "a"]), "tokenizer JSON is not valid JSON")


def test_a_damaged_stored_model_config_is_one_line(runner, trained, tmp_path):
    path = _doctored(trained, tmp_path, _set_model(d_model="wide"))
    assert_input_error(
        runner.invoke(app, ["generate", str(path), "-p", "a"]), "has a damaged model config (model.d_model:"
    )


# --- 4. token ids beyond the vocabulary anywhere in the data --------------------------------------------


def test_every_token_id_is_checked_not_a_sample(monkeypatch):
    monkeypatch.setattr(data_module, "_ID_CHECK_CHUNK", 1000)  # several chunks on a small array
    ids = np.zeros(10_001, dtype=np.uint16)
    ids[7_777] = 300  # an odd position in the middle of a later chunk
    with pytest.raises(InputError, match=r"token id 300, outside .* of 256 \(first at position 7,777\)"):
        check_tokens(ids, 256, 16, "train data")
    ids[7_777] = 255
    check_tokens(ids, 256, 16, "train data")  # every id fits: no error


def test_an_odd_position_id_in_a_large_array_is_caught():
    # 3M ids: a strided sample of 1M would step over position 2,000,002.
    ids = np.zeros(3_000_000, dtype=np.uint16)
    ids[2_000_002] = 999
    with pytest.raises(InputError, match="token id 999"):
        check_tokens(ids, 256, 16, "train data")


# --- 7. tokenizer files with absurd ids, duplicate ids or deep nesting ----------------------------------


def _byte_tokenizer(tmp_path: Path) -> dict:
    from lmkit.tokenizer.formats import to_hf_json

    return to_hf_json({i: bytes([i]) for i in range(256)}, [], [])


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t["model"]["vocab"].__setitem__("Ġ", 10**12), "token id 1000000000000 is outside 0..4294967295"),
        (lambda t: t["model"]["vocab"].__setitem__("Ġ", -5), "token id -5 is outside 0..4294967295"),
        (lambda t: t["model"]["vocab"].__setitem__("Ġ", 10**7), "the largest token id is 10,000,000 but there are"),
        (lambda t: t["model"]["vocab"].__setitem__("Ġ", True), "is not a byte-level token with an integer id"),
        (lambda t: t["model"]["vocab"].__setitem__("Ġ", 33), "id 33 is given to two tokens"),
        (lambda t: t.__setitem__("added_tokens", [{"id": 5, "content": "<s>"}]), "id 5 is given to two tokens"),
        (lambda t: t["model"].__setitem__("merges", 7), "model.merges is not a list"),
    ],
)
def test_tokenizer_files_with_bad_ids(runner, tmp_path, edit, message):
    tokenizer = _byte_tokenizer(tmp_path)
    edit(tokenizer)
    path = _write_json(tmp_path / "bad.json", tokenizer)
    assert_input_error(runner.invoke(app, ["tokenizer", "inspect", str(path)]), message)


def test_a_deeply_nested_tokenizer_file(runner, tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    assert_input_error(runner.invoke(app, ["tokenizer", "inspect", str(path)]), "is nested too deeply")
    assert_input_error(
        runner.invoke(app, ["tokenizer", "encode", "--text", "a", "--tokenizer", str(path)]), "is nested too deeply"
    )


def test_gpt2_vocab_files_with_bad_ids(tmp_path):
    from lmkit.tokenizer import Tokenizer
    from lmkit.tokenizer.formats import token_to_str

    vocab = {token_to_str(bytes([i])): i for i in range(256)}
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    for bad_id, message in ((10**12, "outside 0..4294967295"), ("7", "not an integer"), (65, "given to two")):
        vocab["Ġ"] = bad_id
        _write_json(tmp_path / "vocab.json", vocab)
        with pytest.raises(InputError, match=message):
            Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


# --- 9. config values: strict types, finite numbers, a misspelt required key ----------------------------


def _run_with(trained: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = trained.read_text().replace(old, new)
    assert text != trained.read_text()
    path = tmp_path / "run.toml"
    path.write_text(text.replace(str(trained.parent / "out"), str(tmp_path / "out")))
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("lr = 1e-3", "lr = inf", "optim.lr: Input should be a finite number"),
        ("lr = 1e-3", "lr = nan", "optim.lr: Input should be a finite number"),
        ("lr = 1e-3", 'lr = "1e-3"', "optim.lr: Input should be a valid number"),
        ("batch_size = 4", "batch_size = true", "train.batch_size: Input should be a valid integer"),
        ("batch_size = 4", "batch_size = 4.0", "train.batch_size: Input should be a valid integer"),
        ("d_model = 16", "d_model = true", "model.d_model: Input should be a valid integer"),
        ("d_model = 16", 'd_model = "16"', "model.d_model: Input should be a valid integer"),
        ("d_model = 16", "d_modle = 16", "unknown key model.d_modle; did you mean model.d_model?"),
        ("[optim]\n", "[optim]\nbetas = [true, 0.9]\n", "optim.betas.0: Input should be a valid number"),
        ("[train]\n", "[train]\nseed = 1180591620717411303424\n", "train.seed: Input should be less than or equal"),
        ("[train]\n", "[train]\nseed = -1\n", "train.seed: Input should be greater than or equal to 0"),
        ("d_model = 16", "d_model = 9223372036854775808", "model.d_model: Input should be less than or equal"),
        # a prime d_model: the message is immediate, however large the number (no search for a divisor)
        ("d_model = 16", "d_model = 9223372036854775783", "num_heads (2) must divide d_model (9223372036854775783)"),
    ],
)
def test_loose_or_misspelt_config_values(runner, trained, tmp_path, old, new, message):
    config = _run_with(trained, tmp_path, old, new)
    assert_input_error(runner.invoke(app, ["train", "--quiet", "--config", str(config)]), message)
    assert not (tmp_path / "out").exists()


def test_a_config_nested_beyond_the_parser_is_one_line(runner, tmp_path):
    config = tmp_path / "deep.toml"
    config.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert_input_error(runner.invoke(app, ["train", "--config", str(config)]), "is nested too deeply to read")


def test_a_corpus_record_nested_beyond_the_parser_is_one_line(runner, tmp_path):
    corpus = tmp_path / "deep.jsonl"
    corpus.write_text('{"text": "fine"}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    out = tmp_path / "t.json"
    result = runner.invoke(app, ["tokenizer", "train", str(corpus), "--vocab-size", "260", "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == f"error: {corpus} line 2 is nested too deeply to read"
    assert not (tmp_path / "t.json").exists()


def test_model_flops_reads_the_model_table_strictly(runner, trained, tmp_path):
    config = _run_with(trained, tmp_path, "d_model = 16", "d_modle = 16")
    assert_input_error(runner.invoke(app, ["model", "flops", "--config", str(config)]), "unknown key 'd_modle'")


# --- 11. usage errors are one line too -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "No such option: --bogus"),
        (["trian"], "No such command 'trian'. Did you mean 'train'?"),
        (["tokenizer", "train"], "Missing argument 'corpus'. (see lmkit tokenizer train --help)"),
        (["tokenizer", "train", "x", "--vocab-size", "abc"], "Invalid value for '--vocab-size'"),
        (["model", "flops", "--d-model"], "Option '--d-model' requires an argument."),
        (["train", "--nproc", "0"], "Invalid value for '--nproc'"),
    ],
)
def test_usage_errors_are_one_line(runner, args, message):
    assert_input_error(runner.invoke(app, args, prog_name="lmkit"), message)


# --- 5. absurd sizes are refused with the figure, before anything is built ------------------------------


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("d_model = 16", "d_model = 1048576", "this run needs about"),
        ("d_model = 16", "d_model = 9223372036854775804", "this run needs about"),
        ("d_model = 16\nnum_layers = 1", "d_model = 512\nnum_layers = 100000", "this run needs about"),
        ("batch_size = 4", "batch_size = 100000000", "this run needs about"),
        ("batch_size = 4", "batch_size = 1\neval_batches = 1000000000", "the fixed validation batches"),
    ],
)
def test_absurd_sizes_are_refused_with_the_figure(runner, trained, tmp_path, monkeypatch, old, new, message):
    import lmkit.training.loop

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the memory check")

    monkeypatch.setattr(lmkit.training.loop, "TransformerLM", no_model)
    config = _run_with(trained, tmp_path, old, new)
    assert_input_error(runner.invoke(app, ["train", "--quiet", "--config", str(config)]), message)
    assert not (tmp_path / "out").exists()


def test_a_hundred_thousand_narrow_layers_are_refused_on_a_25_gb_machine(runner, trained, tmp_path, monkeypatch):
    """What many small blocks cost beyond their weights is counted: 11.5 GB was estimated, 17.5 GB+ was used."""
    import lmkit.training.memory_check

    monkeypatch.setattr(lmkit.training.memory_check, "host_memory_bytes", lambda: 25_300_000_000)
    config = _run_with(trained, tmp_path, "num_layers = 1", "num_layers = 100000")
    result = runner.invoke(app, ["train", "--quiet", "--config", str(config)])
    assert_input_error(result, "this run needs about 32.5 GB to train")
    assert not (tmp_path / "out").exists()


def test_the_memory_estimate_splits_what_it_should():
    from lmkit.accounting import training_memory
    from lmkit.model import ModelConfig
    from lmkit.training.memory_check import training_bytes

    model = ModelConfig(vocab_size=256, context_length=16, d_model=16, num_layers=1, num_heads=2)
    fixed = training_memory(model, 16)["fixed"]
    one, three = training_bytes(model, 1), training_bytes(model, 3)
    per_row = (three - one) / 2
    assert per_row >= training_memory(model, 16)["activations_per_sequence"]  # at least the counted activations
    # FSDP shards the weights, gradients and optimizer state, not the activations
    assert three - training_bytes(model, 3, shards=2) == fixed - fixed // 2
    # under bfloat16 (or float16) autocast the activations take half the bytes; the float32 weights do not
    assert abs((three - training_bytes(model, 3, compute_dtype=torch.bfloat16)) - 1.5 * per_row) <= 1


def test_model_flops_measure_refuses_a_hundred_thousand_layers(runner):
    args = ["model", "flops", "--vocab-size", "100", "--context-length", "16", "--d-model", "16"]
    result = runner.invoke(app, [*args, "--num-heads", "2", "--num-layers", "100000", "--measure"])
    assert_input_error(result, "--measure runs the model block by block and is limited to 1,024 layers")
    assert runner.invoke(app, [*args, "--num-heads", "2", "--num-layers", "100000", "--json"]).exit_code == 0


# --- 2. symbolic links and other tools' files in a run folder -------------------------------------------


def _fresh_run(trained: Path, tmp_path: Path, out_dir: Path) -> Path:
    text = trained.read_text().replace(str(trained.parent / "out"), str(out_dir))
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_a_symlinked_metrics_file_is_refused_and_its_target_untouched(runner, trained, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to(target)
    config = _fresh_run(trained, tmp_path, out)
    assert_input_error(runner.invoke(app, ["train", "--quiet", "--config", str(config)]), "is a symbolic link")
    assert target.read_text() == "keep me\n"


def test_resuming_into_a_folder_with_a_symlinked_file_is_refused(runner, trained, tmp_path):
    out = tmp_path / "out"
    config = _fresh_run(trained, tmp_path, out)
    assert runner.invoke(app, ["train", "--quiet", "--config", str(config), "--until-step", "1"]).exit_code == 0
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (out / "config.toml").unlink()
    (out / "config.toml").symlink_to(target)
    result = runner.invoke(app, ["train", "--quiet", "--config", str(config), "--resume", str(out / "last.pt")])
    assert_input_error(result, "config.toml is a symbolic link")
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize(
    ("name", "content"), [("config.toml", "[tool]\nname = 'other'\n"), ("best.pt", "x"), ("metrics.jsonl", "{}\n")]
)
def test_another_tools_files_are_not_replaced(runner, trained, tmp_path, name, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(content)
    config = _fresh_run(trained, tmp_path, out)
    assert_input_error(runner.invoke(app, ["train", "--quiet", "--config", str(config)]), "lmkit will not replace")
    assert (out / name).read_text() == content


def test_a_start_that_never_saved_can_be_started_again(runner, trained, tmp_path):
    out = tmp_path / "out"
    config = _fresh_run(trained, tmp_path, out)
    assert runner.invoke(app, ["train", "--quiet", "--config", str(config)]).exit_code == 0
    (out / "last.pt").unlink()
    (out / "best.pt").unlink()  # as if it had stopped before its first checkpoint: config.toml, metrics.jsonl
    assert runner.invoke(app, ["train", "--quiet", "--config", str(config)]).exit_code == 0


# --- 6. unwritable outputs, found before any work -------------------------------------------------------

UNWRITABLE = Path("/proc")  # a folder no one can create files in, root included


def test_an_unwritable_run_folder_is_refused_up_front(runner, trained, tmp_path):
    config = _fresh_run(trained, tmp_path, UNWRITABLE / "lmkit-run")
    assert_input_error(runner.invoke(app, ["train", "--quiet", "--config", str(config)]), "cannot write in /proc")


def test_an_out_dir_that_is_a_file_is_refused(runner, trained, tmp_path):
    (tmp_path / "afile").write_text("x")
    config = _fresh_run(trained, tmp_path, tmp_path / "afile")
    assert_input_error(runner.invoke(app, ["train", "--quiet", "--config", str(config)]), "is a file, not a folder")
    config = _fresh_run(trained, tmp_path, tmp_path / "afile" / "run")
    assert_input_error(runner.invoke(app, ["train", "--quiet", "--config", str(config)]), "afile is a file")


def test_unwritable_tokenizer_outputs_are_refused_before_training(runner, tmp_path, monkeypatch):
    import lmkit.tokenizer.train

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the output")

    monkeypatch.setattr(lmkit.tokenizer.train, "learn_merges", no_training)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world " * 100)
    result = runner.invoke(app, ["tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", "/proc/t.json"])
    assert_input_error(result, "cannot write in /proc")
    tokenizer = tmp_path / "tokenizer.json"
    from lmkit.tokenizer.formats import save_tokenizer

    save_tokenizer(tokenizer, {i: bytes([i]) for i in range(256)}, [], [])
    result = runner.invoke(
        app, ["tokenizer", "encode", str(corpus), "--tokenizer", str(tokenizer), "--out", "/proc/x.npy"]
    )
    assert_input_error(result, "cannot write in /proc")


def test_quickstart_into_an_unwritable_folder_is_refused_up_front(runner):
    assert_input_error(runner.invoke(app, ["quickstart", "--out", str(UNWRITABLE / "qs")]), "cannot write in /proc")

"""`lmkit generate` on a checkpoint written by `lmkit train`: streaming, JSON, batches, stops, every bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_input_error
from typer.testing import CliRunner

import lmkit
from lmkit.checkpoint import checkpoint_in, save_checkpoint
from lmkit.cli.app import app
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

SHAKESPEARE = Path(lmkit.__file__).parent / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained for 40 steps on tinyshakespeare with a byte tokenizer plus <|endoftext|>."""
    folder = tmp_path_factory.mktemp("run")
    Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]).save(folder / "tokenizer.json")
    ids = np.frombuffer(SHAKESPEARE.read_bytes()[:200_000], dtype=np.uint8).astype(np.uint16)
    np.save(folder / "train.npy", ids[:180_000])
    np.save(folder / "val.npy", ids[180_000:])
    (folder / "run.toml").write_text(
        f'[data]\ntrain = "{folder / "train.npy"}"\nval = "{folder / "val.npy"}"\n'
        f'tokenizer = "{folder / "tokenizer.json"}"\n'
        "[model]\nvocab_size = 257\ncontext_length = 32\nd_model = 32\nnum_layers = 2\nnum_heads = 4\n"
        "[optim]\nlr = 0.01\nwarmup_steps = 2\n"
        "[train]\nbatch_size = 8\nsteps = 40\neval_every = 40\neval_batches = 1\n"
        f'out_dir = "{folder / "out"}"\ndevice = "cpu"\n'
    )
    result = CliRunner().invoke(app, ["train", "--quiet", "--config", str(folder / "run.toml")])
    assert result.exit_code == 0, result.output
    return folder / "out" / "last.pt"


def run(runner, *args: str):
    return runner.invoke(app, ["generate", *map(str, args)])


def run_json(runner, *args: str) -> dict:
    result = run(runner, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_output_and_a_seed_that_repeats(runner, checkpoint):
    args = (checkpoint, "--prompt", "ROMEO:", "--seed", 3, "-n", 40, "--top-k", 20)
    first, again = run_json(runner, *args), run_json(runner, *args)
    assert again["generations"] == first["generations"]
    [generation] = first["generations"]
    assert generation["prompt"] == "ROMEO:" and first["seed"] == 3 and first["device"] == "cpu"
    assert 0 < len(generation["ids"]) <= 40 and first["new_tokens"] == len(generation["ids"])
    assert first["tokens_per_s"] > 0
    if generation["stop_reason"] == "length":
        assert len(generation["ids"]) == 40
        assert generation["text"] == bytes(generation["ids"]).decode("utf-8", errors="replace")


def test_streamed_and_unstreamed_output_match_the_json(runner, checkpoint):
    args = (checkpoint, "--prompt", "KING:", "--seed", 11, "-n", 30)
    expected = run_json(runner, *args)["generations"][0]["text"]
    streamed = run(runner, *args)
    assert streamed.exit_code == 0, streamed.output
    assert streamed.stdout == f"KING:{expected}\n"
    assert "tokens/s" in streamed.stderr and "seed 11" in streamed.stderr
    assert run(runner, *args, "--no-stream").stdout == f"KING:{expected}\n"


def test_several_prompts_form_a_batch(runner, checkpoint, tmp_path):
    (tmp_path / "prompt.txt").write_text("From a file\n")
    args = ("--prompt", "First", "--prompt", "Second", "--prompt-file", tmp_path / "prompt.txt")
    report = run_json(runner, checkpoint, *args, "-t", 0, "-n", 10)
    assert [g["prompt"] for g in report["generations"]] == ["First", "Second", "From a file"]
    alone = run_json(runner, checkpoint, "--prompt", "Second", "-t", 0, "-n", 10)
    assert report["generations"][1]["ids"] == alone["generations"][0]["ids"]
    shown = run(runner, checkpoint, *args, "-t", 0, "-n", 10)
    assert shown.exit_code == 0 and "prompt 3 of 3" in shown.stdout
    for generation in report["generations"]:
        assert generation["prompt"] + generation["text"] in shown.stdout


def test_stop_strings(runner, checkpoint):
    greedy = run_json(runner, checkpoint, "--prompt", "The ", "-t", 0, "-n", 30)["generations"][0]
    stop = greedy["text"][4:6]
    stopped = run_json(runner, checkpoint, "--prompt", "The ", "-t", 0, "-n", 30, f"--stop={stop}")["generations"][0]
    assert stopped["text"] == greedy["text"][: greedy["text"].index(stop)]
    assert stopped["stop_reason"] == "stop"


# --- bad input: one line, exit 2 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", ""], "prompt 1 is empty"),
        ([], "no prompt given; pass --prompt TEXT or --prompt-file FILE"),
        (["-p", "a", "--temperature", "-0.5"], "temperature: Input should be greater than or equal to 0"),
        (["-p", "a", "--top-p", "0"], "top_p: Input should be greater than 0"),
        (["-p", "a", "--top-p", "1.01"], "top_p: Input should be less than or equal to 1"),
        (["-p", "a", "--top-k", "0"], "top_k: Input should be greater than or equal to 1"),
        (["-p", "a", "--max-new-tokens", "0"], "max_new_tokens: Input should be greater than or equal to 1"),
        (["-p", "a", "--stop", ""], "a stop string must not be empty"),
        (["--prompt-file", "/no/such/prompt.txt"], "prompt file /no/such/prompt.txt does not exist"),
        (["-p", "a", "--device", "tpu"], "unknown device 'tpu'"),
        (["-p", "a", "--dtype", "half"], "unknown --dtype 'half'; use auto, bfloat16, float16, float32"),
    ],
)
def test_bad_options(runner, checkpoint, args, message):
    assert_input_error(run(runner, checkpoint, *args), message)


def test_missing_or_invalid_checkpoint(runner, tmp_path):
    assert_input_error(run(runner, tmp_path / "nope.pt", "-p", "a"), "does not exist")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert_input_error(run(runner, tmp_path / "text.pt", "-p", "a"), "is not a complete PyTorch checkpoint")
    config = ModelConfig(vocab_size=256, context_length=8, d_model=16, num_layers=1, num_heads=2)
    save_checkpoint(TransformerLM(config), None, 0, tmp_path / "bare.pt")
    assert_input_error(run(runner, tmp_path / "bare.pt", "-p", "a"), "no model config or tokenizer")


def test_a_run_folder_means_its_best_checkpoint(runner, checkpoint, tmp_path):
    args = ("--prompt", "ROMEO:", "--seed", 3, "-n", 12)
    from_folder = run_json(runner, checkpoint.parent, *args)["generations"]
    assert from_folder == run_json(runner, checkpoint.parent / "best.pt", *args)["generations"]
    assert_input_error(
        run(runner, tmp_path, "-p", "a"), f"run folder {tmp_path} holds no checkpoint (best.pt or last.pt)"
    )


def test_a_folder_stands_for_best_pt_then_last_pt_unless_told_otherwise(tmp_path):
    (tmp_path / "last.pt").touch()
    assert checkpoint_in(tmp_path) == tmp_path / "last.pt"
    (tmp_path / "best.pt").touch()
    assert checkpoint_in(tmp_path) == tmp_path / "best.pt"
    assert checkpoint_in(tmp_path, folder_means=("last.pt",)) == tmp_path / "last.pt"
    assert checkpoint_in(tmp_path / "best.pt") == tmp_path / "best.pt"


def test_weights_that_do_not_fit_the_stored_config(runner, checkpoint, tmp_path):
    payload = torch.load(checkpoint, weights_only=True)
    payload["config"]["model"]["d_model"] = 64
    torch.save(payload, tmp_path / "mismatch.pt")
    assert_input_error(run(runner, tmp_path / "mismatch.pt", "-p", "a"), "weights do not fit this model")


def test_help_has_an_example(runner):
    result = runner.invoke(app, ["generate", "--help"])
    assert result.exit_code == 0
    assert "Generate text from a trained checkpoint" in result.stdout
    assert "lmkit generate runs/tinystories/best.pt --prompt" in " ".join(result.stdout.split())


def test_bfloat16_weights_and_kv_cache_give_the_float32_logits_closely(runner, checkpoint):
    from lmkit.generate import load_model_and_tokenizer

    exact, _ = load_model_and_tokenizer(checkpoint, "cpu")
    half, _ = load_model_and_tokenizer(checkpoint, "cpu", "bfloat16")
    assert half.lm_head.weight.dtype == torch.bfloat16 and half.new_kv_cache(1).keys.dtype == torch.bfloat16
    ids = torch.tensor([list(b"ROMEO: O, she doth teach")])
    with torch.no_grad():
        torch.testing.assert_close(half(ids).float(), exact(ids), rtol=0.05, atol=0.15)
    generation = run_json(runner, checkpoint, "-p", "ROMEO:", "-n", 8, "-t", 0, "--dtype", "bfloat16")
    assert len(generation["generations"][0]["ids"]) == 8

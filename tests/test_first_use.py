"""Details a new user meets first: GPT-2 tokenizer files everywhere, plot and compare output, progress rates,
greedy output, the size of best.pt, the inspect table, and the prompt in generated text."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_input_error, write_tiny_run
from rich.progress import Progress
from test_runs import finished_records, make_run

from lmkit.cli.app import app
from lmkit.generate import generate, load_model_and_tokenizer
from lmkit.progress import _AmountColumn
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.train import train_bpe

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = Path(__file__).parent.parent / "docs"


@pytest.fixture
def gpt2_folder(fixtures, tmp_path) -> Path:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    shutil.copy(fixtures / "gpt2_vocab.json", folder / "vocab.json")
    shutil.copy(fixtures / "gpt2_merges.txt", folder / "merges.txt")
    return folder


# --- --tokenizer: a folder or GPT-2's two files -----------------------------------------------------------


def test_every_tokenizer_option_takes_gpt2_files_as_a_folder_or_a_pair(runner, gpt2_folder):
    vocab, merges = str(gpt2_folder / "vocab.json"), str(gpt2_folder / "merges.txt")
    for given in (["--tokenizer", str(gpt2_folder)], ["--tokenizer", merges, "--tokenizer", vocab]):
        result = runner.invoke(app, ["tokenizer", "decode", "15496", "995", *given])
        assert result.exit_code == 0 and result.stdout == "Hello world\n", result.output
        result = runner.invoke(app, ["tokenizer", "encode", "--text", "Hello world<|endoftext|>", *given, "--json"])
        assert json.loads(result.stdout)["ids"] == [15496, 995, 50256]  # <|endoftext|> is GPT-2's special token
    result = runner.invoke(app, ["tokenizer", "inspect", vocab, merges, "--json"])
    assert json.loads(result.stdout)["vocab size"] == 50257
    assert_input_error(
        runner.invoke(app, ["tokenizer", "decode", "1", "--tokenizer", vocab]), "half of a GPT-2 tokenizer"
    )
    three = ["--tokenizer", vocab, "--tokenizer", merges, "--tokenizer", vocab]
    assert_input_error(runner.invoke(app, ["tokenizer", "decode", "1", *three]), "not 3 paths")


def test_a_run_config_takes_a_folder_of_gpt2_files(runner, tmp_path, gpt2_folder):
    config = write_tiny_run(tmp_path, f'steps = 1\nbatch_size = 2\nout_dir = "{tmp_path / "r"}"\n')
    text = config.read_text().replace(str(tmp_path / "tokenizer.json"), str(gpt2_folder))
    config.write_text(text.replace("vocab_size = 256", "vocab_size = 50257"))
    result = runner.invoke(app, ["train", "-q", "--config", str(config)])
    assert result.exit_code == 0, result.output
    _, tokenizer = load_model_and_tokenizer(tmp_path / "r" / "last.pt", "cpu")
    assert tokenizer.decode([15496, 995]) == "Hello world"


# --- runs plot and runs compare ----------------------------------------------------------------------------


def test_plot_without_out_draws_beside_the_runs_and_counts_in_english(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "runs" / "only", finished_records())
    (tmp_path / "curves.png").write_bytes(b"mine")
    result = runner.invoke(app, ["runs", "plot", str(run)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curves.png").read_bytes() == b"mine"  # the user's own file is left alone
    assert (run / "val_loss-steps.png").is_file()
    assert f"wrote {run / 'val_loss-steps.png'} (1 run, val_loss against steps)" in result.stderr
    again = runner.invoke(app, ["runs", "plot", str(run)])
    assert "replaced" in again.stderr and "(1 run," in again.stderr


def test_compare_labels_the_time_as_it_shows_it(runner, tmp_path):
    make_run(tmp_path / "a", finished_records())
    make_run(tmp_path / "b", finished_records(), lr=2e-3)
    result = runner.invoke(app, ["runs", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "0:00:02" in line)
    assert "time (h:mm:ss)" in row and "time_s" not in result.stdout


# --- progress rate ------------------------------------------------------------------------------------------


def test_the_progress_rate_is_the_average_not_the_last_burst():
    clock = [0.0]
    progress = Progress(_AmountColumn(), get_time=lambda: clock[0], auto_refresh=False)
    task = progress.add_task("Encoding", total=100e6, unit="MB", scale=1e6, digits=1, first=0, rate=True)
    for second in range(1, 11):  # 1 MB a second for 10 s, then the other 90 MB collected at once
        clock[0] = float(second)
        progress.advance(task, 1e6)
    clock[0] = 10.01
    progress.advance(task, 90e6)
    rendered = _AmountColumn().render(progress.tasks[0]).plain
    assert "100.0/100.0 MB" in rendered
    assert re.search(r" ([\d,.]+) MB/s", rendered)[1] == f"{100 / 10.01:,.1f}"
    # A resumed job: the rate counts what was done since it started, not the amount it started from.
    fields = {"unit": "steps", "scale": 1, "digits": 0, "first": 200, "rate": True}
    resumed = progress.add_task("Training", total=300, completed=200, **fields)
    clock[0] = 20.01
    progress.advance(resumed, 50)
    rendered = _AmountColumn().render(progress.tasks[1]).plain
    assert "250/300 steps" in rendered and re.search(r" ([\d,.]+) steps/s", rendered)[1] == f"{50 / 10:,.1f}"


# --- generate -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run folder after 4 tiny steps (best.pt and last.pt)."""
    from typer.testing import CliRunner

    folder = tmp_path_factory.mktemp("run")
    config = write_tiny_run(folder, f'steps = 4\nbatch_size = 2\neval_every = 2\nout_dir = "{folder / "r"}"\n')
    result = CliRunner().invoke(app, ["train", "-q", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return folder / "r"


def test_greedy_generation_prints_no_seed(runner, trained):
    args = ["generate", str(trained / "last.pt"), "-p", "ROMEO:", "-n", "5", "--temperature", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "greedy" in result.stderr and "seed" not in result.stderr
    assert json.loads(runner.invoke(app, [*args, "--json"]).stdout)["seed"] is None
    sampled = runner.invoke(app, ["generate", str(trained / "last.pt"), "-p", "ROMEO:", "-n", "5", "--seed", "4"])
    assert "seed 4" in sampled.stderr


def test_library_text_is_the_continuation_and_the_cli_prints_the_prompt_before_it(runner, trained):
    model, tokenizer = load_model_and_tokenizer(trained / "last.pt", "cpu")
    out = generate(model, tokenizer, "ROMEO:", max_new_tokens=8, temperature=0)
    cli = runner.invoke(app, ["generate", str(trained / "last.pt"), "-p", "ROMEO:", "-n", "8", "-t", "0"])
    assert cli.stdout == "ROMEO:" + out.text + "\n"
    assert "without the prompt" in generate.__doc__ or "continuation alone" in type(out).__doc__


# --- checkpoints ---------------------------------------------------------------------------------------------


def test_best_pt_holds_no_optimizer_state_and_is_not_resumed_from(runner, trained):
    best = torch.load(trained / "best.pt", weights_only=True)
    last = torch.load(trained / "last.pt", weights_only=True)
    assert best["optimizer"] is None and last["optimizer"] is not None
    assert (trained / "best.pt").stat().st_size < 0.6 * (trained / "last.pt").stat().st_size
    info = json.loads(runner.invoke(app, ["ckpt", "info", str(trained / "best.pt"), "--json"]).stdout)
    assert info["has_optimizer_state"] is False
    result = runner.invoke(app, ["train", "--resume", str(trained / "best.pt")])
    assert_input_error(
        result, "holds no optimizer state (best.pt keeps only the weights); resume from the run's last.pt"
    )


# --- tokenizer inspect ---------------------------------------------------------------------------------------


def test_inspect_shows_tokens_with_spaces_whole(runner, tmp_path, fixtures):
    vocab, merges = train_bpe(fixtures / "tinystories_sample.txt", 330, [])
    Tokenizer(vocab, merges).save(tmp_path / "tok.json")
    args = ["tokenizer", "inspect", str(tmp_path / "tok.json"), "--sample", str(fixtures / "tinystories_sample.txt")]
    facts = json.loads(runner.invoke(app, [*args, "--json", "--top", "8"]).stdout)
    assert any(" " in token for token in facts["longest tokens"])  # the case that broke the table
    lines = runner.invoke(app, [*args, "--top", "8"], env={"COLUMNS": "60"}).stdout.splitlines()
    for token in facts["longest tokens"]:
        assert any(f"'{token}'" in line for line in lines), token
    for token in facts["most frequent tokens"]:
        assert any(f"'{token}'" in line for line in lines), token


# --- docs -----------------------------------------------------------------------------------------------------


def test_docs_refer_only_to_sections_that_exist():
    headings = {
        re.sub(r"[`*]", "", line.lstrip("#").strip())
        for page in DOCS.glob("*.md")
        for line in page.read_text().splitlines()
        if line.startswith("#")
    }
    for page in DOCS.glob("*.md"):
        for name in re.findall(r'see "([^"]+)" (?:below|above)', page.read_text()):
            assert any(heading.startswith(name) for heading in headings), f'{page.name} refers to missing "{name}"'


def test_the_cli_starts_without_torch_until_a_command_needs_it():
    """`lmkit --help` and the tokenizer commands start in a fraction of a second: torch (seconds to import)
    is imported by the commands that run a model, not by the entry point."""
    probe = "import sys, lmkit.cli.app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"

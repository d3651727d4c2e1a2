"""Every example in the README's command table runs as written, on small data.

The table is parsed from README.md. Each example must have an entry in SMALL_DATA: the arguments appended to
make it quick (a tiny model, two steps), or an Excluded reason (e.g. a server that runs until stopped). A row
without an entry fails `test_every_readme_example_has_a_small_data_invocation`, so whoever adds a command to
the README adds its small-data invocation here. The examples then run in order, one test case each, in one
folder prepared with the files they name (corpus.txt, gpt2/, the example config's data, run.toml), each after
the ones before it (train writes the checkpoint that generate reads): in this process, through the CLI's
entry point, or as a subprocess (`python -m lmkit ...`) where the command replaces its process (`--nproc`
becomes torchrun).
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
import zstandard
from helpers import SHAKESPEARE
from typer.testing import CliRunner

from lmkit.cli.app import app
from lmkit.tokenizer.formats import save_tokenizer
from lmkit.tokenizer.train import train_bpe

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


@dataclass(frozen=True)
class Small:
    """How an example runs on small data: `extra` arguments appended; `expect` in its stdout; `writes` files;
    `own_process` for a command that replaces its process."""

    extra: tuple[str, ...] = ()
    expect: str = ""
    writes: tuple[str, ...] = ()
    own_process: bool = False


@dataclass(frozen=True)
class Excluded:
    """An example not run here, and why."""

    reason: str


TINY_MODEL = (
    "--set", "model.d_model=32", "--set", "model.num_heads=2", "--set", "model.d_ff=64",
    "--set", "model.context_length=32", "--set", "train.batch_size=2", "--set", "train.eval_batches=1",
    "--set", "optim.warmup_steps=0", "--set", "train.steps=2",
)  # fmt: skip

SMALL_DATA: dict[str, Small | Excluded] = {
    "lmkit quickstart --out runs/quickstart": Small(
        ("--steps", "2", "--vocab-size", "300", "-q", "--set", "train.eval_batches=1"),
        writes=("runs/quickstart/last.pt",),
    ),
    'lmkit tokenizer train corpus.txt --vocab-size 10000 --special-token "<|endoftext|>" --out tokenizer.json': Small(
        writes=("tokenizer.json",)
    ),
    "lmkit tokenizer encode corpus.txt --tokenizer tokenizer.json --out tokens.npy --val-fraction 0.01": Small(
        writes=("tokens.train.npy", "tokens.val.npy")
    ),
    'lmkit tokenizer train "shards/*.jsonl.zst" --vocab-size 32000 --special-token "<|endoftext|>"': Small(
        ("--out", "shards-tokenizer.json"), writes=("shards-tokenizer.json",)
    ),
    "lmkit tokenizer encode fineweb/ --format parquet --tokenizer tokenizer.json --out tokens.npy": Small(
        writes=("tokens.npy",)
    ),
    'lmkit tokenizer encode --text "Hello world" --tokenizer tokenizer.json --show': Small(expect="tokens"),
    "lmkit tokenizer inspect tokenizer.json --sample corpus.txt --top 20": Small(expect="bytes/token"),
    "lmkit tokenizer decode 15496 995 --tokenizer gpt2/": Small(expect="Hello world"),
    "lmkit model flops --preset gpt2-xl --measure": Small(expect="FLOP"),
    "lmkit train --config examples/tinystories-cpu.toml --set optim.lr=3e-4": Small(
        (*TINY_MODEL, "--until-step", "1"), writes=("runs/tinystories-cpu/last.pt",)
    ),
    "lmkit train --resume runs/tinystories-cpu/last.pt": Small(writes=("runs/tinystories-cpu/best.pt",)),
    "lmkit train --config run.toml --sweep optim.lr=1e-4,3e-4,1e-3": Small(
        writes=("runs/sweep/optim.lr=1e-3/last.pt",)
    ),
    "lmkit train --nproc 2 --config run.toml": Small(
        ("--set", "train.out_dir=runs/ddp"), writes=("runs/ddp/last.pt",), own_process=True
    ),
    "lmkit ckpt info runs/tinystories-cpu/best.pt --json": Small(expect='"step": 2'),
    'lmkit generate runs/tinystories-cpu/best.pt --prompt "Once upon a time" --temperature 0.8 --top-p 0.9 --seed 1': (
        Small(("--max-new-tokens", "5"), expect="Once upon a time")
    ),
    "lmkit eval runs/tinystories-cpu/best.pt valid.txt --stride 128": Small(("--stride", "16"), expect="bits_per_byte"),
    "lmkit eval runs/tinystories-cpu/best.pt --choices questions.jsonl": Small(expect="accuracy"),
    "lmkit export hf runs/tinystories-cpu/best.pt --out tinystories-hf": Small(writes=("tinystories-hf/config.json",)),
    "lmkit import hf ./local-llama-folder --out model.pt": Small(writes=("model.pt",)),
    "lmkit serve runs/tinystories-cpu/best.pt --port 8000": Excluded(
        "a server that runs until stopped; tests/test_serve_cli.py starts `lmkit serve` on a free port"
    ),
    "lmkit runs list runs/": Small(expect="finished"),
    "lmkit runs compare runs/sweep": Small(expect="optim.lr"),
    "lmkit runs plot runs/sweep --x time --metric val_loss --log --out curves.png": Small(writes=("curves.png",)),
}


def readme_examples() -> list[str]:
    """The `lmkit ...` example of every row of the README's Commands table, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Commands", 1)[1].split("\n## ", 1)[0]
    examples = []
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("| ---") or line.startswith("| command"):
            continue
        cells = re.split(r"(?<!\\)\|", line)
        found = re.search(r"`(lmkit [^`]*)`", cells[2])
        assert found, f"README row without an lmkit example: {line}"
        examples.append(found[1].replace("\\|", "|"))
    return examples


def test_every_readme_example_has_a_small_data_invocation():
    examples = readme_examples()
    assert len(examples) >= 16
    missing = [example for example in examples if example not in SMALL_DATA]
    assert not missing, f"add a small-data invocation (or Excluded reason) to tests/test_readme.py for: {missing}"
    stale = [example for example in SMALL_DATA if example not in examples]
    assert not stale, f"these SMALL_DATA entries are no longer in the README: {stale}"


def prepare(folder: Path) -> None:
    """The files the README's examples name, small: corpus.txt, gpt2/, shards/, fineweb/, valid.txt,
    questions.jsonl, the example config's data, run.toml."""
    # Speeches of Tiny Shakespeare as documents: --val-fraction 0.01 needs a hundred of them.
    speeches = SHAKESPEARE.read_text(encoding="utf-8")[:100_000].split("\n\n")
    (folder / "corpus.txt").write_text("<|endoftext|>".join(speeches), encoding="utf-8")
    (folder / "gpt2").mkdir()
    shutil.copy(FIXTURES / "gpt2_vocab.json", folder / "gpt2" / "vocab.json")
    shutil.copy(FIXTURES / "gpt2_merges.txt", folder / "gpt2" / "merges.txt")
    shutil.copytree(ROOT / "examples", folder / "examples")
    (folder / "valid.txt").write_text("\n\n".join(speeches[-20:]), encoding="utf-8")
    shutil.copy(FIXTURES / "choices.jsonl", folder / "questions.jsonl")
    documents = [json.dumps({"text": speech}) + "\n" for speech in speeches[:200]]
    (folder / "shards").mkdir()
    for part in range(2):
        shard = "".join(documents[part * 100 : (part + 1) * 100]).encode("utf-8")
        (folder / "shards" / f"part-{part}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(shard))
    (folder / "fineweb").mkdir()
    pyarrow.parquet.write_table(pyarrow.table({"text": speeches[200:300]}), folder / "fineweb" / "part-0.parquet")
    # `import hf` reads the folder the `export hf` example writes before it.
    (folder / "local-llama-folder").symlink_to("tinystories-hf", target_is_directory=True)
    data = folder / "data" / "tinystories"
    data.mkdir(parents=True)
    vocab, merges = train_bpe(FIXTURES / "tinystories_sample.txt", 300, ["<|endoftext|>"])
    save_tokenizer(data / "tokenizer.json", vocab, merges, ["<|endoftext|>"])
    ids = np.random.default_rng(0).integers(0, 300, 4000).astype(np.uint16)
    np.save(data / "train.npy", ids[:3000])
    np.save(data / "val.npy", ids[3000:])
    (folder / "run.toml").write_text(
        '[data]\ntrain = "data/tinystories/train.npy"\nval = "data/tinystories/val.npy"\n'
        'tokenizer = "data/tinystories/tokenizer.json"\n'
        "[model]\nvocab_size = 300\ncontext_length = 16\nd_model = 16\nnum_layers = 1\nnum_heads = 2\n"
        "[optim]\nlr = 1e-3\nmin_lr_ratio = 0.1\n"
        '[train]\nbatch_size = 2\nsteps = 2\neval_every = 1\neval_batches = 1\ndevice = "cpu"\nout_dir = "runs/sweep"\n'
    )


def run_example(args: list[str], folder: Path, own_process: bool) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `lmkit ARGS` run in `folder`."""
    if own_process:
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        done = subprocess.run(
            [sys.executable, "-m", "lmkit", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300
        )
        return done.returncode, done.stdout, done.stderr
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The folder the examples run in, one after another (each may read what an earlier one wrote)."""
    folder = tmp_path_factory.mktemp("readme")
    prepare(folder)
    return folder


def _runnable_examples() -> list[str]:
    return [example for example in readme_examples() if not isinstance(SMALL_DATA.get(example), Excluded)]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("example", _runnable_examples(), ids=lambda example: example[6:60])
def test_the_readme_example_runs_as_written_on_small_data(example, workspace, monkeypatch):
    """One case per example, in the README's order, so that one failure does not hide the others' results
    (an example that needs an earlier one's output fails too when that one did)."""
    small = SMALL_DATA.get(example)
    if small is None:
        pytest.fail(f"no small-data invocation for {example!r} (see test_every_readme_example_has_...)")
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = [*shlex.split(example)[1:], *small.extra]
    status, stdout, stderr = run_example(args, workspace, small.own_process)
    assert status == 0, f"{example}\n{stdout}\n{stderr}"
    assert small.expect in stdout, f"{example}: {small.expect!r} not in\n{stdout}"
    for written in small.writes:
        assert (workspace / written).is_file(), f"{example} did not write {written}"


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_run_the_readme_trains_and_resumes_ends_finished(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    _, listed, _ = run_example(["runs", "list", "runs/", "--json"], workspace, own_process=False)
    assert {run["name"]: run["status"] for run in json.loads(listed)["runs"]}["tinystories-cpu"] == "finished"

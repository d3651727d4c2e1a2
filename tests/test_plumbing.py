"""The shared CLI plumbing: exit statuses, error lines, atomic writes, --version."""

import subprocess
import sys

import pytest
import typer

from lmkit import __version__
from lmkit.cli.app import _LmkitGroup, app
from lmkit.errors import InputError
from lmkit.fileio import atomic_write


def _failing_app() -> typer.Typer:
    demo = typer.Typer(cls=_LmkitGroup)

    @demo.command()
    def bad_input() -> None:
        raise InputError("vocab size 10 is below 256")

    @demo.command()
    def crash() -> None:
        raise RuntimeError("disk on fire")

    return demo


def test_version_flag(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"lmkit {__version__}"


def test_python_m_lmkit_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "lmkit", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_unknown_option_exits_2(runner):
    result = runner.invoke(app, ["--no-such-option"])
    assert result.exit_code == 2
    assert "No such option" in result.stderr


def test_input_error_is_one_line_and_exit_2(runner, monkeypatch):
    monkeypatch.delenv("LMKIT_DEBUG", raising=False)
    result = runner.invoke(_failing_app(), ["bad-input"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: vocab size 10 is below 256"]
    assert "Traceback" not in result.output


def test_runtime_failure_exits_1_without_traceback(runner, monkeypatch):
    monkeypatch.delenv("LMKIT_DEBUG", raising=False)
    result = runner.invoke(_failing_app(), ["crash"])
    assert result.exit_code == 1
    assert "disk on fire" in result.stderr
    assert "Traceback" not in result.output


def test_debug_env_lets_the_exception_through(runner, monkeypatch):
    monkeypatch.setenv("LMKIT_DEBUG", "1")
    result = runner.invoke(_failing_app(), ["bad-input"])
    assert isinstance(result.exception, InputError)


def test_atomic_write_replaces_the_file_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_write(target, "w") as handle:
        handle.write("new")
        assert target.read_text() == "old"  # readers still see the old file mid-write
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with atomic_write(tmp_path / "atomic.txt", "w") as handle:
        handle.write("x")
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode


def test_long_error_stays_on_one_line(runner, monkeypatch):
    monkeypatch.delenv("LMKIT_DEBUG", raising=False)
    demo = typer.Typer(cls=_LmkitGroup)

    @demo.command()
    def long_error() -> None:
        raise InputError("word " * 60)

    @demo.command()
    def other() -> None:
        pass

    result = runner.invoke(demo, ["long-error"], terminal_width=40)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_atomic_write_failure_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"half")
        raise RuntimeError("failed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("previous")
    with pytest.raises(KeyboardInterrupt), atomic_write(target, "w") as handle:
        handle.write("partial")
        raise KeyboardInterrupt
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_into_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"), atomic_write(tmp_path / "nope" / "x.bin"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_bundled_corpus_ships_with_the_package():
    from importlib.resources import files

    text = (files("lmkit") / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    assert text.startswith("First Citizen:") and len(text) > 1_000_000


def test_closed_stdout_pipe_ends_quietly(tmp_path, fixtures):
    from lmkit.tokenizer.formats import read_gpt2_files, save_tokenizer

    vocab, merges = read_gpt2_files(fixtures / "gpt2_vocab.json", fixtures / "gpt2_merges.txt")
    save_tokenizer(tmp_path / "gpt2.json", vocab, merges, ["<|endoftext|>"])
    command = [sys.executable, "-m", "lmkit", "tokenizer", "encode", "--tokenizer", str(tmp_path / "gpt2.json")]
    command += ["--text", "many words " * 6000, "--json"]  # one plain print of ~80 KB, beyond a pipe's buffer
    reader = subprocess.Popen(["head", "-c", "10"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    writer = subprocess.run(command, stdout=reader.stdin, stderr=subprocess.PIPE, text=True)
    reader.stdin.close()
    assert reader.stdout.read().strip()
    reader.wait()
    assert writer.returncode == 0
    assert "Error" not in writer.stderr and "Traceback" not in writer.stderr

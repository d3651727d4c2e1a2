"""`lmkit train` and `lmkit ckpt info` end to end: exact resume, learning, interruption, every bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_input_error, make_loss_nan_at_call

import lmkit.training.loop
from lmkit.checkpoint import load_inference_checkpoint, read_checkpoint
from lmkit.cli.app import app
from lmkit.model import TransformerLM
from lmkit.tokenizer.formats import save_tokenizer
from lmkit.tracking.runs import read_run, run_status
from lmkit.training.config import load_config
from lmkit.training.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SHAKESPEARE = Path(lmkit.__file__).parent / "data" / "tinyshakespeare.txt"
TINY_MODEL = {"vocab_size": 256, "context_length": 32, "d_model": 32, "num_layers": 2, "num_heads": 4}


def _toml(tables: dict[str, dict]) -> str:
    lines = []
    for table, fields in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A byte-level tokenizer (id = byte value) and tinyshakespeare encoded with it, split 90/10."""
    save_tokenizer(tmp_path / "tokenizer.json", {i: bytes([i]) for i in range(256)}, [], [])
    ids = np.frombuffer(SHAKESPEARE.read_bytes(), dtype=np.uint8).astype(np.uint16)
    split = len(ids) * 9 // 10
    np.save(tmp_path / "train.npy", ids[:split])
    np.save(tmp_path / "val.npy", ids[split:])
    return tmp_path


def write_config(workdir: Path, name: str = "run.toml", **tables: dict) -> Path:
    """A run config over `workdir`'s data; `tables` (e.g. train={"steps": 5}) update the defaults here."""
    config = {
        "data": {"train": str(workdir / "train.npy"), "val": str(workdir / "val.npy"),
                 "tokenizer": str(workdir / "tokenizer.json")},
        "model": dict(TINY_MODEL),
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"batch_size": 8, "steps": 20, "eval_every": 5, "eval_batches": 2, "log_every": 1,
                  "ckpt_every": 5, "out_dir": str(workdir / "out"), "device": "cpu"},
    }  # fmt: skip
    for table, fields in tables.items():
        config.setdefault(table, {}).update(fields)
    path = workdir / name
    path.write_text(_toml(config))
    return path


def metrics(out_dir: Path, event: str = "train") -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == event]


def train(runner, *args: str):
    return runner.invoke(app, ["train", "--quiet", *args])


# --- resume, learning, interruption --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("optim", "model"), [({}, {}), ({"name": "muon", "muon_lr": 0.01, "muon_momentum": 0.9}, {"qk_norm": True})]
)
def test_resume_is_bitwise_identical_to_an_unbroken_run(runner, workdir, optim, model):
    straight = write_config(
        workdir, "straight.toml", train={"out_dir": str(workdir / "straight")}, optim=optim, model=model
    )
    assert train(runner, "--config", str(straight)).exit_code == 0

    broken = write_config(workdir, "broken.toml", train={"out_dir": str(workdir / "broken")}, optim=optim, model=model)
    first = train(runner, "--config", str(broken), "--until-step", "10")
    assert first.exit_code == 0, first.output
    assert "resume with: lmkit train --resume" in first.stderr
    assert run_status(read_run(workdir / "broken")) == "stopped"  # by --until-step, not crashed
    # A stale metrics line past the checkpoint (a crash after it) must not survive the resume.
    with (workdir / "broken" / "metrics.jsonl").open("a") as log:
        log.write(json.dumps({"event": "train", "step": 11, "loss": 99.0}) + "\n")
    # The run folder stands for its last.pt.
    second = train(runner, "--resume", str(workdir / "broken"))
    assert second.exit_code == 0, second.output

    expected, resumed = metrics(workdir / "straight"), metrics(workdir / "broken")
    assert run_status(read_run(workdir / "broken")) == "finished"
    ends = [record["status"] for record in metrics(workdir / "broken", "end")]
    assert ends == ["stopped", "finished"] and len(metrics(workdir / "broken", "start")) == 2
    assert [r["step"] for r in resumed] == list(range(1, 21))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in expected]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in expected]
    a = torch.load(workdir / "straight" / "last.pt", weights_only=True)
    b = torch.load(workdir / "broken" / "last.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 20
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    states = [list(ckpt["optimizer"]["state"].values()) for ckpt in (a, b)]
    for x, y in zip(*states, strict=True):  # AdamW's moments and steps, or Muon's momentum buffers
        assert x.keys() == y.keys() and all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x)
    val_losses = [[r["val_loss"] for r in metrics(workdir / run, "eval")] for run in ("straight", "broken")]
    assert val_losses[0] == val_losses[1] and len(val_losses[0]) == 4


@pytest.mark.parametrize("optim", [{}, {"name": "muon"}])
def test_float16_scales_the_loss_skips_an_overflowing_step_and_resumes_the_scale(workdir, optim):
    config = load_config(write_config(workdir, train={"dtype": "float16", "steps": 6, "ckpt_every": 3}, optim=optim))
    trainer = Trainer(config)
    assert trainer.scaler is not None and trainer.scaler.get_scale() == 2.0**16
    # The first backward overflows in one gradient: the step must be skipped and the scale halved.
    head = trainer.model.lm_head.weight
    hook = head.register_hook(lambda grad: torch.full_like(grad, math.inf))
    before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    loss, _, grad_norm = trainer.train_step()
    hook.remove()
    assert math.isfinite(loss) and grad_norm == math.inf
    assert all(torch.equal(before[name], value) for name, value in trainer.model.state_dict().items())
    assert trainer.scaler.get_scale() == 2.0**15
    _, _, grad_norm = trainer.train_step()  # finite gradients: unscaled before clipping, applied
    assert grad_norm < 100  # not 2**15 times the true norm
    assert not torch.equal(before["lm_head.weight"], trainer.model.lm_head.weight)
    assert not torch.equal(before["layers.0.ffn.w1.weight"], trainer.model.layers[0].ffn.w1.weight)
    assert trainer.scaler.get_scale() == 2.0**15
    (workdir / "out").mkdir()
    trainer.save("last.pt", 0.0)
    resumed = Trainer(config, read_checkpoint(workdir / "out" / "last.pt"), "last.pt")
    assert resumed.scaler.get_scale() == 2.0**15
    assert torch.load(workdir / "out" / "last.pt", weights_only=True)["scaler"]["scale"] == 2.0**15


def test_float16_learns_and_refuses_fsdp(runner, workdir, monkeypatch):
    config = write_config(workdir, train={"dtype": "float16", "steps": 20})
    assert train(runner, "--config", str(config)).exit_code == 0
    losses = [r["loss"] for r in metrics(workdir / "out")]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0] - 0.1
    torchrun_env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}
    for key, value in torchrun_env.items():
        monkeypatch.setenv(key, value)
    sharded = {"dtype": "float16", "parallel": "fsdp", "out_dir": str(workdir / "sharded")}
    fsdp = write_config(workdir, "fsdp.toml", train=sharded)
    assert_input_error(train(runner, "--config", str(fsdp)), 'float16 (train.dtype = "float16" on this device) needs')


def test_overfits_one_batch(runner, workdir):
    # Data exactly one window long: every batch is the same 33 tokens, which the model must memorise.
    np.save(workdir / "one.npy", np.random.default_rng(0).integers(0, 256, 33).astype(np.uint16))
    one = str(workdir / "one.npy")
    config = write_config(
        workdir,
        data={"train": one, "val": one},
        optim={"lr": 1e-2, "warmup_steps": 10, "weight_decay": 0.0},
        train={"steps": 150, "eval_every": 150, "batch_size": 2},
    )
    result = train(runner, "--config", str(config))
    assert result.exit_code == 0, result.output
    final = metrics(workdir / "out", "eval")[-1]["val_loss"]
    assert final < 0.01  # from ln(256) = 5.5 at the start


def test_train_writes_checkpoints_metrics_and_config(runner, workdir):
    config = write_config(workdir, train={"steps": 6, "log_every": 3, "eval_every": 3, "ckpt_every": 100})
    result = train(runner, "--config", str(config), "--set", "optim.lr=1e-3")
    assert result.exit_code == 0, result.output
    out = workdir / "out"
    assert {p.name for p in out.iterdir()} == {"last.pt", "best.pt", "metrics.jsonl", "config.toml"}
    assert [r["step"] for r in metrics(out)] == [3, 6]
    assert [r["step"] for r in metrics(out, "eval")] == [3, 6]
    record = metrics(out)[-1]
    assert record["tokens"] == 6 * 8 * 32
    assert {"time_s", "lr", "loss", "grad_norm", "tokens_per_s"} <= record.keys()
    assert "lr = 0.001" in (out / "config.toml").read_text()
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["config"]["optim"]["lr"] == 1e-3
    assert ckpt["tokenizer_json"] == (workdir / "tokenizer.json").read_text()
    assert ckpt["tokens_seen"] == 6 * 8 * 32
    best = min(r["val_loss"] for r in metrics(out, "eval"))
    assert ckpt["best_val_loss"] == best
    # The saved config trains again as it is.
    assert "[optim]" in (out / "config.toml").read_text()


def test_inference_helper_rebuilds_the_trained_model(runner, workdir):
    config = write_config(workdir, train={"steps": 2})
    assert train(runner, "--config", str(config)).exit_code == 0
    ckpt = load_inference_checkpoint(workdir / "out" / "last.pt")
    model = TransformerLM(ckpt.model_config)
    model.load_state_dict(ckpt.state_dict)
    assert ckpt.step == 2 and ckpt.model_config.d_model == 32
    assert json.loads(ckpt.tokenizer_json)["model"]["type"] == "BPE"
    saved = torch.load(workdir / "out" / "last.pt", weights_only=True)["model"]
    assert torch.equal(model.lm_head.weight, saved["lm_head.weight"])


def test_ckpt_info_reports_the_run(runner, workdir):
    config = write_config(workdir, train={"steps": 5})
    assert train(runner, "--config", str(config)).exit_code == 0
    result = runner.invoke(app, ["ckpt", "info", str(workdir / "out" / "last.pt"), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    state = torch.load(workdir / "out" / "last.pt", weights_only=True)["model"]
    assert facts["parameters"] == sum(t.numel() for t in state.values())
    assert facts["step"] == 5 and facts["tokens_seen"] == 5 * 8 * 32
    assert facts["model.d_model"] == 32 and facts["train.batch_size"] == 8
    assert facts["tokenizer.vocab_size"] == 256 and facts["has_optimizer_state"] is True
    assert facts["best_val_loss"] == min(r["val_loss"] for r in metrics(workdir / "out", "eval"))
    assert facts["lmkit_version"] == lmkit.__version__
    table = runner.invoke(app, ["ckpt", "info", str(workdir / "out" / "last.pt")])
    assert table.exit_code == 0 and "model.num_layers" in table.stdout


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(runner, workdir, monkeypatch):
    make_loss_nan_at_call(monkeypatch, 7)
    monkeypatch.delenv("LMKIT_DEBUG", raising=False)
    config = write_config(workdir, train={"eval_every": 100, "ckpt_every": 5})
    result = train(runner, "--config", str(config))
    assert result.exit_code == 1
    assert "loss is nan at step 7" in result.stderr
    assert torch.load(workdir / "out" / "last.pt", weights_only=True)["iteration"] == 5
    last = metrics(workdir / "out")[-1]
    assert last["step"] == 7 and math.isnan(last["loss"])
    assert metrics(workdir / "out", "end")[-1]["status"] == "diverged"


def test_a_nan_between_reads_is_skipped_on_the_device_and_stops_the_run_at_the_next_read(
    runner, workdir, monkeypatch
):
    make_loss_nan_at_call(monkeypatch, 7)
    monkeypatch.delenv("LMKIT_DEBUG", raising=False)
    config = write_config(workdir, train={"log_every": 4, "eval_every": 100, "ckpt_every": 10})
    result = train(runner, "--config", str(config))
    assert result.exit_code == 1 and "loss is nan at step 7" in result.stderr
    assert not (workdir / "out" / "last.pt").exists()  # the read before the first save found step 7
    logged = metrics(workdir / "out")
    assert [r["step"] for r in logged] == [4, 7] and math.isnan(logged[-1]["loss"])
    assert metrics(workdir / "out", "end")[-1]["status"] == "diverged"


@pytest.mark.parametrize("optim", [{}, {"name": "muon"}])
def test_a_non_finite_step_never_reaches_the_weights_or_the_optimizer_state(workdir, monkeypatch, optim):
    trainer = Trainer(load_config(write_config(workdir, optim=optim)))
    trainer.train_step()
    make_loss_nan_at_call(monkeypatch, 1)
    weights = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    moments = [{k: torch.as_tensor(v).clone() for k, v in s.items()} for s in trainer.optimizer.state.values()]
    loss, _, _ = trainer.train_step()  # no host read: the skip is decided on the device
    assert math.isnan(loss)
    assert all(torch.equal(weights[name], value) for name, value in trainer.model.state_dict().items())
    after = list(trainer.optimizer.state.values())
    for before, now in zip(moments, after, strict=True):
        assert all(torch.equal(value, torch.as_tensor(now[k])) for k, value in before.items() if k != "step")
    trainer.train_step()  # a finite step after it is applied, and the read still reports the skipped one
    assert not all(torch.equal(weights[name], value) for name, value in trainer.model.state_dict().items())
    with pytest.raises(lmkit.training.loop.TrainingDiverged, match="loss is nan at step 2"):
        trainer.read()


def test_a_failure_writes_a_crashed_ending(runner, workdir, monkeypatch):
    monkeypatch.delenv("LMKIT_DEBUG", raising=False)
    config = write_config(workdir, train={"eval_every": 3})
    monkeypatch.setattr(Trainer, "evaluate", lambda self: 1 / 0)
    assert train(runner, "--config", str(config)).exit_code == 1
    end = metrics(workdir / "out", "end")[-1]
    assert end["status"] == "crashed" and end["step"] == 3 and "ZeroDivisionError" in end["error"]
    assert run_status(read_run(workdir / "out")) == "crashed"


def test_ctrl_c_saves_and_exits_130_with_a_resume_hint(workdir):
    config = write_config(workdir, train={"steps": 100_000, "eval_every": 100_000, "ckpt_every": 100_000})
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmkit", "train", "--quiet", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    log = workdir / "out" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().count('"train"') >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run_status(read_run(workdir / "out")) == "running"  # its process is alive
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"resume with: lmkit train --resume {workdir / 'out' / 'last.pt'}" in stderr.replace("\n", "")
    step = torch.load(workdir / "out" / "last.pt", weights_only=True)["iteration"]
    assert step >= 2 and step == metrics(workdir / "out")[-1]["step"]
    assert metrics(workdir / "out", "end")[-1]["status"] == "interrupted"
    assert run_status(read_run(workdir / "out")) == "interrupted"  # written by the run, not guessed


# --- bad input: one line, exit 2 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"optim": {"lrr": 1e-3}}, "unknown key optim.lrr; did you mean optim.lr?"),
        ({"modle": {"d_model": 3}}, "unknown key modle; did you mean model?"),
        ({"train": {"batch_size": "eight"}}, "train.batch_size: Input should be a valid integer"),
        ({"optim": {"lr": -1e-3}}, "optim.lr: Input should be greater than 0"),
        ({"optim": {"warmup_steps": 30}}, "optim.warmup_steps (30) is longer than the run (20 steps)"),
        ({"model": {"vocab_size": 200}}, "model.vocab_size (200) is smaller than the tokenizer's vocabulary (256"),
    ],
)
def test_bad_config_values(runner, workdir, tables, message):
    assert_input_error(train(runner, "--config", str(write_config(workdir, **tables))), message)


def test_bad_override_is_checked_like_the_file(runner, workdir):
    config = str(write_config(workdir))
    assert_input_error(
        train(runner, "--config", config, "--set", "optim.lr=-1"), "optim.lr: Input should be greater than 0"
    )
    assert_input_error(train(runner, "--config", config, "--set", "train.stpes=3"), "did you mean train.steps?")
    assert_input_error(train(runner, "--config", config, "--set", "optim.lr"), "expected KEY=VALUE")


def test_config_missing_or_not_toml(runner, workdir):
    assert_input_error(train(runner, "--config", str(workdir / "nope.toml")), "config file")
    bad = workdir / "bad.toml"
    bad.write_text("[train\nsteps = 3\n")
    assert_input_error(train(runner, "--config", str(bad)), "is not valid TOML")


def test_data_missing_out_of_vocabulary_or_too_short(runner, workdir):
    missing = write_config(workdir, data={"train": str(workdir / "gone.npy")})
    assert_input_error(train(runner, "--config", str(missing)), "gone.npy does not exist")

    ids = np.zeros(5000, dtype=np.uint16)
    ids[2500] = 300
    np.save(workdir / "big_ids.npy", ids)
    config = write_config(workdir, data={"train": str(workdir / "big_ids.npy")}, model={"vocab_size": 260})
    assert_input_error(
        train(runner, "--config", str(config)), "holds token id 300, outside the model's vocabulary of 260"
    )

    np.save(workdir / "short.npy", np.arange(32, dtype=np.uint16))
    short = write_config(workdir, data={"val": str(workdir / "short.npy")})
    assert_input_error(train(runner, "--config", str(short)), "has 32 tokens, fewer than context_length + 1 = 33")


def test_fresh_run_refuses_a_folder_that_holds_a_run(runner, workdir):
    config = str(write_config(workdir, train={"steps": 2}))
    assert train(runner, "--config", config).exit_code == 0
    assert_input_error(train(runner, "--config", config), "already holds a run; resume it with --resume")


class _WritesAFile:
    """Unpickling this would create a file: the checkpoint loader must refuse before that happens."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _bad_checkpoints(workdir: Path, runner) -> dict[str, tuple[Path, str]]:
    torch.save({"weights": torch.zeros(2)}, workdir / "foreign.pt")
    torch.save({"format": "lmkit-checkpoint", "x": _WritesAFile(workdir / "pwned")}, workdir / "evil.pt")
    assert train(runner, "--config", str(write_config(workdir, train={"steps": 2}))).exit_code == 0
    whole = (workdir / "out" / "last.pt").read_bytes()
    (workdir / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (workdir / "text.pt").write_text("not a checkpoint")
    return {
        "foreign": (workdir / "foreign.pt", "is a PyTorch file but not an lmkit checkpoint"),
        "evil": (workdir / "evil.pt", "refusing to load"),
        "truncated": (workdir / "truncated.pt", "is not a complete PyTorch checkpoint"),
        "text": (workdir / "text.pt", "is not a complete PyTorch checkpoint"),
        "missing": (workdir / "missing.pt", "does not exist"),
    }


def test_bad_checkpoints_are_refused_by_ckpt_info_and_resume(runner, workdir):
    for path, message in _bad_checkpoints(workdir, runner).values():
        assert_input_error(runner.invoke(app, ["ckpt", "info", str(path)]), message)
        assert_input_error(train(runner, "--resume", str(path)), message)
    assert not (workdir / "pwned").exists()


def test_resume_with_an_incompatible_model_config(runner, workdir):
    config = write_config(workdir, train={"steps": 4})
    assert train(runner, "--config", str(config), "--until-step", "2").exit_code == 0
    last = str(workdir / "out" / "last.pt")
    assert_input_error(
        train(runner, "--config", str(config), "--resume", last, "--set", "model.d_model=64"),
        "it was trained with model.d_model = 32, the config says 64",
    )
    assert_input_error(
        train(runner, "--config", str(config), "--resume", last, "--set", 'optim.name="muon"'),
        "it was trained with optim.name = 'adamw', the config says 'muon'",
    )
    assert train(runner, "--config", str(config), "--resume", last).exit_code == 0


def test_train_needs_a_config_or_a_checkpoint(runner):
    assert_input_error(train(runner), "give --config run.toml")


def test_examples_are_valid_configs():
    from lmkit.training.config import load_config

    examples = Path(__file__).parent.parent / "examples"
    names = ("tinystories-17m", "tinystories-cpu", "owt", "tinystories-muon")
    sizes = {name: load_config(examples / f"{name}.toml") for name in names}
    assert sizes["tinystories-17m"].total_steps * sizes["tinystories-17m"].tokens_per_step == 327_680_000
    assert sizes["tinystories-cpu"].total_steps * sizes["tinystories-cpu"].tokens_per_step == 40_960_000
    assert sizes["tinystories-17m"].model.d_ff == 1344 and sizes["owt"].model.vocab_size == 32000
    muon = sizes["tinystories-muon"]
    assert muon.optim.name == "muon" and muon.model.qk_norm
    assert muon.model == sizes["tinystories-17m"].model.model_copy(update={"qk_norm": True})


@pytest.mark.slow
def test_learns_tinyshakespeare_below_the_unigram_entropy(runner, workdir):
    """150 steps of a 100K-parameter model on bytes (about 10 s on an idle core)."""
    train_ids = np.load(workdir / "train.npy")
    counts = np.bincount(train_ids, minlength=256)
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())  # 3.31 nats: the best loss without context
    config = write_config(
        workdir,
        model={"context_length": 64, "d_model": 64},
        optim={"lr": 5e-3, "warmup_steps": 20, "weight_decay": 0.0},
        train={"batch_size": 32, "steps": 150, "eval_every": 150, "eval_batches": 10, "log_every": 50},
    )
    result = train(runner, "--config", str(config))
    assert result.exit_code == 0, result.output
    val_loss = metrics(workdir / "out", "eval")[-1]["val_loss"]
    assert val_loss < unigram_entropy - 0.8, (val_loss, unigram_entropy)  # measured: 2.2 vs 3.31


def test_resume_reads_checkpoints_written_before_num_kv_heads_and_norm_eps():
    """A saved model config without the newer fields compares as their defaults; a real difference is refused."""
    from lmkit.errors import InputError
    from lmkit.training.config import validate_config
    from lmkit.training.preflight import check_same_model

    def run_config(**model) -> object:
        data = {"train": "t.npy", "val": "v.npy", "tokenizer": "tok.json"}
        raw = {"data": data, "train": {"batch_size": 1, "steps": 1}}
        return validate_config({**raw, "model": {**TINY_MODEL, **model}}, "test")

    old = {"config": {"model": {**TINY_MODEL, "d_ff": 64, "rope_theta": 10000.0, "norm": "pre"}}}
    check_same_model(run_config(), old, "old.pt")
    with pytest.raises(InputError, match="model.num_kv_heads = 4, the config says 2"):
        check_same_model(run_config(num_kv_heads=2), old, "old.pt")

"""Training on several processes: the torchrun environment, batch sharding, DDP's gradient sync, and two real
Gloo processes that must train like one process and resume each other's checkpoints."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers import assert_input_error
from test_training_run import metrics, train, write_config
from torch import nn

from lmkit.errors import InputError
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer.formats import save_tokenizer
from lmkit.training.distributed import Distributed, gradient_sync

TORCHRUN_ENV = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A byte-level tokenizer and random byte ids as train and validation data (the files write_config names)."""
    save_tokenizer(tmp_path / "tokenizer.json", {i: bytes([i]) for i in range(256)}, [], [])
    ids = np.random.default_rng(0).integers(0, 256, 20_000).astype(np.uint16)
    np.save(tmp_path / "train.npy", ids[:16_000])
    np.save(tmp_path / "val.npy", ids[16_000:])
    return tmp_path


# --- the environment, the batch split, the device -------------------------------------------------------


def test_rank_and_world_size_come_from_the_torchrun_environment():
    assert Distributed.from_env(TORCHRUN_ENV) == Distributed(rank=3, local_rank=1, world_size=4)
    alone = Distributed.from_env({})
    assert (alone.rank, alone.world_size, alone.enabled, alone.is_main) == (0, 1, False, True)
    assert not Distributed.from_env(TORCHRUN_ENV).is_main


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"RANK": "three"}, "RANK='three' is not a whole number"),
        ({"RANK": "4"}, "inconsistent torchrun environment: RANK=4, LOCAL_RANK=1, WORLD_SIZE=4"),
        ({"MASTER_PORT": None}, "WORLD_SIZE is 4 but MASTER_PORT is not set"),
    ],
)
def test_a_broken_torchrun_environment_is_refused(changes, message):
    environ = {key: value for key, value in {**TORCHRUN_ENV, **changes}.items() if value is not None}
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        Distributed.from_env(environ)


def test_each_rank_takes_its_own_contiguous_slice_of_the_global_batch():
    rows = [list(range(12))[Distributed(rank, rank, 4).row_share(12)] for rank in range(4)]
    assert rows == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert Distributed().row_share(5) == slice(0, 5)
    with pytest.raises(InputError, match="must split evenly over 4 processes"):
        Distributed(0, 0, 4).row_share(6)


def test_device_per_process():
    cpu = torch.device("cpu")
    assert Distributed(1, 1, 2).device_for(cpu) == cpu
    with pytest.raises(InputError, match="each process uses the GPU of its LOCAL_RANK"):
        Distributed(1, 1, 2).device_for(torch.device("cuda:1"))
    with pytest.raises(InputError, match="several processes need CUDA or the CPU"):
        Distributed(1, 1, 2).device_for(torch.device("mps"))


def test_gradient_accumulation_all_reduces_only_on_the_last_micro_batch():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = Distributed(0, 0, 2).wrap(nn.Linear(4, 2), torch.device("cpu"))
        reduced = []

        def count(state, bucket):  # a comm hook runs where DDP would all-reduce a bucket of gradients
            reduced.append(step)
            done = torch.futures.Future()
            done.set_result(bucket.buffer())
            return done

        model.register_comm_hook(None, count)
        for step in range(6):
            with gradient_sync(model, sync=step % 3 == 2):
                model(torch.randn(3, 4)).sum().backward()
        assert reduced == [2, 5]
    finally:
        dist.destroy_process_group()


# --- bad input ----------------------------------------------------------------------------------------


def test_nproc_refuses_a_batch_that_does_not_split(runner, workdir):
    config = write_config(workdir, train={"batch_size": 5})
    assert_input_error(train(runner, "--nproc", "2", "--config", str(config)), "must split evenly over 2 processes")
    assert not (workdir / "out").exists()


def test_nproc_refuses_a_sweep_and_a_nested_launch(runner, workdir, monkeypatch):
    config = str(write_config(workdir))
    assert_input_error(train(runner, "--nproc", "2", "--config", config, "--sweep", "optim.lr=1e-3,3e-3"), "--sweep")
    monkeypatch.setenv("RANK", "0")
    assert_input_error(train(runner, "--nproc", "2", "--config", config), "already started by torchrun")


def test_a_process_started_by_torchrun_refuses_a_batch_that_does_not_split(runner, workdir, monkeypatch):
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    config = write_config(workdir, train={"batch_size": 6})
    assert_input_error(train(runner, "--config", str(config)), "train.batch_size (6) is the global batch")


# --- two real processes ---------------------------------------------------------------------------------


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """`lmkit train --nproc 2 ARGS`: torchrun starting two Gloo processes on this machine."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "lmkit", "train", "--nproc", "2", "--quiet", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def _losses(out_dir: Path, event: str = "train", key: str = "loss") -> list[float]:
    records = metrics(out_dir, event)
    return [record[key] for record in records]


def test_two_processes_train_like_one_and_resume_each_others_checkpoints(runner, workdir):
    # grad_accum 2 exercises no_sync; one eval every 5 steps checks the sharded evaluation.
    settings = {"steps": 10, "batch_size": 4, "grad_accum": 2, "eval_every": 5, "ckpt_every": 5}

    def config(name: str) -> str:
        return str(write_config(workdir, f"{name}.toml", train={**settings, "out_dir": str(workdir / name)}))

    assert train(runner, "--config", config("one")).exit_code == 0
    # Two processes for steps 1-5, then one process resumes their checkpoint for steps 6-10.
    first = _torchrun("--config", config("two_then_one"), "--until-step", "5")
    assert first.stdout.count("tokens seen") == 1  # only rank 0 prints the summary
    ddp_checkpoint = torch.load(workdir / "two_then_one" / "last.pt", weights_only=True)
    assert ddp_checkpoint["world_size"] == 2
    model = TransformerLM(ModelConfig(**ddp_checkpoint["config"]["model"]))
    assert ddp_checkpoint["model"].keys() == model.state_dict().keys()  # no "module." prefixes
    assert train(runner, "--resume", str(workdir / "two_then_one" / "last.pt")).exit_code == 0
    # One process for steps 1-5, then two processes resume its checkpoint for steps 6-10.
    assert train(runner, "--config", config("one_then_two"), "--until-step", "5").exit_code == 0
    _torchrun("--resume", str(workdir / "one_then_two" / "last.pt"))
    assert torch.load(workdir / "one_then_two" / "last.pt", weights_only=True)["world_size"] == 2

    expected = _losses(workdir / "one")
    assert len(expected) == 10
    for run in ("two_then_one", "one_then_two"):
        # Each step logged once (rank 0 alone writes metrics), with the loss of the one-process run.
        assert [r["step"] for r in metrics(workdir / run)] == list(range(1, 11))
        assert _losses(workdir / run) == pytest.approx(expected, rel=1e-5)
        assert _losses(workdir / run, "eval", "val_loss") == pytest.approx(
            _losses(workdir / "one", "eval", "val_loss"), rel=1e-5
        )


def test_fsdp_shards_the_model_trains_like_one_process_and_resumes_across(runner, workdir):
    # Sharded over two processes (FSDP2), steps 1-5; then one process resumes; and one process's
    # checkpoint resumed sharded. Checkpoints hold whole tensors either way.
    settings = {"steps": 10, "batch_size": 4, "grad_accum": 2, "eval_every": 5, "ckpt_every": 5}

    def config(name: str, parallel: str) -> str:
        train_table = {**settings, "out_dir": str(workdir / name), "parallel": parallel}
        return str(write_config(workdir, f"{name}.toml", train=train_table))

    alone = train(runner, "--config", config("one", "ddp"))
    assert alone.exit_code == 0
    sharded_run = _torchrun("--config", config("fsdp_then_one", "fsdp"), "--until-step", "5")
    # Each process holds half of every parameter (FSDP pads a shard where a size is odd).
    whole_count = int(re.search(r"parameters per process\D+([\d,]+)", alone.stdout).group(1).replace(",", ""))
    shard_count = int(re.search(r"parameters per process\D+([\d,]+)", sharded_run.stdout).group(1).replace(",", ""))
    assert whole_count / 2 <= shard_count < 0.6 * whole_count
    sharded = torch.load(workdir / "fsdp_then_one" / "last.pt", weights_only=True)
    model = TransformerLM(ModelConfig(**sharded["config"]["model"]))
    assert {name: value.shape for name, value in sharded["model"].items()} == {
        name: value.shape for name, value in model.state_dict().items()
    }
    first_state = next(iter(sharded["optimizer"]["state"].values()))
    assert type(first_state["exp_avg"]) is torch.Tensor  # whole, not a shard
    assert train(runner, "--resume", str(workdir / "fsdp_then_one" / "last.pt")).exit_code == 0
    assert train(runner, "--config", config("one_then_fsdp", "fsdp"), "--until-step", "5").exit_code == 0
    _torchrun("--resume", str(workdir / "one_then_fsdp" / "last.pt"))

    expected = _losses(workdir / "one")
    for run in ("fsdp_then_one", "one_then_fsdp"):
        assert [r["step"] for r in metrics(workdir / run)] == list(range(1, 11))
        assert _losses(workdir / run) == pytest.approx(expected, rel=1e-5)
        assert _losses(workdir / run, "eval", "val_loss") == pytest.approx(
            _losses(workdir / "one", "eval", "val_loss"), rel=1e-5
        )


@pytest.mark.slow
def test_muon_under_ddp_and_fsdp_trains_like_one_process(runner, workdir):
    # Muon orthogonalises whole matrices: under FSDP each sharded update is gathered first. The FSDP run
    # stops at step 3 and resumes sharded, so its momentum buffers go through a checkpoint as whole tensors.
    settings = {"steps": 6, "batch_size": 4, "grad_accum": 2, "eval_every": 3, "ckpt_every": 3}
    optim = {"name": "muon", "muon_lr": 0.02}

    def config(name: str, parallel: str) -> str:
        train_table = {**settings, "out_dir": str(workdir / name), "parallel": parallel}
        return str(write_config(workdir, f"{name}.toml", train=train_table, optim=optim))

    assert train(runner, "--config", config("one", "ddp")).exit_code == 0
    _torchrun("--config", config("ddp", "ddp"))
    _torchrun("--config", config("fsdp", "fsdp"), "--until-step", "3")
    sharded = torch.load(workdir / "fsdp" / "last.pt", weights_only=True)
    buffers = [
        state["momentum_buffer"] for state in sharded["optimizer"]["state"].values() if "momentum_buffer" in state
    ]
    assert buffers and all(type(buffer) is torch.Tensor and buffer.ndim == 2 for buffer in buffers)
    _torchrun("--resume", str(workdir / "fsdp" / "last.pt"))

    expected = _losses(workdir / "one")
    assert len(expected) == 6
    for run in ("ddp", "fsdp"):
        assert [r["step"] for r in metrics(workdir / run)] == list(range(1, 7))
        assert _losses(workdir / run) == pytest.approx(expected, rel=1e-5)
        assert _losses(workdir / run, "eval", "val_loss") == pytest.approx(
            _losses(workdir / "one", "eval", "val_loss"), rel=1e-5
        )

"""MFU: the peak table, the formula, and the figure a training run logs under a mocked clock."""

import json
import types

import pytest
import torch
from helpers import write_tiny_run

import lmkit.training.loop
from lmkit.cli.app import app
from lmkit.model import ModelConfig
from lmkit.training.mfu import device_peak_tflops, mfu, table_peak_tflops, training_flops_per_token

pytestmark = pytest.mark.usefixtures("one_thread")

# write_tiny_run's model: d_model 16, d_ff 64 (SwiGLU), 1 layer, vocabulary 256, context 16.
D, F, LAYERS, VOCAB, T = 16, 64, 1, 256, 16
# Per token, forward: 2 x (Q, K, V, output: 4 d^2 + FFN: 3 d f) per layer + 2 d V for the head, plus attention
# over the whole context (QK^T and AV, 2 T d each, x 2 FLOPs per multiply-add); training is 3 forwards.
FLOPS_PER_TOKEN = 3 * (2 * LAYERS * (4 * D * D + 3 * D * F) + 2 * D * VOCAB + LAYERS * 2 * 2 * T * D)


@pytest.mark.parametrize(
    ("name", "half", "single"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0, 494.7),
        ("NVIDIA H100 PCIe", 756.0, 378.0),
        ("NVIDIA H200", 989.0, 494.7),
        ("NVIDIA H100 NVL", 835.5, 417.5),
        ("NVIDIA H200 NVL", 835.5, 417.5),
        ("NVIDIA A100-SXM4-80GB", 312.0, 156.0),
        ("NVIDIA A100-PCIE-40GB", 312.0, 156.0),
        ("NVIDIA L4", 121.0, 60.0),
        ("NVIDIA A10", 125.0, 62.5),
        ("NVIDIA GeForce RTX 4090", 165.2, 82.6),
        ("Tesla V100-SXM2-16GB", 125.0, 15.7),
        ("Tesla T4", 65.0, 8.1),
    ],
)
def test_known_gpus_have_their_data_sheet_peaks(name, half, single):
    assert table_peak_tflops(name, half_precision=True) == half
    assert table_peak_tflops(name, half_precision=False) == single


@pytest.mark.parametrize(
    "name", ["NVIDIA L40S", "NVIDIA A100X", "NVIDIA GH200 480GB", "NVIDIA GeForce RTX 3090", "AMD Instinct MI300X"]
)
def test_unknown_gpus_get_no_peak_rather_than_a_neighbours(name):
    assert table_peak_tflops(name, half_precision=True) is None


def test_a_configured_peak_wins_and_a_cpu_has_none():
    cpu = torch.device("cpu")
    assert device_peak_tflops(cpu, None) is None
    assert device_peak_tflops(cpu, torch.bfloat16) is None
    assert device_peak_tflops(cpu, None, configured=0.5) == 0.5


def test_flops_per_token_and_the_formula():
    config = ModelConfig(vocab_size=VOCAB, context_length=T, d_model=D, num_layers=LAYERS, num_heads=2)
    assert config.d_ff == F
    assert training_flops_per_token(config) == FLOPS_PER_TOKEN
    assert mfu(1000.0, 1e9, 2.0) == pytest.approx(0.5)  # 1e12 FLOP/s achieved of a 2e12 peak
    assert mfu(1000.0, 1e9, 2.0, devices=4) == pytest.approx(0.125)


def fake_clock(tick: float) -> types.SimpleNamespace:
    """A `time` module whose perf_counter advances by `tick` seconds at every call."""
    now = [0.0]

    def perf_counter() -> float:
        now[0] += tick
        return now[0]

    return types.SimpleNamespace(perf_counter=perf_counter)


def train_records(runner, tmp_path, *settings: str) -> tuple[list[dict], str]:
    config = write_tiny_run(tmp_path, f'batch_size = 4\nsteps = 4\nlog_every = 2\nout_dir = "{tmp_path}/out"\n')
    overrides = [arg for setting in ("train.device=cpu", *settings) for arg in ("--set", setting)]
    result = runner.invoke(app, ["train", "--quiet", "--config", str(config), *overrides])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"train"' in line], result.stdout


def test_the_logged_mfu_is_the_formula_on_the_measured_rate(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(lmkit.training.loop, "time", fake_clock(0.5))  # every step takes 0.5 s
    records, summary = train_records(runner, tmp_path, "train.peak_tflops=0.01")
    tokens_per_step = 4 * T
    assert [r["tokens_per_s"] for r in records] == [tokens_per_step / 0.5] * 2
    expected = (tokens_per_step / 0.5) * FLOPS_PER_TOKEN / (0.01 * 1e12)
    assert [r["mfu"] for r in records] == [pytest.approx(expected, rel=1e-12)] * 2
    assert "MFU" in summary and f"{expected:.1%}" in summary


def test_a_cpu_run_without_a_peak_logs_no_mfu(runner, tmp_path):
    records, summary = train_records(runner, tmp_path)
    assert records and all("mfu" not in record for record in records)
    assert "MFU" not in summary

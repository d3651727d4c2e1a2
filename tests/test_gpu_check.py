"""benchmarks/gpu_check.py, the script for a first GPU run: its whole path on a CPU with a tiny model, and
its refusal where no GPU is visible."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
def test_without_a_gpu_it_refuses_with_one_line():
    done = _run()
    assert done.returncode == 2
    assert done.stdout.strip().splitlines() == [
        "error: no CUDA GPU is visible; run with --device cpu --tiny to try this script's path on a CPU"
    ]


@pytest.mark.slow
def test_every_check_passes_on_a_cpu_with_a_tiny_model():
    done = _run("--device", "cpu", "--tiny", "--no-compile")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for label in ("train", "fsdp", "generate", "serve", "hf"):
        [line] = [line for line in lines if line.lstrip().startswith(f"{label}:")]
        assert "FAIL" not in line
    assert "gap 0.00e+00" in next(line for line in lines if "fsdp:" in line)  # resumed exactly on the CPU
    assert lines[-1] == "all checks passed"

"""The memory check's estimate against the peak a real training step reaches, for a wide, shallow model and a
narrow, deep one (where per-block costs dominate): within 25% either way."""

import json
import os
import subprocess
import sys

import pytest

# One training step (two, so AdamW's state exists) in a fresh process; prints its peak resident bytes above the
# resident bytes it started from. The kernel's high-water mark is reset first: a start-up peak above the resident
# set (imports' transient buffers) would otherwise hide part of the step's use.
_MEASURE = """
import json, sys, torch
from lmkit.model import ModelConfig, TransformerLM
from lmkit.training.memory_check import training_bytes
torch.set_num_threads(1)
shape, rows = json.loads(sys.argv[1]), int(sys.argv[2])
config = ModelConfig(**shape)
def status_bytes(field):
    line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")
before = status_bytes("VmRSS")
model = TransformerLM(config)
optimizer = torch.optim.AdamW(model.parameters())
ids = torch.randint(0, config.vocab_size, (rows, config.context_length + 1))
for _ in range(2):
    logits = model(ids[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
used = status_bytes("VmHWM") - before
print(json.dumps({"used": used, "estimate": training_bytes(config, rows)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "rows"),
    [
        ({"vocab_size": 10000, "context_length": 256, "d_model": 512, "num_layers": 2, "num_heads": 8}, 8),
        ({"vocab_size": 32000, "context_length": 128, "d_model": 1024, "num_layers": 1, "num_heads": 16}, 4),
        ({"vocab_size": 256, "context_length": 64, "d_model": 16, "num_layers": 2000, "num_heads": 1}, 4),
        ({"vocab_size": 1000, "context_length": 16, "d_model": 64, "num_layers": 500, "num_heads": 4}, 4),
    ],
    ids=["wide-shallow", "wide-vocab", "narrow-deep", "narrow-deep-short"],
)
def test_the_estimate_is_within_a_quarter_of_the_measured_peak(shape, rows):
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(shape), str(rows)],
        capture_output=True, text=True, env=environment, timeout=300, check=True,
    )  # fmt: skip
    figures = json.loads(done.stdout)
    assert 0.75 <= figures["estimate"] / figures["used"] <= 1.25, figures

"""lmkit.accounting and `lmkit model flops`: hand-counted shapes, the GPT-2 XL anchor, measured FLOPs."""

from __future__ import annotations

import json

import pytest
import torch

from lmkit.accounting import (
    activation_floats,
    forward_flops,
    kv_cache_bytes,
    max_batch_size,
    measure_forward_flops,
    parameter_counts,
    train_step_flops,
    training_memory,
    training_seconds,
)
from lmkit.cli.app import app
from lmkit.model import ModelConfig, TransformerLM

GPT2_XL = ModelConfig(vocab_size=50257, context_length=1024, d_model=1600, num_layers=48, num_heads=25, d_ff=6400)
TINY = ModelConfig(vocab_size=10, context_length=3, d_model=4, num_layers=1, num_heads=2, d_ff=8)
SHAPE_MHA = dict(vocab_size=50, context_length=24, d_model=32, num_layers=3, num_heads=4)


def test_gpt2_xl_anchor():
    assert parameter_counts(GPT2_XL)["total"] == pytest.approx(2.13e9, rel=0.005)
    assert forward_flops(GPT2_XL, seq_len=1024)["total"] == pytest.approx(4.5e12, rel=0.01)


def test_tiny_shape_counted_by_hand():
    assert parameter_counts(TINY) == {
        "embedding": 40,  # 10 x 4
        "attention": 64,  # 4 matrices of 4 x 4
        "ffn": 96,  # 3 matrices of 4 x 8
        "norms": 12,  # ln1, ln2, ln_final of 4
        "lm_head": 40,
        "total": 252,
    }
    flops = forward_flops(TINY, seq_len=3, batch_size=2)  # 6 tokens
    assert flops["q_proj"] == flops["output_proj"] == 2 * 6 * 4 * 4
    assert flops["q_kT"] == flops["attn_v"] == 2 * (2 * 3 * 3 * 4)  # 2 sequences, 2 heads of 2 T² d_k
    assert flops["ffn_w1"] == flops["ffn_w3"] == flops["ffn_w2"] == 2 * 6 * 4 * 8
    assert flops["lm_head"] == 2 * 6 * 4 * 10
    assert flops["total"] == 2688
    assert train_step_flops(TINY, 3, 2) == 3 * 2688


def test_ablations_change_the_counts():
    silu = ModelConfig(**{**TINY.model_dump(), "ffn": "silu", "d_ff": 16, "tie_embeddings": True, "norm": "none"})
    counts = parameter_counts(silu)
    assert (counts["ffn"], counts["lm_head"], counts["norms"], counts["total"]) == (128, 0, 0, 232)
    assert "ffn_w3" not in forward_flops(silu, 3)
    floats = activation_floats(silu, 3)
    assert floats["norms"] == floats["final_norm"] == 0
    assert floats["ffn"] == 2 * 3 * 16 + 3 * 4  # W1, SiLU; W2


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"ffn": "silu", "d_ff": None},
        {"tie_embeddings": True},
        {"norm": "none"},
        {"norm": "post"},
        {"num_kv_heads": 1},
        {"qk_norm": True},
        {"qk_norm": True, "norm": "none"},
    ],
)
def test_parameter_counts_match_the_real_model(overrides):
    config = ModelConfig(**{**TINY.model_dump(), "d_model": 8, **overrides})
    model = TransformerLM(config, device="meta")
    assert parameter_counts(config)["total"] == sum(p.numel() for p in model.parameters())


def test_grouped_query_attention_counted_by_hand():
    """TINY with one key/value head for its two query heads: K and V are 2 x 4 instead of 4 x 4."""
    gqa = ModelConfig(**{**TINY.model_dump(), "num_kv_heads": 1})
    counts = parameter_counts(gqa)
    assert counts["attention"] == 2 * 16 + 2 * 8 and counts["total"] == 252 - 16
    flops = forward_flops(gqa, seq_len=3, batch_size=2)
    assert flops["k_proj"] == flops["v_proj"] == 2 * 6 * 4 * 2 and flops["q_proj"] == 2 * 6 * 4 * 4
    assert flops["q_kT"] == forward_flops(TINY, 3, 2)["q_kT"]  # every query head still scores T x T
    assert activation_floats(gqa, 3)["qkv_proj"] == 3 * (4 + 2 * 2)


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_kv_cache_bytes_are_the_real_cache(num_kv_heads):
    config = ModelConfig(**SHAPE_MHA, num_kv_heads=num_kv_heads)
    cache = TransformerLM(config).new_kv_cache(batch_size=2)
    real = cache.keys.numel() * cache.keys.element_size() + cache.values.numel() * cache.values.element_size()
    assert kv_cache_bytes(config, seq_len=24, batch_size=2) == real
    # smaller by num_heads / num_kv_heads than plain multi-head attention
    assert kv_cache_bytes(config, 24, 2) * 4 == kv_cache_bytes(ModelConfig(**SHAPE_MHA), 24, 2) * num_kv_heads


def test_activation_memory_by_hand():
    floats = activation_floats(TINY, seq_len=3)
    # per layer: norms 2·3·4, QKV 3·3·4, QKᵀ and softmax 2·3·3 each, attn·V 3·4, out 3·4, FFN 3·3·8 + 3·4
    assert floats["total"] == 24 + 36 + 18 + 18 + 12 + 12 + (72 + 12) + 12 + 30 + 30
    memory = training_memory(TINY, seq_len=3)
    assert memory["fixed"] == 252 * 4 * 4  # parameters, gradients, two AdamW moments, float32
    assert memory["activations_per_sequence"] == floats["total"] * 4
    room = memory["fixed"] + 3 * memory["activations_per_sequence"]
    assert max_batch_size(TINY, 3, room) == 3
    assert max_batch_size(TINY, 3, room - 1) == 2
    assert max_batch_size(TINY, 3, memory["fixed"] - 1) == 0


def test_qk_norm_adds_its_gains_and_kept_queries_and_keys():
    with_qk_norm = ModelConfig(**{**TINY.model_dump(), "qk_norm": True})
    assert parameter_counts(with_qk_norm)["norms"] == 12 + 2 * 2  # 1 layer: q_norm and k_norm of head_dim 2
    # the layer keeps its T x d queries and keys for the norms' backward: 2 × 3 × 4
    assert activation_floats(with_qk_norm, 3)["norms"] == activation_floats(TINY, 3)["norms"] + 24


def test_training_seconds():
    assert training_seconds(flops_per_step=10**12, steps=100, peak_tflops=2.0, mfu=0.5) == pytest.approx(100.0)


@pytest.mark.parametrize(
    "shape, seq_len, batch",
    [
        (dict(vocab_size=1000, context_length=64, d_model=64, num_layers=2, num_heads=4), 64, 1),
        (dict(vocab_size=50257, context_length=1024, d_model=768, num_layers=12, num_heads=12), 512, 2),
        (dict(vocab_size=300, context_length=32, d_model=48, num_layers=3, num_heads=6, ffn="silu"), 32, 3),
        (dict(vocab_size=500, context_length=128, d_model=96, num_layers=1, num_heads=2, position="none"), 100, 1),
        (dict(vocab_size=500, context_length=16, d_model=32, num_layers=2, num_heads=2, tie_embeddings=True), 16, 4),
        (dict(vocab_size=500, context_length=32, d_model=64, num_layers=2, num_heads=8, num_kv_heads=2), 32, 2),
    ],
)
def test_measured_flops_agree_with_the_analytic_count(shape, seq_len, batch):
    config = ModelConfig(**shape)
    analytic = forward_flops(config, seq_len, batch)["total"]
    assert abs(measure_forward_flops(config, seq_len, batch) - analytic) <= 0.01 * analytic


# --- the command -------------------------------------------------------------------------------------


def flops_json(runner, *args: str) -> dict:
    result = runner.invoke(app, ["model", "flops", *args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_preset_json(runner):
    facts = flops_json(runner, "--preset", "gpt2-xl", "--measure")
    assert facts["parameters"]["total"] == 2_127_057_600
    assert facts["forward_flops"]["total"] == pytest.approx(4.5e12, rel=0.01)
    assert facts["forward_flops_measured"] == pytest.approx(facts["forward_flops"]["total"], rel=0.01)
    assert facts["train_step_flops"] == 3 * facts["forward_flops"]["total"]
    assert sum(facts["forward_flops_share"].values()) == pytest.approx(1.0)
    assert facts["max_batch_size"] == 2  # 34 GB of weights and AdamW state, 16.8 GB of activations each


def test_cli_explicit_shape_batch_and_time(runner):
    facts = flops_json(
        runner,
        *("--vocab-size", "10000", "--context-length", "256", "--d-model", "512"),
        *("--num-layers", "4", "--num-heads", "16", "--batch-size", "8", "--seq-len", "128"),
        *("--steps", "1000", "--peak-tflops", "100", "--mfu", "0.4", "--gpu-memory", "24"),
    )
    assert facts["model"]["d_ff"] == 1344
    assert facts["parameters"]["total"] == 22_696_448
    assert facts["forward_flops"]["lm_head"] == 2 * 8 * 128 * 512 * 10000
    memory = facts["training_memory_bytes"]
    assert memory["total"] == memory["fixed"] + 8 * memory["activations_per_sequence"]
    expected_seconds = 1000 * facts["train_step_flops"] / (100e12 * 0.4)
    assert facts["training_time"]["seconds"] == pytest.approx(expected_seconds)


def test_cli_grouped_query_attention(runner):
    shape = ("--preset", "tinystories-17m", "--batch-size", "2")
    full, grouped = flops_json(runner, *shape), flops_json(runner, *shape, "--num-kv-heads", "4")
    assert grouped["model"]["num_kv_heads"] == 4 and full["model"]["num_kv_heads"] == 16
    assert full["kv_cache_bytes"]["float32"] == 2 * 4 * 2 * 256 * 512 * 4  # K and V, layers, batch, T, d, bytes
    assert grouped["kv_cache_bytes"]["float32"] * 4 == full["kv_cache_bytes"]["float32"]
    assert grouped["kv_cache_bytes"]["bfloat16"] * 2 == grouped["kv_cache_bytes"]["float32"]
    assert full["parameters"]["attention"] - grouped["parameters"]["attention"] == 4 * 2 * 512 * (512 - 128)
    table = runner.invoke(app, ["model", "flops", *shape, "--num-kv-heads", "4"])
    assert "KV cache (generation)" in table.stdout and "2 x 256" in table.stdout and "1.049 MB" in table.stdout


def test_cli_reads_only_the_model_table_of_a_run_config(runner, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        '[data]\nanything = "goes here"\n\n[model]\nvocab_size = 10000\ncontext_length = 256\n'
        'd_model = 512\nnum_layers = 4\nnum_heads = 16\nffn = "silu"\n'
    )
    facts = flops_json(runner, "--config", str(config))
    assert facts["model"]["ffn"] == "silu" and facts["model"]["d_ff"] == 2048
    assert "ffn_w3" not in facts["forward_flops"]


def test_cli_flags_override_a_preset(runner):
    facts = flops_json(runner, "--preset", "gpt2-small", "--context-length", "2048")
    assert facts["model"]["context_length"] == facts["seq_len"] == 2048
    assert facts["model"]["d_model"] == 768


def test_cli_prints_tables(runner):
    result = runner.invoke(app, ["model", "flops", "--preset", "tinystories-17m", "--measure"])
    assert result.exit_code == 0, result.stderr
    for heading in ("Parameters", "FLOPs", "QKᵀ", "LM head", "measured (FlopCounterMode)", "largest batch"):
        assert heading in result.stdout


def test_cli_help_has_an_example(runner):
    result = runner.invoke(app, ["model", "flops", "--help"])
    assert result.exit_code == 0
    assert "Example: lmkit model flops --preset gpt2-xl" in result.stdout


BAD_CONFIG = (
    "[model]\nvocab_size = 100\ncontext_length = 16\nd_model = 32\nnum_layers = 2\nnum_heads = 4\ndropout = 0.1\n"
)
SHAPE = ("--vocab-size", "100", "--context-length", "16", "--num-layers", "2")


@pytest.mark.parametrize(
    "args, message",
    [
        ((*SHAPE, "--d-model", "30", "--num-heads", "4"), "num_heads (4) must divide d_model (30)"),
        ((*SHAPE, "--d-model", "30", "--num-heads", "10"), "RoPE needs an even head size"),
        ((*SHAPE, "--d-model", "0", "--num-heads", "4"), "d_model: Input should be greater than 0"),
        ((*SHAPE, "--d-model", "32", "--num-heads", "-4"), "num_heads: Input should be greater than 0"),
        (("--preset", "gpt2-small", "--num-layers", "0"), "num_layers: Input should be greater than 0"),
        (
            (
                "--preset",
                "gpt3",
            ),
            "unknown preset 'gpt3'; known presets: gpt2-small, gpt2-medium",
        ),
        (("--config", "{bad_config}"), "run.toml [model]: unknown key 'dropout'"),
        (("--config", "{missing}"), "does not exist"),
        (("--config", "{no_model}"), "has no [model] table"),
        (("--config", "{not_toml}"), "is not valid TOML"),
        (("--vocab-size", "100", "--d-model", "32"), "missing --context-length, --num-layers, --num-heads"),
        (("--preset", "gpt2-small", "--config", "{bad_config}"), "not both"),
        (("--preset", "gpt2-small", "--seq-len", "2048"), "sequence length must be in 1 … 1024"),
        (("--preset", "gpt2-small", "--batch-size", "0"), "batch size must be at least 1"),
        (("--preset", "gpt2-small", "--steps", "10"), "give --peak-tflops"),
        (("--preset", "gpt2-small", "--mfu", "1.5"), "MFU must be in (0, 1]"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(runner, tmp_path, args, message):
    bad_config = tmp_path / "run.toml"
    bad_config.write_text(BAD_CONFIG)
    (tmp_path / "no_model.toml").write_text("[optim]\nlr = 1e-3\n")
    (tmp_path / "not.toml").write_text("[model\n")
    paths = {
        "bad_config": str(bad_config),
        "missing": str(tmp_path / "nope.toml"),
        "no_model": str(tmp_path / "no_model.toml"),
        "not_toml": str(tmp_path / "not.toml"),
    }
    result = runner.invoke(app, ["model", "flops", *(arg.format(**paths) for arg in args)])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_measuring_uses_no_real_memory():
    # The meta device holds shapes only: GPT-2 XL at batch 64 would need hundreds of GB for real.
    before = torch.randn(1).device
    assert measure_forward_flops(GPT2_XL, seq_len=1024, batch_size=64) == 64 * forward_flops(GPT2_XL, 1024)["total"]
    assert before.type == "cpu"

"""lmkit.model against plain formulas written out here, on small random tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lmkit.errors import validation_error_message
from lmkit.model import (
    Embedding,
    Linear,
    ModelConfig,
    MultiHeadSelfAttention,
    RMSNorm,
    RotaryPositionalEmbedding,
    SwiGLU,
    TransformerBlock,
    TransformerLM,
    scaled_dot_product_attention,
    silu,
    softmax,
)
from lmkit.model.layers import fused_rms_norm, rms_norm
from lmkit.model.names import parameter_shapes, split_block_name

SMALL = dict(vocab_size=97, context_length=32, d_model=32, num_layers=2, num_heads=4)


def small_model(seed: int = 0, **overrides) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig(**{**SMALL, **overrides}))


def random_ids(batch: int, seq: int, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# --- layers by formula -------------------------------------------------------------------------------


def test_linear_is_x_times_w_transposed():
    layer = Linear(5, 3)
    x = torch.randn(2, 4, 5)
    expected = torch.zeros(2, 4, 3)
    for o in range(3):
        for i in range(5):
            expected[..., o] += x[..., i] * layer.weight[o, i]
    assert layer.weight.shape == (3, 5)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)


def test_embedding_looks_up_rows():
    layer = Embedding(10, 4)
    ids = torch.tensor([[3, 0, 9], [3, 3, 1]])
    out = layer(ids)
    for b in range(2):
        for t in range(3):
            assert torch.equal(out[b, t], layer.weight[ids[b, t]])


def test_rmsnorm_formula():
    norm = RMSNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
    x = torch.randn(3, 6)
    for row in range(3):
        rms = math.sqrt(sum(v * v for v in x[row].tolist()) / 6 + 1e-5)
        expected = torch.tensor([x[row, j].item() / rms * norm.weight[j].item() for j in range(6)])
        torch.testing.assert_close(norm(x)[row], expected, atol=1e-6, rtol=1e-5)


def test_rmsnorm_computes_in_float32_and_returns_input_dtype():
    norm = RMSNorm(64, dtype=torch.bfloat16)
    x = (torch.randn(4, 64) * 30).to(torch.bfloat16)
    out = norm(x)
    x32 = x.float()
    expected = (x32 / torch.sqrt((x32 * x32).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torchs_fused_rmsnorm_gives_the_written_out_formulas_numbers(dtype):
    weight = torch.randn(64, generator=torch.Generator().manual_seed(2)).to(dtype)
    x = (torch.randn(4, 7, 64, generator=torch.Generator().manual_seed(3)) * 30).to(dtype)
    fused, written = fused_rms_norm(x, weight, 1e-5), rms_norm(x, weight, 1e-5)
    assert fused.dtype == written.dtype == dtype
    torch.testing.assert_close(fused, written, rtol=1e-6, atol=1e-6)


def test_silu_formula():
    x = torch.linspace(-20, 20, 41)
    expected = torch.tensor([v / (1 + math.exp(-v)) for v in x.tolist()])
    torch.testing.assert_close(silu(x), expected)


def test_swiglu_formula_and_fused_equals_plain():
    torch.manual_seed(0)
    ffn = SwiGLU(8, 16)
    x = torch.randn(2, 3, 8)
    w1, w2, w3 = ffn.w1.weight, ffn.w2.weight, ffn.w3.weight
    a = x @ w1.T
    expected = ((a / (1 + torch.exp(-a))) * (x @ w3.T)) @ w2.T
    torch.testing.assert_close(ffn(x), expected)
    ffn.fused = False
    torch.testing.assert_close(ffn(x), expected)


def test_softmax_is_stable_for_large_logits():
    x = torch.tensor([[1e4, 1e4 - 1.0, 0.0], [-1e4, -1e4, -1e4]])
    out = softmax(x, dim=-1)
    e1 = math.exp(-1.0)
    expected = torch.tensor([[1 / (1 + e1), e1 / (1 + e1), 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(softmax(x.T, dim=0), expected.T)


def test_rope_is_a_rotation_of_each_pair():
    d_k, seq, theta = 8, 5, 10000.0
    rope = RotaryPositionalEmbedding(theta, d_k, max_seq_len=16)
    x = torch.randn(2, seq, d_k)
    positions = torch.tensor([0, 3, 4, 9, 15])
    for pos_arg, pos_list in ((None, list(range(seq))), (positions, positions.tolist())):
        out = rope(x, pos_arg)
        for b in range(2):
            for t, i in enumerate(pos_list):
                for k in range(d_k // 2):
                    angle = i / theta ** (2 * k / d_k)
                    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
                    expected = rot @ x[b, t, 2 * k : 2 * k + 2]
                    torch.testing.assert_close(out[b, t, 2 * k : 2 * k + 2], expected, atol=1e-5, rtol=1e-5)


def loop_attention(q, k, v, causal: bool):
    """Attention for q, k, v of shape (heads, seq, d), one query at a time, in plain Python math."""
    heads, seq, d = q.shape
    out = torch.zeros_like(v)
    for h in range(heads):
        for i in range(seq):
            visible = range(i + 1) if causal else range(seq)
            scores = [(q[h, i] @ k[h, j]).item() / math.sqrt(d) for j in visible]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            for w, j in zip(weights, visible, strict=True):
                out[h, i] += w / total * v[h, j]
    return out


def test_scaled_dot_product_attention_by_loop():
    q, k, v = torch.randn(3, 2, 5, 4).unbind(0)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), loop_attention(q, k, v, causal=False))
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask), loop_attention(q, k, v, causal=True))
    # any number of leading batch dims
    q4, k4, v4 = (t[None].expand(3, -1, -1, -1) for t in (q, k, v))
    out4 = scaled_dot_product_attention(q4, k4, v4, mask)
    torch.testing.assert_close(out4[2], loop_attention(q, k, v, causal=True))


@pytest.mark.parametrize(("use_rope", "qk_norm"), [(False, False), (True, False), (True, True)])
def test_multihead_self_attention_by_loop_over_heads(use_rope, qk_norm):
    torch.manual_seed(0)
    d_model, heads, seq = 12, 3, 6
    rope = RotaryPositionalEmbedding(10000.0, d_model // heads, 16) if use_rope else None
    attn = MultiHeadSelfAttention(d_model, heads, rope=rope, fused=False, qk_norm=qk_norm)
    x = torch.randn(seq, d_model)
    d = d_model // heads

    def split(w):  # (seq, d_model) -> (heads, seq, d)
        return (x @ w.T).view(seq, heads, d).transpose(0, 1)

    q, k, v = split(attn.q_proj.weight), split(attn.k_proj.weight), split(attn.v_proj.weight)
    if qk_norm:  # RMSNorm over each head's d dims, with gains of size d shared by the heads, before RoPE
        with torch.no_grad():
            attn.q_norm.weight.copy_(torch.linspace(0.5, 2.0, d))
            attn.k_norm.weight.copy_(torch.linspace(2.0, 0.5, d))
        q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.q_norm.weight
        k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.k_norm.weight
    if use_rope:
        q, k = rope(q), rope(k)
    heads_out = loop_attention(q.detach(), k.detach(), v.detach(), causal=True)
    expected = heads_out.transpose(0, 1).reshape(seq, d_model) @ attn.output_proj.weight.T
    torch.testing.assert_close(attn(x[None])[0], expected, atol=1e-5, rtol=1e-5)
    attn.fused = True
    torch.testing.assert_close(attn(x[None])[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_grouped_query_attention_by_loop_over_heads(fused):
    """8 query heads share 2 key/value heads: query head h uses key/value head h // 4."""
    torch.manual_seed(0)
    d_model, heads, kv_heads, seq = 32, 8, 2, 6
    d = d_model // heads
    rope = RotaryPositionalEmbedding(10000.0, d, 16)
    attn = MultiHeadSelfAttention(d_model, heads, rope=rope, fused=fused, num_kv_heads=kv_heads)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (kv_heads * d, d_model)
    x = torch.randn(seq, d_model)

    def split(w, n):  # (seq, n * d) -> (n, seq, d)
        return (x @ w.T).view(seq, n, d).transpose(0, 1)

    q = rope(split(attn.q_proj.weight, heads))
    k, v = rope(split(attn.k_proj.weight, kv_heads)), split(attn.v_proj.weight, kv_heads)
    owner = torch.arange(heads) // (heads // kv_heads)
    heads_out = loop_attention(q.detach(), k[owner].detach(), v[owner].detach(), causal=True)
    expected = heads_out.transpose(0, 1).reshape(seq, d_model) @ attn.output_proj.weight.T
    torch.testing.assert_close(attn(x[None])[0], expected, atol=1e-5, rtol=1e-5)


def test_grouped_query_kv_cache_holds_only_the_kv_heads():
    model = small_model(num_kv_heads=2)
    cache = model.new_kv_cache(batch_size=3)
    assert cache.keys.shape == cache.values.shape == (2, 3, 2, 32, 8)  # layers, batch, kv heads, len, head dim
    assert cache.keys.numel() * 2 == small_model().new_kv_cache(batch_size=3).keys.numel()


def test_num_kv_heads_defaults_to_num_heads_and_norm_eps_reaches_the_norms():
    config = ModelConfig(**SMALL)
    assert config.num_kv_heads == config.num_heads == 4 and config.norm_eps == 1e-5
    model = small_model(norm_eps=1e-6)
    assert {m.eps for m in model.modules() if isinstance(m, RMSNorm)} == {1e-6}


# --- the whole model ---------------------------------------------------------------------------------


def test_state_dict_names():
    model = small_model()
    per_layer = [
        "ln1.weight",
        "attn.q_proj.weight",
        "attn.k_proj.weight",
        "attn.v_proj.weight",
        "attn.output_proj.weight",
        "ln2.weight",
        "ffn.w1.weight",
        "ffn.w2.weight",
        "ffn.w3.weight",
    ]
    expected = {"token_embeddings.weight", "ln_final.weight", "lm_head.weight"}
    expected |= {f"layers.{i}.{name}" for i in range(2) for name in per_layer}
    assert set(model.state_dict()) == expected
    assert model.state_dict()["layers.1.ffn.w1.weight"].shape == (64, 32)  # (out, in); d_ff rounds up to 64
    with_qk_norm = small_model(qk_norm=True).state_dict()
    assert set(with_qk_norm) == expected | {f"layers.{i}.attn.{n}_norm.weight" for i in range(2) for n in "qk"}
    assert with_qk_norm["layers.0.attn.k_norm.weight"].shape == (8,)  # head_dim


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"norm": "post", "position": "none"},
        {"norm": "none", "ffn": "silu", "qk_norm": True},
        {"num_kv_heads": 2, "tie_embeddings": True},
    ],
)
def test_the_parameter_spec_lists_the_models_state_dict(switches):
    model = small_model(**switches)
    held = [(name, tuple(tensor.shape)) for name, tensor in model.state_dict().items()]
    assert list(parameter_shapes(model.config).items()) == held


def test_block_names_split_only_block_parameters():
    assert split_block_name("layers.12.attn.q_proj.weight") == (12, "attn.q_proj.weight")
    assert split_block_name("lm_head.weight") is None
    assert split_block_name("layers.x.ffn.w1.weight") is None


def test_init_statistics():
    torch.manual_seed(0)
    for weight, std in (
        (Linear(512, 1024).weight, math.sqrt(2 / 1536)),
        (Embedding(1000, 256).weight, 1.0),
    ):
        assert abs(weight.std().item() - std) < 0.05 * std
        assert weight.abs().max().item() <= 3 * std
        assert abs(weight.mean().item()) < 0.01 * std
    assert torch.equal(RMSNorm(7).weight, torch.ones(7))


def test_causal_changing_a_later_token_never_changes_earlier_logits():
    model = small_model()
    ids = random_ids(2, 12)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 97
    with torch.no_grad():
        before, after = model(ids), model(changed)
    torch.testing.assert_close(before[:, :7], after[:, :7], atol=0, rtol=0)
    assert not torch.allclose(before[:, 7:], after[:, 7:])


@pytest.mark.parametrize(
    "overrides", [{}, {"norm": "post"}, {"position": "none"}, {"ffn": "silu"}, {"num_kv_heads": 2}, {"qk_norm": True}]
)
def test_fused_equals_plain(overrides):
    fused = small_model(**overrides)
    plain = TransformerLM(fused.config, fused=False)
    plain.load_state_dict(fused.state_dict())
    ids = random_ids(3, 20)
    with torch.no_grad():
        torch.testing.assert_close(fused(ids), plain(ids), atol=1e-5, rtol=1e-5)


def test_forward_rejects_sequences_past_the_context():
    model = small_model()
    with pytest.raises(ValueError, match="at most 32"):
        model(random_ids(1, 33))


# --- ablations ---------------------------------------------------------------------------------------


def test_pre_and_post_norm_blocks_follow_their_formulas():
    for norm in ("pre", "post"):
        torch.manual_seed(0)
        block = TransformerBlock(ModelConfig(**SMALL, norm=norm))
        with torch.no_grad():
            block.ln1.weight.copy_(torch.rand(32) + 0.5)
            block.ln2.weight.copy_(torch.rand(32) + 0.5)
        x = torch.randn(2, 5, 32)
        if norm == "pre":
            z = x + block.attn(block.ln1(x))
            expected = z + block.ffn(block.ln2(z))
        else:
            z = block.ln1(x + block.attn(x))
            expected = block.ln2(z + block.ffn(z))
        torch.testing.assert_close(block(x), expected)


def test_no_norm_has_no_norm_weights_and_adds_residuals_only():
    model = small_model(norm="none")
    assert not [name for name in model.state_dict() if "ln" in name]
    block, x = model.layers[0], torch.randn(1, 4, 32)
    z = x + block.attn(x)
    torch.testing.assert_close(block(x), z + block.ffn(z))


def test_without_positions_the_last_logits_ignore_the_order_of_earlier_tokens():
    # One layer: the last position attends to a set of embeddings, so only positions can tell their order.
    ids = random_ids(1, 10)
    shuffled = torch.cat([ids[:, :9].flip(1), ids[:, 9:]], dim=1)
    no_pos, with_rope = small_model(position="none", num_layers=1), small_model(num_layers=1)
    with torch.no_grad():
        torch.testing.assert_close(no_pos(ids)[:, -1], no_pos(shuffled)[:, -1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(with_rope(ids)[:, -1], with_rope(shuffled)[:, -1], atol=1e-3)


def test_silu_ffn():
    model = small_model(ffn="silu")
    assert model.config.d_ff == 128
    ffn = model.layers[0].ffn
    assert not hasattr(ffn, "w3")
    x = torch.randn(3, 32)
    a = x @ ffn.w1.weight.T
    torch.testing.assert_close(ffn(x), (a * torch.sigmoid(a)) @ ffn.w2.weight.T)


def test_tied_embeddings_share_one_matrix():
    tied, untied = small_model(tie_embeddings=True), small_model()
    assert tied.lm_head.weight is tied.token_embeddings.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == 97 * 32
    with torch.no_grad():
        tied.lm_head.weight[5] += 1.0
    ids = torch.tensor([[5]])
    torch.testing.assert_close(tied.token_embeddings(ids)[0, 0], tied.lm_head.weight[5])


# --- KV cache ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "overrides", [{}, {"position": "none"}, {"norm": "post"}, {"num_kv_heads": 1}, {"qk_norm": True, "num_kv_heads": 1}]
)
def test_incremental_logits_equal_full_forward(fused, overrides):
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**{**SMALL, **overrides}), fused=fused)
    ids = random_ids(2, 14)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(batch_size=2)
        pieces = [model(ids[:, :5], kv_cache=cache)]  # the prompt
        pieces += [model(ids[:, t : t + 1], kv_cache=cache) for t in range(5, 10)]  # one token at a time
        pieces.append(model(ids[:, 10:14], kv_cache=cache))  # a chunk after a filled cache
    assert cache.length == 14
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_rewind_limits_and_batch():
    model = small_model()
    ids = random_ids(1, 8)
    with torch.no_grad():
        cache = model.new_kv_cache(batch_size=1, max_len=8)
        first = model(ids[:, :6], kv_cache=cache)
        cache.length = 3  # forget positions 3 onwards, then feed them again
        again = model(ids[:, 3:6], kv_cache=cache)
        torch.testing.assert_close(again, first[:, 3:6], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="at most 8"):
            model(ids[:, :3], kv_cache=cache)
        with pytest.raises(ValueError, match="batch"):
            model(random_ids(2, 1), kv_cache=model.new_kv_cache(batch_size=1))
    with pytest.raises(ValueError, match="max_len"):
        model.new_kv_cache(1, max_len=33)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("overrides", [{}, {"position": "none"}, {"num_kv_heads": 1}])
def test_rows_of_different_lengths_share_a_cache_each_as_if_alone(fused, overrides):
    """Rows fed to chosen slots with their own counts (the rest of a row is padding) and then one token each
    at their own positions: every row's logits equal its sequence's full forward pass alone."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**{**SMALL, **overrides}), fused=fused)
    a, b, following = random_ids(1, 9, seed=2), random_ids(1, 4, seed=3), random_ids(2, 1, seed=4)
    ids = torch.full((2, 9), 96)  # padding that must change nothing
    ids[0], ids[1, :4] = a[0], b[0]
    with torch.no_grad():
        cache = model.new_kv_cache(3)
        prompts = model(ids, kv_cache=cache, slots=[2, 0], counts=[9, 4])
        assert cache.lengths == [4, 0, 9]
        torch.testing.assert_close(prompts[0], model(a)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(prompts[1, :4], model(b)[0], atol=1e-5, rtol=1e-5)
        last = model(following, kv_cache=cache, slots=[0, 2], counts=[1, 1], last_only=True)
        assert cache.lengths == [5, 0, 10] and last.shape == (2, 1, 97)
        torch.testing.assert_close(last[0, 0], model(torch.cat([b, following[:1]], 1))[0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(last[1, 0], model(torch.cat([a, following[1:]], 1))[0, -1], atol=1e-5, rtol=1e-5)
        cache.move(2, 1)
        cache.lengths[1] = 9  # rewound to `a` alone: feeding the same token again gives the same logits
        again = model(following[1:], kv_cache=cache, slots=[1], last_only=True)
        torch.testing.assert_close(again[0, 0], last[1, 0], atol=1e-5, rtol=1e-5)


def test_ragged_feeds_are_checked():
    model = small_model()
    cache = model.new_kv_cache(2, max_len=8)
    with torch.no_grad(), pytest.raises(ValueError, match="distinct"):
        model(random_ids(2, 3), kv_cache=cache, slots=[1, 1])
    with torch.no_grad(), pytest.raises(ValueError, match="counts must be in 1 … 3"):
        model(random_ids(2, 3), kv_cache=cache, slots=[0, 1], counts=[3, 4])
    cache.lengths = [6, 0]
    with torch.no_grad(), pytest.raises(ValueError, match="9 positions do not fit"):
        model(random_ids(2, 3), kv_cache=cache, slots=[0, 1])
    with pytest.raises(ValueError, match="different numbers of positions"):
        _ = cache.length
    with pytest.raises(ValueError, match="pass one"):
        model(random_ids(1, 3), slots=[0])


# --- dtypes, devices, compile ------------------------------------------------------------------------


def test_bfloat16_model_runs_and_tracks_float32():
    model = small_model()
    ids = random_ids(2, 16)
    with torch.no_grad():
        ref = model(ids)
        low = model.to(torch.bfloat16)(ids)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_autocast_bfloat16_keeps_float32_weights():
    model = small_model()
    ids = random_ids(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
        logits.float().logsumexp(-1).mean().backward()
    assert logits.dtype == torch.bfloat16
    assert model.lm_head.weight.grad.dtype == torch.float32


def test_meta_device_builds_without_memory():
    model = TransformerLM(ModelConfig(**SMALL), device="meta")
    out = model(torch.zeros(2, 8, dtype=torch.long, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 8, 97)


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": True}])
def test_torch_compile_traces_one_graph(overrides):
    torch._dynamo.reset()
    model = small_model(**overrides)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    ids = random_ids(2, 16)
    torch.testing.assert_close(compiled(ids), model(ids))
    assert compiled._orig_mod is model


# --- config ------------------------------------------------------------------------------------------


def test_default_d_ff():
    assert ModelConfig(**{**SMALL, "d_model": 512, "num_heads": 16}).d_ff == 1344
    assert ModelConfig(**{**SMALL, "d_model": 768, "num_heads": 12}).d_ff == 2048
    assert ModelConfig(**{**SMALL, "ffn": "silu"}).d_ff == 128
    assert ModelConfig(**SMALL, d_ff=100).d_ff == 100


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_heads": 5}, "num_heads (5) must divide d_model (32)"),
        ({"d_model": 24, "num_heads": 8}, "RoPE needs an even head size"),
        ({"d_model": 0}, "d_model: Input should be greater than 0"),
        ({"num_layers": -1}, "num_layers: Input should be greater than 0"),
        ({"vocab_size": 0}, "vocab_size: Input should be greater than 0"),
        ({"d_ff": 0}, "d_ff: Input should be greater than 0"),
        ({"norm": "layer"}, "norm: Input should be 'pre', 'post' or 'none'"),
        ({"num_kv_heads": 3}, "num_kv_heads (3) must divide num_heads (4)"),
        ({"dropout": 0.1}, "unknown key 'dropout'"),
    ],
)
def test_config_rejects_impossible_shapes_with_one_clear_line(overrides, message):
    with pytest.raises(ValidationError) as info:
        ModelConfig(**{**SMALL, **overrides})
    text = validation_error_message(info.value)
    assert message in text
    assert "\n" not in text


def test_odd_head_size_is_fine_without_rope():
    assert ModelConfig(**{**SMALL, "d_model": 24, "num_heads": 8, "position": "none"}).head_dim == 3


@pytest.mark.parametrize("num_queries", [6, 1, 3])  # a full causal pass, one decoded token, a chunk after a cache
def test_grouped_query_attention_without_copies_equals_repeating_the_kv_heads(num_queries):
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(32, 8, num_kv_heads=2)
    q = torch.randn(2, 8, num_queries, 4)
    k, v = torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    repeated = [t.repeat_interleave(4, dim=1) for t in (k, v)]
    mask = torch.ones(num_queries, 6, dtype=torch.bool).tril(6 - num_queries)
    expected = F.scaled_dot_product_attention(q, *repeated, attn_mask=mask)
    torch.testing.assert_close(attn._attend(q, k, v), expected, rtol=1e-6, atol=1e-6)


def test_the_rope_tables_are_looked_up_once_per_forward_for_all_layers(monkeypatch):
    model = small_model()
    assert len(model.layers) > 1
    calls = []
    lookup = RotaryPositionalEmbedding.tables
    monkeypatch.setattr(
        RotaryPositionalEmbedding, "tables", lambda rope, *args: calls.append(args) or lookup(rope, *args)
    )
    cache = model.new_kv_cache(1)
    model(random_ids(1, 5), kv_cache=cache)
    model(random_ids(1, 1), kv_cache=cache)
    assert calls == [(0, 5), (5, 1)]

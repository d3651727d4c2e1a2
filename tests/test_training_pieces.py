"""The training pieces against torch's own implementations or formulas written out here."""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmkit.model import ModelConfig, TransformerLM
from lmkit.training import (
    AdamW,
    clip_grad_norm,
    cross_entropy,
    get_batch,
    get_lr_cosine_schedule,
    load_checkpoint,
    save_checkpoint,
)
from lmkit.training.data import validation_batches
from lmkit.training.optim import param_groups
from lmkit.training.state import cuda_state_for, restore_rng, rng_state


def _tiny_model(**overrides) -> TransformerLM:
    shape = dict(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4) | overrides
    return TransformerLM(ModelConfig(**shape))


# --- cross_entropy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_cross_entropy_matches_torch_value_and_gradient(scale):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 40, generator=gen) * scale).requires_grad_()
    targets = torch.randint(0, 40, (3, 5), generator=gen)
    ours = cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(ours, logits)
    reference = F.cross_entropy(logits.view(-1, 40), targets.view(-1))
    (ref_grad,) = torch.autograd.grad(reference, logits)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-4 * scale)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


def _loss_and_grad(logits, targets):
    logits = logits.detach().requires_grad_()
    loss = cross_entropy(logits, targets)
    return loss, torch.autograd.grad(loss, logits)[0]


def test_cross_entropy_in_chunks_of_rows_is_bitwise_the_whole(monkeypatch):
    import lmkit.training.loss

    gen = torch.Generator().manual_seed(4)
    logits, targets = torch.randn(3, 5, 40, generator=gen) * 5, torch.randint(0, 40, (3, 5), generator=gen)
    whole = _loss_and_grad(logits, targets)
    monkeypatch.setattr(lmkit.training.loss, "CHUNK_NUMBERS", 2 * 40 + 7)  # chunks of 2 rows, the last of 1
    chunked = _loss_and_grad(logits, targets)
    assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])


def test_cross_entropy_of_bfloat16_logits_computes_in_float32_and_returns_a_bfloat16_gradient():
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(2, 6, 40, generator=gen) * 5).to(torch.bfloat16)
    targets = torch.randint(0, 40, (2, 6), generator=gen)
    loss, grad = _loss_and_grad(logits, targets)
    exact_loss, exact_grad = _loss_and_grad(logits.float(), targets)
    assert loss.dtype == torch.float32 and torch.equal(loss, exact_loss)
    assert grad.dtype == torch.bfloat16 and torch.equal(grad, exact_grad.to(torch.bfloat16))


def test_cross_entropy_of_huge_logits_is_exact_where_softmax_saturates():
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]])
    loss = cross_entropy(logits, torch.tensor([1, 2]))
    # Row 1: target 1e4 below the max, loss 1e4; row 2: two equal maxima, loss log 2.
    assert loss.item() == pytest.approx((1e4 + math.log(2)) / 2, rel=1e-6)


# --- AdamW ---------------------------------------------------------------------------------------------


def _regression_problem() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    inputs, outputs = torch.randn(64, 10, generator=gen), torch.randn(64, 3, generator=gen)
    start = {"weight": torch.randn(3, 10, generator=gen), "bias": torch.randn(3, generator=gen)}
    return inputs, outputs, start


def _train(optimizer_class, steps: int, **kwargs) -> list[torch.Tensor]:
    inputs, outputs, start = _regression_problem()
    params = [torch.nn.Parameter(start["weight"].clone()), torch.nn.Parameter(start["bias"].clone())]
    optimizer = optimizer_class(params, **kwargs)
    for _ in range(steps):
        loss = ((inputs @ params[0].T + params[1] - outputs) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("foreach", [True, False])
def test_adamw_agrees_with_torch_after_1000_steps(foreach):
    settings = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ours = _train(AdamW, 1000, foreach=foreach, **settings)
    reference = _train(torch.optim.AdamW, 1000, **settings)
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-4)
    assert not torch.equal(ours[0], _regression_problem()[2]["weight"])


def test_adamw_follows_the_design_formula_step_by_step():
    """Three steps of AdamW written out by hand (decay applied after the Adam update)."""
    lr, (b1, b2), eps, decay = 0.1, (0.8, 0.9), 1e-3, 0.5
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = AdamW([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=decay)
    theta, m, v = [1.0, -2.0], [0.0, 0.0], [0.0, 0.0]
    for t, grads in enumerate(([0.5, -1.0], [0.25, 2.0], [-1.0, 0.0]), start=1):
        param.grad = torch.tensor(grads)
        optimizer.step()
        alpha_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            theta[i] -= alpha_t * m[i] / (math.sqrt(v[i]) + eps)
            theta[i] -= lr * decay * theta[i]
        assert param.tolist() == pytest.approx(theta, rel=1e-6)


def test_adamw_rejects_bad_hyperparameters():
    param = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="betas"):
        AdamW(param, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        AdamW(param, lr=-1.0)


def test_param_groups_skip_norm_gains_and_embeddings_unless_asked():
    model = _tiny_model()
    decayed, undecayed = (g["params"] for g in param_groups(model, 0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in undecayed} == {
        "token_embeddings.weight",
        "ln_final.weight",
        *(f"layers.{i}.{ln}.weight" for i in range(2) for ln in ("ln1", "ln2")),
    }
    assert "lm_head.weight" in {names[id(p)] for p in decayed}
    assert len(decayed) + len(undecayed) == len(list(model.parameters()))
    decayed, _ = (g["params"] for g in param_groups(model, 0.1, decay_embeddings=True))
    assert "token_embeddings.weight" in {names[id(p)] for p in decayed}


def test_param_groups_count_a_tied_matrix_once():
    model = _tiny_model(tie_embeddings=True)
    groups = param_groups(model, 0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# --- gradient clipping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_norm", [0.05, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    ours = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, q, g in zip(ours, theirs, grads, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    norm = clip_grad_norm(ours, max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(norm, ref_norm)
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    expected = math.sqrt(sum(float((g**2).sum()) for g in grads))
    assert norm.item() == pytest.approx(expected, rel=1e-6)
    clipped = math.sqrt(sum(float((p.grad**2).sum()) for p in ours))
    assert clipped == pytest.approx(min(expected, max_norm), rel=1e-4)


# --- schedule ------------------------------------------------------------------------------------------


def test_cosine_schedule_at_and_around_its_boundaries():
    def lr(t: int) -> float:
        return get_lr_cosine_schedule(
            t, max_learning_rate=1.0, min_learning_rate=0.1, warmup_iters=10, cosine_cycle_iters=110
        )

    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.5)
    assert lr(9) == pytest.approx(0.9)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)  # halfway through the decay: min + (max - min) / 2
    assert lr(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr(110) == pytest.approx(0.1)
    assert lr(111) == 0.1
    assert lr(10_000) == 0.1


# --- batches -------------------------------------------------------------------------------------------


def test_get_batch_shapes_shift_and_cover_every_start(tmp_path):
    np.save(tmp_path / "tokens.npy", np.arange(100, dtype=np.uint16))
    tokens = np.load(tmp_path / "tokens.npy", mmap_mode="r")
    gen = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(100):
        inputs, targets = get_batch(tokens, 32, 10, "cpu", gen)
        assert inputs.shape == targets.shape == (32, 10)
        assert inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(targets, inputs + 1)
        assert torch.equal(inputs, inputs[:, :1] + torch.arange(10))
        starts.update(inputs[:, 0].tolist())
    assert starts == set(range(90))  # every valid start 0 .. len - T - 1, and never past the end


def test_get_batch_is_reproducible_from_its_generator():
    tokens = np.arange(1000, dtype=np.uint32)
    first = get_batch(tokens, 4, 8, "cpu", torch.Generator().manual_seed(5))
    again = get_batch(tokens, 4, 8, "cpu", torch.Generator().manual_seed(5))
    assert torch.equal(first[0], again[0])


def test_validation_batches_are_fixed_and_span_the_data():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = validation_batches(tokens, 4, 9, 3)
    assert [b.shape for b in batches] == [(4, 10)] * 3
    firsts = torch.cat(batches)[:, 0].tolist()
    assert firsts[0] == 0 and firsts[-1] == 1000 - 10
    assert all(torch.equal(a, b) for a, b in zip(batches, validation_batches(tokens, 4, 9, 3), strict=True))


# --- checkpoints ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("to_file_object", [False, True])
def test_save_and_load_checkpoint_round_trip(tmp_path, to_file_object):
    torch.manual_seed(0)
    model = _tiny_model()
    optimizer = AdamW(model.parameters(), lr=1e-2)
    model(torch.randint(0, 50, (2, 8))).sum().backward()
    optimizer.step()
    target = io.BytesIO() if to_file_object else tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 7, target)
    if to_file_object:
        target.seek(0)
    torch.manual_seed(1)
    restored = _tiny_model()
    restored_optimizer = AdamW(restored.parameters(), lr=1e-2)
    assert load_checkpoint(target, restored, restored_optimizer) == 7
    for (name, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    state, restored_state = optimizer.state_dict()["state"], restored_optimizer.state_dict()["state"]
    assert state.keys() == restored_state.keys()
    assert all(torch.equal(state[k]["exp_avg_sq"], restored_state[k]["exp_avg_sq"]) for k in state)


def test_checkpoint_of_a_compiled_model_has_plain_names(tmp_path):
    model = _tiny_model()
    compiled = torch.compile(model)
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    save_checkpoint(compiled, None, 3, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)["model"]
    assert set(saved) == set(model.state_dict())
    assert load_checkpoint(tmp_path / "c.pt", torch.compile(_tiny_model())) == 3


# --- a step skipped on the device ----------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
def test_adamw_keep_zero_changes_nothing_and_keep_one_is_the_plain_step(foreach):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    gated, plain = AdamW(params, lr=0.1, foreach=foreach), AdamW(twins, lr=0.1, foreach=foreach)
    for _ in range(3):
        for a, b in zip(params, twins, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        gated.step(keep=torch.tensor(1.0))
        plain.step()
        for a, b in zip(params, twins, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    before = [p.detach().clone() for p in params]
    moments = [gated.state[p]["exp_avg"].clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)  # what the loop leaves of a skipped step's gradients
    gated.step(keep=torch.tensor(0.0))
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert all(torch.equal(gated.state[p]["exp_avg"], m) for p, m in zip(params, moments, strict=True))


# --- RNG state in checkpoints -------------------------------------------------------------------------


def test_rng_state_saves_only_the_current_cuda_device(monkeypatch):
    mine = torch.arange(4, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": mine)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every device's state was taken"))
    state = rng_state(torch.Generator().get_state())
    assert state["cuda"] is mine


def test_cuda_state_is_chosen_for_the_current_device_from_old_and_new_checkpoints():
    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(3)]
    assert cuda_state_for(states, 1) is states[1]  # an older checkpoint: every device's state
    assert cuda_state_for(states[:1], 2) is states[0]  # written on fewer GPUs than this process's index
    assert cuda_state_for([], 0) is None  # an older checkpoint written without CUDA
    assert cuda_state_for(None, 0) is None
    assert cuda_state_for(states[2], 0) is states[2]  # this lmkit: the writer's own device


def test_restore_rng_takes_the_current_devices_entry_of_an_old_list(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("set every device"))
    old = [torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)]
    batches = torch.Generator().manual_seed(5)
    saved = {"torch": torch.get_rng_state(), "cuda": old, "batches": batches.get_state()}
    expected = torch.randint(0, 100, (3,), generator=batches)
    fresh = torch.Generator()
    restore_rng(saved, fresh)
    assert restored == [old[1]] and torch.equal(torch.randint(0, 100, (3,), generator=fresh), expected)

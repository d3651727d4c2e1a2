"""Muon: the Newton-Schulz orthogonalisation, one step against a hand-written reference and against
torch.optim.Muon, the routing of parameters to Muon or AdamW, and the config switches."""

import math

import pytest
import torch
from helpers import assert_input_error
from test_training_run import train, workdir, write_config  # noqa: F401  (workdir is a fixture)

from lmkit.model import ModelConfig, TransformerLM
from lmkit.training.config import OptimConfig, load_config
from lmkit.training.loop import Trainer
from lmkit.training.muon import (
    NS_CONVERGED_FROM,
    SINGULAR_VALUE_BAND,
    Muon,
    build_optimizer,
    muon_param_groups,
    newton_schulz,
)
from lmkit.training.optim import AdamW

SHAPES = [(8, 8), (64, 64), (200, 200), (32, 128), (128, 32), (96, 256), (16, 512), (1, 64)]


@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_is_near_orthogonal_with_the_same_singular_vectors(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))) * 37.0  # any scale
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    out = newton_schulz(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    out_s = torch.linalg.svdvals(out)
    low, high = SINGULAR_VALUE_BAND
    converged = s / torch.linalg.matrix_norm(x) >= NS_CONVERGED_FROM
    assert converged.sum() >= 1
    # The singular vectors are kept: Uᵀ O V is diagonal, and its diagonal is O's singular values.
    core = u.T @ out @ vh.T
    torch.testing.assert_close(core, torch.diag(torch.diagonal(core)), atol=1e-4, rtol=0)
    assert torch.all(torch.diagonal(core)[converged] >= low) and torch.all(torch.diagonal(core) <= high)
    assert out_s.max() <= high


def test_newton_schulz_transposes_tall_matrices():
    tall = torch.randn(48, 12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(newton_schulz(tall), newton_schulz(tall.T).T, atol=0, rtol=0)


@pytest.mark.parametrize("shape", [(3, 16, 24), (3, 24, 16)])
def test_a_stack_of_matrices_is_orthogonalised_each_as_alone(shape):
    stack = (
        torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * torch.tensor([0.1, 1.0, 30.0])[:, None, None]
    )
    alone = torch.stack([newton_schulz(matrix) for matrix in stack])
    torch.testing.assert_close(newton_schulz(stack), alone, rtol=1e-5, atol=1e-6)


def _reference_muon(w, grads, lr, mu, wd):
    """Muon written out once more, step by step, for one matrix and a list of gradients."""
    a, b, c = 3.4445, -4.7750, 2.0315
    w, m = w.clone(), torch.zeros_like(w)
    rows, cols = w.shape
    for g in grads:
        m = mu * m + g
        u = g + mu * m
        x = u / (torch.sqrt((u * u).sum()) + 1e-7)
        if rows > cols:
            x = x.T
        for _ in range(5):
            gram = x @ x.T
            x = a * x + (b * gram + c * (gram @ gram)) @ x
        o = x.T if rows > cols else x
        w = w - lr * (0.2 * math.sqrt(max(rows, cols)) * o + wd * w)
    return w


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_muon_steps_equal_a_hand_written_reference(shape):
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(shape, generator=gen)
    grads = [torch.randn(shape, generator=gen) for _ in range(4)]
    param = torch.nn.Parameter(start.clone())
    optimizer = Muon([{"params": [param], "muon": True}], lr=0.05, momentum=0.9, weight_decay=0.1)
    for g in grads:
        param.grad = g.clone()
        optimizer.step()
    expected = _reference_muon(start, grads, lr=0.05, mu=0.9, wd=0.1)
    torch.testing.assert_close(param.detach(), expected, atol=1e-6, rtol=1e-5)
    assert set(optimizer.state[param]) == {"momentum_buffer"}


def test_muon_tracks_torch_optim_muon():
    # torch's Muon runs Newton-Schulz in bfloat16; lmkit's runs in float32 on the CPU, so they agree to
    # bfloat16's precision. Same scale rule: torch's adjust_lr_fn="match_rms_adamw".
    gen = torch.Generator().manual_seed(2)
    start = torch.randn(24, 40, generator=gen) * 0.1
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    mine = Muon([{"params": [ours], "muon": True}], lr=0.02, momentum=0.95, weight_decay=0.1)
    ref = torch.optim.Muon([theirs], lr=0.02, momentum=0.95, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(10):
        g = torch.randn(24, 40, generator=gen)
        ours.grad, theirs.grad = g.clone(), g.clone()
        mine.step()
        ref.step()
    moved_ours, moved_theirs = ours.detach() - start, theirs.detach() - start
    cosine = torch.nn.functional.cosine_similarity(moved_ours.flatten(), moved_theirs.flatten(), dim=0)
    assert cosine > 0.999
    assert torch.linalg.matrix_norm(moved_ours) == pytest.approx(
        torch.linalg.matrix_norm(moved_theirs).item(), rel=0.01
    )


def test_the_adamw_family_steps_exactly_like_adamw():
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(5, generator=gen)
    in_muon, alone = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    matrix = torch.nn.Parameter(torch.randn(3, 3, generator=gen))
    settings = {"lr": 0.01, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    mixed = Muon([{"params": [matrix], "muon": True}, {"params": [in_muon]}], **settings)
    adamw = AdamW([alone], **settings)
    for _ in range(5):
        g = torch.randn(5, generator=gen)
        in_muon.grad, alone.grad, matrix.grad = g.clone(), g.clone(), torch.randn(3, 3, generator=gen)
        mixed.step()
        adamw.step()
    assert torch.equal(in_muon, alone)


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True, "qk_norm": True}, {"norm": "none"}])
def test_hidden_matrices_go_to_muon_everything_else_to_adamw(overrides):
    config = ModelConfig(vocab_size=50, context_length=8, d_model=16, num_layers=2, num_heads=2, **overrides)
    model = TransformerLM(config)
    optimizer = build_optimizer(model, OptimConfig(name="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1))
    names = {id(p): name for name, p in model.named_parameters()}
    families = {True: set(), False: set()}
    for group in optimizer.param_groups:
        families[group["muon"]].update(names[id(p)] for p in group["params"])
        assert group["lr"] == (0.02 if group["muon"] else 1e-3)
    matrices = {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.output_proj", "ffn.w1", "ffn.w2", "ffn.w3"}
    assert families[True] == {f"layers.{i}.{m}.weight" for i in range(2) for m in matrices}
    assert families[False] == set(names.values()) - families[True]
    assert {
        "token_embeddings.weight",
        "layers.0.ln1.weight" if config.norm != "none" else "lm_head.weight",
    } <= families[False]
    every = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters()))


def test_adamw_family_keeps_its_weight_decay_rules():
    model = TransformerLM(ModelConfig(vocab_size=50, context_length=8, d_model=16, num_layers=1, num_heads=2))
    groups = muon_param_groups(model, lr=1e-3, muon_lr=0.02, momentum=0.95, weight_decay=0.1)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(model.lm_head.weight)] == 0.1
    assert decay[id(model.token_embeddings.weight)] == 0.0
    assert decay[id(model.ln_final.weight)] == 0.0
    assert decay[id(model.layers[0].attn.q_proj.weight)] == 0.1


def test_muon_lr_defaults_to_lr_and_follows_the_schedule(runner, workdir):  # noqa: F811
    assert OptimConfig(name="muon", lr=2e-3).muon_lr == 2e-3
    assert OptimConfig(lr=2e-3).muon_lr is None  # AdamW runs do not carry it (nor differ by it in runs compare)
    config = load_config(write_config(workdir, optim={"name": "muon", "lr": 1e-3, "muon_lr": 0.02, "min_lr": 1e-4}))
    trainer = Trainer(config)
    trainer.step = config.total_steps  # the end of the schedule: each family at its min, min_lr / lr of its peak
    trainer.train_step()
    lrs = {group["muon"]: group["lr"] for group in trainer.optimizer.param_groups}
    assert lrs == {False: pytest.approx(1e-4), True: pytest.approx(0.002)}


@pytest.mark.parametrize(
    ("optim", "message"),
    [
        ({"name": "muom"}, "optim.name: unknown optimizer 'muom'; did you mean 'muon'?"),
        ({"name": "AdamW"}, "optim.name: unknown optimizer 'AdamW'; did you mean 'adamw'?"),
        ({"name": "sgd"}, "optim.name: unknown optimizer 'sgd'; choose one of adamw, muon"),
        ({"name": "muon", "muon_lr": 0}, "optim.muon_lr: Input should be greater than 0"),
        ({"name": "muon", "muon_lr": -0.02}, "optim.muon_lr: Input should be greater than 0"),
        ({"name": "muon", "muon_momentum": 1.0}, "optim.muon_momentum: Input should be less than 1"),
        ({"name": "muon", "muon_momentum": -0.1}, "optim.muon_momentum: Input should be greater than or equal to 0"),
    ],
)
def test_bad_optimizer_settings(runner, workdir, optim, message):  # noqa: F811
    assert_input_error(train(runner, "--config", str(write_config(workdir, optim=optim))), message)

"""Choosing the next token on hand-made logits: temperature, top-k, top-p (the nucleus) and seeds."""

import math

import pytest
import torch

from lmkit.generate import next_token_probs, sample_next_token

PROBS = [0.5, 0.25, 0.15, 0.1]


def logits_of(probs: list[float]) -> torch.Tensor:
    """Logits (1, V) whose softmax is `probs`."""
    return torch.tensor([[math.log(p) for p in probs]])


def plain_softmax(values: list[float]) -> list[float]:
    top = max(values)
    weights = [math.exp(v - top) for v in values]
    return [w / sum(weights) for w in weights]


def draw(logits: torch.Tensor, n: int, seed: int = 0, **options) -> list[int]:
    """n draws of one token from the same logits, as one batch of n rows."""
    generator = torch.Generator().manual_seed(seed)
    return sample_next_token(logits.expand(n, -1), generator=generator, **options).tolist()


def test_a_token_outside_the_nucleus_is_never_drawn():
    # 0.5 < 0.7 <= 0.5 + 0.25: the nucleus is the first two tokens, renormalised to 2/3 and 1/3.
    samples = draw(logits_of(PROBS), 20_000, temperature=1.0, top_p=0.7)
    assert set(samples) == {0, 1}
    assert samples.count(0) / len(samples) == pytest.approx(2 / 3, abs=0.02)
    probs = next_token_probs(logits_of(PROBS), temperature=1.0, top_p=0.7)
    torch.testing.assert_close(probs, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0]]))


def test_top_p_keeps_the_most_likely_token_even_when_it_alone_exceeds_p():
    assert next_token_probs(logits_of(PROBS), 1.0, top_p=0.3).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert set(draw(logits_of(PROBS), 1000, temperature=1.0, top_p=1e-9)) == {0}


def test_top_p_is_smallest_set_reaching_p_on_unsorted_logits():
    probs = [0.1, 0.3, 0.05, 0.4, 0.15]  # sorted: 0.4, 0.3 (0.7), 0.15 (0.85), ...
    kept = next_token_probs(logits_of(probs), 1.0, top_p=0.8)[0]
    assert (kept > 0).tolist() == [False, True, False, True, True]
    torch.testing.assert_close(kept, torch.tensor([0.0, 0.3, 0.0, 0.4, 0.15]) / 0.85)


def test_top_p_one_leaves_the_distribution_unchanged():
    values = [2.0, -1.0, 0.5, 3.5, 0.0]
    probs = next_token_probs(torch.tensor([values]), temperature=1.0, top_p=1.0)
    torch.testing.assert_close(probs, torch.tensor([plain_softmax(values)]))
    samples = draw(torch.tensor([values]), 40_000, temperature=1.0, top_p=1.0)
    for token, p in enumerate(plain_softmax(values)):
        assert samples.count(token) / len(samples) == pytest.approx(p, abs=0.01)


def test_temperature_divides_the_logits():
    values = [2.0, -1.0, 0.5, 3.5]
    for temperature in (0.5, 1.0, 2.0):
        expected = plain_softmax([v / temperature for v in values])
        torch.testing.assert_close(next_token_probs(torch.tensor([values]), temperature), torch.tensor([expected]))


def test_temperature_zero_is_argmax():
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(1))
    expected = [max(range(1000), key=row.__getitem__) for row in logits.tolist()]
    assert sample_next_token(logits, temperature=0).tolist() == expected
    # Greedy ignores the generator and the filters: no randomness at all.
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    assert sample_next_token(logits, 0, top_k=3, top_p=0.1, generator=g1).tolist() == expected
    assert sample_next_token(logits, 0, generator=g2).tolist() == expected


def test_top_k_keeps_the_k_most_likely():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    probs = next_token_probs(logits, temperature=1.0, top_k=5)
    for row, kept in zip(logits.tolist(), probs, strict=True):
        best = sorted(range(50), key=row.__getitem__, reverse=True)[:5]
        assert set(kept.nonzero().flatten().tolist()) == set(best)
        expected = plain_softmax([row[i] for i in best])
        torch.testing.assert_close(kept[best], torch.tensor(expected))
    samples = draw(logits[:1], 5000, temperature=1.0, top_k=2)
    assert set(samples) == set(sorted(range(50), key=logits[0].tolist().__getitem__)[-2:])


def test_top_k_larger_than_the_vocabulary_keeps_everything():
    values = [1.0, 2.0, 3.0]
    probs = next_token_probs(torch.tensor([values]), 1.0, top_k=10)
    torch.testing.assert_close(probs, torch.tensor([plain_softmax(values)]))


def test_top_p_applies_to_what_top_k_left():
    # top-k 2 leaves 0.4 and 0.3, renormalised 4/7 and 3/7; 4/7 alone reaches p = 0.5.
    # (top-p 0.5 on the full distribution would keep two tokens.)
    probs = next_token_probs(logits_of([0.4, 0.3, 0.2, 0.1]), 1.0, top_k=2, top_p=0.5)
    assert probs.tolist() == [[1.0, 0.0, 0.0, 0.0]]


def test_a_fixed_seed_repeats_and_another_seed_differs():
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(3))
    first = draw(logits, 200, seed=7, temperature=1.0, top_p=0.9, top_k=50)
    assert draw(logits, 200, seed=7, temperature=1.0, top_p=0.9, top_k=50) == first
    assert draw(logits, 200, seed=8, temperature=1.0, top_p=0.9, top_k=50) != first

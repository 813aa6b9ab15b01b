import numpy as np
import pytest

from ensemble.sampling import SamplingSettings, forbidden_mask, sample


def test_masked_token_never_drawn():
    logits = np.array([0.0, 5.0, 0.0, 1.0])  # token 1 is by far the likeliest
    mask = forbidden_mask(4, [1])
    rng = np.random.default_rng(0)
    draws = [sample(logits, SamplingSettings(temperature=2.0), rng, mask) for _ in range(2000)]
    assert 1 not in draws
    assert set(draws) == {0, 2, 3}


def test_low_temperature_concentrates_on_argmax():
    rng = np.random.default_rng(1)
    logits = np.array([1.0, 1.5, 0.5, 1.2])
    cold = [sample(logits, SamplingSettings(temperature=0.05), rng) for _ in range(500)]
    hot = [sample(logits, SamplingSettings(temperature=1.0), rng) for _ in range(500)]
    assert cold.count(1) >= 495
    assert hot.count(1) < 300


def test_same_seed_same_sample():
    logits = np.random.default_rng(5).normal(size=(3, 50))
    s = SamplingSettings(temperature=0.9, top_p=0.9)
    a = [sample(logits, s, np.random.default_rng(42)).tolist() for _ in range(3)]
    b = [sample(logits, s, np.random.default_rng(42)).tolist() for _ in range(3)]
    assert a == b
    seq_a = [sample(logits[0], s, rng) for rng in [np.random.default_rng(7)] for _ in range(20)]
    rng = np.random.default_rng(7)
    seq_b = [sample(logits[0], s, rng) for _ in range(20)]
    assert seq_a == seq_b


def test_top_k_and_top_p_limit_support():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(3)
    k2 = {sample(logits, SamplingSettings(top_k=2), rng) for _ in range(500)}
    assert k2 == {0, 1}
    p = {sample(logits, SamplingSettings(top_p=0.75), rng) for _ in range(500)}
    assert p == {0, 1}


def test_sample_follows_distribution():
    probs = np.array([0.1, 0.6, 0.3])
    rng = np.random.default_rng(11)
    draws = sample(np.tile(np.log(probs), (20000, 1)), SamplingSettings(), rng)
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.allclose(freq, probs, atol=0.015)


def test_greedy_only_when_asked_and_bad_settings():
    logits = np.array([0.0, 0.1, 3.0])
    assert sample(logits, SamplingSettings(greedy=True), np.random.default_rng()) == 2
    with pytest.raises(ValueError, match="temperature"):
        SamplingSettings(temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=0)
    with pytest.raises(ValueError, match="forbidden"):
        sample(logits, SamplingSettings(), np.random.default_rng(), np.ones(3, dtype=bool))


def test_top_p_draws_follow_the_renormalised_nucleus():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    rng = np.random.default_rng(12)
    draws = sample(np.tile(np.log(probs), (20000, 1)), SamplingSettings(top_p=0.9), rng)
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert freq[3] == 0
    assert np.allclose(freq[:3], probs[:3] / probs[:3].sum(), atol=0.015)
    # a large vocabulary whose nucleus needs more than the partitioned candidates
    flat = np.zeros(3000)
    wide = {sample(flat, SamplingSettings(top_p=0.5), rng) for _ in range(3000)}
    assert len(wide) > 1000

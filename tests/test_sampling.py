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


# ------------------------------------------------------------------- the live Sampler
#
# `Sampler` must draw from exactly the distribution `sample` defines. Where it walks the
# same inverse CDF with the same uniform (top-p 1.0, top-k up to FEW with any top-p,
# greedy) it must give the same tokens from the same seed and leave the generator in the
# same state; where it samples the nucleus by rejection (top-p < 1 without a small
# top-k) its draws are checked against the exact nucleus distribution, computed here
# with a plain full sort, by a chi-square test at a fixed seed.

from ensemble.sampling import FEW, NUCLEUS_TRIES, Sampler  # noqa: E402

EXACT_SETTINGS = [
    SamplingSettings(),
    SamplingSettings(temperature=0.7),
    SamplingSettings(temperature=1.3, top_k=5),
    SamplingSettings(top_k=1),
    SamplingSettings(top_k=40, top_p=0.9),
    SamplingSettings(temperature=0.8, top_k=7, top_p=0.5),
    SamplingSettings(greedy=True),
]


def _cases(vocab, gen):
    return [
        gen.normal(size=vocab).astype(np.float32),
        (gen.normal(size=(1, vocab)) * 40).astype(np.float32),  # underflowing probabilities
        np.round(gen.normal(size=(5, vocab)), 1),                # ties, float64, grows the buffers
        gen.normal(size=(3, vocab)).astype(np.float32),
        np.zeros((2, vocab), dtype=np.float32),                  # every token tied
    ]


@pytest.mark.parametrize("settings", EXACT_SETTINGS, ids=lambda s: f"t{s.temperature}-k{s.top_k}-p{s.top_p}-g{s.greedy}")
@pytest.mark.parametrize("vocab", [60, 700])
def test_sampler_draws_exactly_what_sample_draws(settings, vocab):
    gen = np.random.default_rng(11)
    sampler = Sampler(vocab, max_batch=2)
    mask = forbidden_mask(vocab, [0, 3, vocab - 1])
    for logits in _cases(vocab, gen):
        for m in (None, mask, np.broadcast_to(mask, logits.shape)):
            ra, rb = np.random.default_rng(5), np.random.default_rng(5)
            for _ in range(40):
                want = sample(logits, settings, ra, m)
                got = sampler(logits, settings, rb, m)
                assert type(got) is type(want)
                np.testing.assert_array_equal(got, want)
                if isinstance(want, np.ndarray):
                    assert got.dtype == want.dtype
            assert ra.bit_generator.state == rb.bit_generator.state
    with pytest.raises(ValueError, match="forbidden"):
        sampler(_cases(vocab, gen)[0], settings, np.random.default_rng(0), np.ones(vocab, dtype=bool))
    with pytest.raises(ValueError, match="forbidden"):
        sampler(np.zeros((2, vocab)), settings, np.random.default_rng(0),
                np.stack([np.zeros(vocab, dtype=bool), np.ones(vocab, dtype=bool)]))


@pytest.mark.parametrize("shape", [(3660,), (1, 11264), (16, 3660)])
def test_sampler_identical_on_large_vocabularies(shape):
    vocab = shape[-1]
    sampler = Sampler(vocab, max_batch=16)
    gen = np.random.default_rng(len(shape))
    mask = forbidden_mask(vocab, range(0, vocab, 5))
    for settings in (SamplingSettings(), SamplingSettings(temperature=0.8, top_k=40),
                     SamplingSettings(top_k=FEW + 100), SamplingSettings(temperature=1.2, top_k=30, top_p=0.95)):
        for m in (None, mask):
            ra, rb = np.random.default_rng(3), np.random.default_rng(3)
            for _ in range(15):
                logits = (gen.normal(size=shape) * gen.uniform(0.5, 8)).astype(np.float32)
                np.testing.assert_array_equal(sampler(logits, settings, rb, m), sample(logits, settings, ra, m))
            assert ra.bit_generator.state == rb.bit_generator.state


def nucleus_probabilities(logits, settings, mask=None) -> np.ndarray:
    """The distribution `sample` defines, written out the long way: softmax of the
    tempered, masked logits, then the smallest likeliest-first set (ties in index order)
    whose mass reaches top_p, renormalised."""
    z = np.where(mask, -np.inf, logits.astype(np.float64)) if mask is not None else logits.astype(np.float64)
    p = np.exp(z / settings.temperature - np.max(z / settings.temperature))
    p /= p.sum()
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    keep, mass = [], 0.0
    for i in order:
        keep.append(i)
        mass += p[i]
        if mass >= settings.top_p:
            break
    q = np.zeros_like(p)
    q[keep] = p[keep]
    return q / q.sum()


def chi_square_ok(counts, probs) -> tuple[bool, str]:
    """Pearson's chi-square against `probs`, cells with expected counts under 5 pooled;
    passes below the 1e-6 tail (Wilson-Hilferty), and a token outside the support fails."""
    n = counts.sum()
    if counts[probs == 0].any():
        return False, f"drew tokens with zero probability: {np.flatnonzero(counts * (probs == 0))[:10]}"
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    if df == 0:  # one token holds all the probability
        return True, "one token"
    limit = df * (1 - 2 / (9 * df) + 4.753 * np.sqrt(2 / (9 * df))) ** 3  # z = 4.753: p = 1e-6
    return chi2 < limit, f"chi2 {chi2:.1f} with {df} degrees of freedom (limit {limit:.1f})"


NUCLEUS_CASES = {
    "peaked": lambda g: g.normal(size=40) * 2.5,
    "flat wide nucleus": lambda g: g.normal(size=300) * 0.05,
    "one dominant token": lambda g: np.append([6.0], g.normal(size=199) * 0.2),
    "ties at the edge": lambda g: np.repeat([2.0, 1.0, 0.0], [3, 6, 31]),
}


@pytest.mark.parametrize("case", list(NUCLEUS_CASES))
@pytest.mark.parametrize("settings", [SamplingSettings(top_p=0.95), SamplingSettings(temperature=0.8, top_p=0.6),
                                      SamplingSettings(top_p=0.03)],  # 0.03: mostly the exact fallback
                         ids=lambda s: f"t{s.temperature}-p{s.top_p}")
def test_sampler_nucleus_follows_the_exact_distribution(case, settings):
    gen = np.random.default_rng(21)
    logits = NUCLEUS_CASES[case](gen).astype(np.float32)
    vocab = len(logits)
    mask = forbidden_mask(vocab, [1, vocab // 2])
    for m in (None, mask):
        probs = nucleus_probabilities(logits, settings, m)
        sampler, rng = Sampler(vocab, max_batch=500), np.random.default_rng(7)
        draws = [sampler(logits, settings, rng, m) for _ in range(3000)]  # one row at a time
        for _ in range(12):  # and batched
            draws += sampler(np.tile(logits, (500, 1)), settings, rng, m).tolist()
        ok, why = chi_square_ok(np.bincount(draws, minlength=vocab), probs)
        assert ok, f"{case}, mask {m is not None}: {why}"
        # the reference itself, the same way (a check of the test)
        ref = sample(np.tile(logits, (9000, 1)), settings, np.random.default_rng(8), m)
        ok, why = chi_square_ok(np.bincount(ref, minlength=vocab), probs)
        assert ok, f"sample() on {case}: {why}"


def test_sampler_ties_keep_index_order_in_the_nucleus():
    flat = np.zeros(3000, dtype=np.float32)
    sampler, rng = Sampler(3000), np.random.default_rng(0)
    draws = {sampler(flat, SamplingSettings(top_p=0.5), rng) for _ in range(3000)}
    assert max(draws) < 1500 and len(draws) > 1000
    ref = {sample(flat, SamplingSettings(top_p=0.5), rng) for _ in range(3000)}
    assert max(ref) < 1500


def test_sampler_falls_back_after_rejections_and_stays_seeded():
    """A tiny top_p on a flat row rejects most draws: the fallback still gives nucleus
    tokens, and the same seed the same tokens."""
    logits = np.random.default_rng(3).normal(size=500).astype(np.float32) * 0.01
    settings = SamplingSettings(top_p=0.01)
    allowed = set(np.flatnonzero(nucleus_probabilities(logits, settings)).tolist())
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    s1, s2 = Sampler(500), Sampler(500)
    d1 = [s1(logits, settings, rng1) for _ in range(300)]
    d2 = [s2(logits, settings, rng2) for _ in range(300)]
    assert d1 == d2 and set(d1) <= allowed
    assert NUCLEUS_TRIES >= 1 and len(allowed) < 20


def test_sampler_mask_far_above_the_rest_and_odd_inputs():
    vocab = 100
    sampler = Sampler(vocab, max_batch=2)
    logits = np.zeros(vocab, dtype=np.float32)
    logits[7] = 3000.0  # forbidden, and exp(-3000) of it would underflow every other token
    mask = forbidden_mask(vocab, [7])
    rng = np.random.default_rng(0)
    draws = [sampler(logits, SamplingSettings(top_p=0.9), rng, mask) for _ in range(200)]
    assert 7 not in draws and len(set(draws)) > 50
    batch = sampler(np.stack([logits, logits]), SamplingSettings(), rng, mask)
    assert 7 not in batch.tolist()


def test_sampler_top_k_when_the_mask_crowds_the_top():
    """The likeliest 300 tokens forbidden: the quick top-k bound finds too few allowed
    tokens and the exact route takes over; the draws stay those of `sample`."""
    vocab = 3660
    gen = np.random.default_rng(4)
    logits = gen.normal(size=vocab).astype(np.float32)
    mask = np.zeros(vocab, dtype=bool)
    mask[np.argsort(-logits)[:300]] = True
    sampler = Sampler(vocab, max_batch=4)
    for settings in (SamplingSettings(top_k=40), SamplingSettings(temperature=0.7, top_k=12, top_p=0.8)):
        ra, rb = np.random.default_rng(6), np.random.default_rng(6)
        for rows in (logits, np.stack([logits, logits[::-1]])):
            for _ in range(30):
                got = sampler(rows, settings, rb, mask)
                np.testing.assert_array_equal(got, sample(rows, settings, ra, mask))
                assert not mask[got].any()
        assert ra.bit_generator.state == rb.bit_generator.state


# ------------------------------------------------ found by review (2026-12-07), each failing before


def _same_tokens(logits, settings, mask=None, n=200, seed=0):
    from ensemble.sampling import Sampler

    s = Sampler(logits.shape[-1])
    ra, rb = np.random.default_rng(seed), np.random.default_rng(seed)
    want = [sample(logits, settings, ra, mask) for _ in range(n)]
    got = [s(logits, settings, rb, mask) for _ in range(n)]
    assert got == want and ra.bit_generator.state == rb.bit_generator.state


@pytest.mark.parametrize("V,k", [(233, 118), (1830, 300), (3660, 241), (3660, 512)])
def test_top_k_up_to_512_draws_the_very_tokens_of_sample_with_top_p(V, k):
    """Between the group count (~240) and 512 the kept tokens were drawn by rejection."""
    logits = np.random.default_rng(0).normal(size=V).astype(np.float32)
    _same_tokens(logits, SamplingSettings(top_k=k, top_p=0.95))


def test_float64_logits_keep_their_precision_under_a_mask():
    x = np.full(100, -5.0)
    x[:50] = 10.0  # the likeliest, all masked: the allowed tokens are ranked again
    x[50:60] = 1.0 + np.arange(10) * 1e-9  # distinct in float64, one value in float32
    mask = np.zeros(100, dtype=bool)
    mask[:50] = True
    _same_tokens(x, SamplingSettings(top_k=3), mask)


def test_near_equal_logits_that_exp_merges_rank_as_in_sample():
    x = np.array([0.1, np.nextafter(0.1, 1), -3, -3, -3])  # equal probabilities: index order decides
    _same_tokens(x, SamplingSettings(top_k=2, top_p=0.5))


def test_ties_at_the_nucleus_candidates_cut_are_taken_in_index_order():
    """`sample` partitions out 256 candidates; tied tokens at that cut were picked at random."""
    p = np.zeros(500)
    p[np.random.default_rng(1).permutation(500)[:100]] = 1.0
    logits = p  # 100 tokens at 1.0, 400 at 0.0: ties everywhere
    z = np.exp(logits - logits.max())
    z /= z.sum()
    order = np.argsort(-z, kind="stable")
    n = int(np.searchsorted(np.cumsum(z[order]), 0.6)) + 1
    nucleus = set(order[:n].tolist())
    draws = sample(np.tile(logits, (4000, 1)), SamplingSettings(top_p=0.6), np.random.default_rng(2))
    assert set(draws.tolist()) <= nucleus


def test_a_row_left_with_only_minus_inf_raises_in_both_samplers():
    from ensemble.sampling import Sampler

    x = np.array([1.0, -np.inf, -np.inf])
    mask = np.array([True, False, False])
    for settings in (SamplingSettings(), SamplingSettings(top_p=0.5), SamplingSettings(top_k=1),
                     SamplingSettings(greedy=True)):
        for draw in (sample, Sampler(3)):
            with pytest.raises(ValueError, match="mask allows has logit -inf"):
                draw(x, settings, np.random.default_rng(0), mask)
            with pytest.raises(ValueError, match="every logit is -inf"):
                draw(np.full(3, -np.inf), settings, np.random.default_rng(0))
    # a vocabulary large enough for the live sampler's top-k route, whose kept set comes out empty
    V = 300
    x = np.full(V, -np.inf)
    x[:5] = 1.0
    mask = np.arange(V) < 5
    for k in (1, 3, 40, V - 1):
        for top_p in (1.0, 0.9):
            for draw in (sample, Sampler(V)):
                with pytest.raises(ValueError, match="mask allows has logit -inf"):
                    draw(x, SamplingSettings(top_k=k, top_p=top_p), np.random.default_rng(0), mask)
    # a batch: one row left with only -inf, a later row fully masked; `sample` names the mask
    x = np.zeros((2, V))
    x[0, 5:] = -np.inf
    mask = np.zeros((2, V), dtype=bool)
    mask[0, :5] = True
    mask[1] = True
    for k in (0, 3):
        for draw in (sample, Sampler(V)):
            with pytest.raises(ValueError, match="forbidden by the mask"):
                draw(x, SamplingSettings(top_k=k), np.random.default_rng(0), mask)


# ------------------------------------------------ the batched top-k route (2026-12-07)


def test_a_batch_on_the_top_k_route_draws_each_row_as_sample_does():
    """From BATCHED_TOP_K rows the top-k rows are drawn together; the rows that route
    cannot take (the mask crowds the top, fewer finite logits than k) go alone, in
    their place in the batch, and every row gets `sample`'s token from the same seed."""
    from ensemble.sampling import BATCHED_TOP_K

    V, gen = 700, np.random.default_rng(21)
    x = gen.normal(size=(BATCHED_TOP_K + 4, V)) * 3
    x[1] = np.round(x[1])                   # ties at the k-th value
    x[2] = 0.0                              # every token tied
    x[3, 20:] = -np.inf                     # fewer finite logits than k: goes alone
    x[4, :60] += 50.0                       # the likeliest, masked below: goes alone
    mask = np.zeros(x.shape, dtype=bool)
    mask[4, :60] = True
    mask[5, gen.random(V) < 0.5] = True
    for logits in (x, x.astype(np.float32)):
        for settings in (SamplingSettings(temperature=0.8, top_k=40, top_p=0.95), SamplingSettings(top_k=5),
                         SamplingSettings(top_k=1), SamplingSettings(temperature=1.3, top_k=300, top_p=0.5)):
            sampler = Sampler(V)
            ra, rb = np.random.default_rng(8), np.random.default_rng(8)
            for _ in range(30):
                np.testing.assert_array_equal(sampler(logits, settings, rb, mask), sample(logits, settings, ra, mask))
            assert ra.bit_generator.state == rb.bit_generator.state
    # a row whose allowed tokens are all -inf raises as it does alone, the others drawn or not
    only_inf = x.copy()
    only_inf[6, :] = -np.inf
    for draw in (sample, Sampler(V)):
        with pytest.raises(ValueError, match="mask allows"):
            draw(only_inf, SamplingSettings(top_k=40), np.random.default_rng(0), mask)


def test_a_batch_on_the_top_k_route_equals_its_rows_drawn_one_by_one():
    """The batch draws one uniform per row in row order, as one-row calls do, so the two
    must agree token for token; an infinite temperature (every kept token equally
    likely) once made the batch's -inf padding NaN and drew each row's first token."""
    from ensemble.sampling import BATCHED_TOP_K

    V, gen = 300, np.random.default_rng(4)
    x = gen.normal(size=(BATCHED_TOP_K + 3, V))
    x[0] = 0.0                    # a row of zeros: every token a candidate, drawn alone
    x[1] = -3e4                   # a mask written into the logits (finite in float16 too)
    x[1, :10] = gen.normal(size=10)
    for logits in (x, x.astype(np.float32), x.astype(np.float16)):
        for settings in (SamplingSettings(temperature=float("inf"), top_k=5),
                         SamplingSettings(temperature=float("inf"), top_k=5, top_p=0.5),
                         SamplingSettings(temperature=0.9, top_k=40, top_p=0.95)):
            sampler = Sampler(V)
            ra, rb = np.random.default_rng(2), np.random.default_rng(2)
            for _ in range(20):
                rows = [sampler(row, settings, ra) for row in logits]
                assert sampler(logits, settings, rb).tolist() == rows
            assert ra.bit_generator.state == rb.bit_generator.state

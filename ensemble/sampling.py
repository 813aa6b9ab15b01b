"""Choosing the next token from a model's logits.

Sampling, never plain argmax unless asked for: a model that always takes its most
likely token loops and sounds dead. Temperature scales the logits (low: safe and
repetitive, high: adventurous), top-k keeps the k likeliest tokens, top-p (nucleus)
keeps the smallest set whose probability reaches p, and a mask forbids tokens outright
(an unknown character, a note outside an instrument's range).

Works on numpy arrays, one row (V,) or a batch (B, V), with a seeded
``numpy.random.Generator``: the live server's engine produces numpy logits, and the same
seed gives the same sample everywhere.

`sample` is the reference: short, obviously right, and slow where it sorts (top-p).
`Sampler` is what the server runs for every event: the same distribution from the same
settings, without sorting the vocabulary and without per-event allocation (see its doc).
Both are numpy only: the live path never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingSettings:
    temperature: float = 1.0
    top_k: int = 0        # 0: no limit
    top_p: float = 1.0    # 1.0: no limit
    greedy: bool = False  # argmax; only when asked for explicitly

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def forbidden_mask(vocab_size: int, forbidden) -> np.ndarray | None:
    """A boolean (vocab,) array, True where a token may never be drawn; None for none."""
    if forbidden is None or len(forbidden) == 0:
        return None
    mask = np.zeros(vocab_size, dtype=bool)
    mask[np.asarray(forbidden, dtype=np.int64)] = True
    return mask


def sample(
    logits: np.ndarray,
    settings: SamplingSettings,
    rng: np.random.Generator,
    mask: np.ndarray | None = None,
):
    """Draw one token per row. logits (V,) -> int, (B, V) -> int64 array (B,).

    mask: boolean, (V,) or (B, V), True where the token is forbidden.
    """
    z = np.asarray(logits, dtype=np.float64)
    single = z.ndim == 1
    if single:
        z = z[None, :]
    if mask is not None:
        z = np.where(mask, -np.inf, z)
        if np.any(np.all(mask, axis=-1)):
            raise ValueError(_NOTHING_LEFT)
    if np.any(z.max(axis=1) == -np.inf):  # (NaN logits stay the caller's business, as before)
        raise ValueError(_ALL_INF if mask is None else _ONLY_INF_LEFT)
    if settings.greedy:
        choice = np.argmax(z, axis=1)
        return int(choice[0]) if single else choice
    z = z / settings.temperature
    if 0 < settings.top_k < z.shape[1]:
        kth = np.partition(z, -settings.top_k, axis=1)[:, -settings.top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if settings.top_p < 1.0:
        u = rng.random(z.shape[0])
        choice = np.array([_nucleus_draw(row, settings.top_p, v) for row, v in zip(p, u)], dtype=np.int64)
        return int(choice[0]) if single else choice
    cumulative = np.cumsum(p, axis=1)
    u = rng.random((z.shape[0], 1)) * cumulative[:, -1:]
    choice = np.minimum((cumulative <= u).sum(axis=1), z.shape[1] - 1)
    # never land on a zero-probability token through rounding at the edges
    for row in np.nonzero(p[np.arange(len(choice)), choice] == 0)[0]:
        choice[row] = int(np.argmax(p[row]))
    return int(choice[0]) if single else choice


NUCLEUS_CANDIDATES = 256


def _nucleus_draw(p: np.ndarray, top_p: float, u: float) -> int:
    """One draw from the nucleus of a probability row: the likeliest tokens, most likely
    first, until their mass reaches top_p (the first token is always in).

    Sorting a whole 3,660-token vocabulary costs ~100 us an event; the nucleus almost
    always lies among the few likeliest tokens, so those are found with a partition and
    only they are sorted; the draw then happens inside the nucleus alone (`u` in [0, 1)).
    The full sort remains for rows where the candidates do not reach top_p.
    """
    vocab = len(p)
    k = min(vocab, NUCLEUS_CANDIDATES)
    if k < vocab:
        # every token as likely as the k-th joins the candidates: the partition picks among
        # tied tokens at its cut arbitrarily, and the nucleus takes ties in index order.
        # flatnonzero also sorts them by index, so ties keep that order in the stable sort
        candidates = np.flatnonzero(p >= p[np.argpartition(-p, k - 1)[k - 1]])
        k = len(candidates)
    else:
        candidates = np.arange(vocab)
    order = candidates[np.argsort(-p[candidates], kind="stable")]
    cumulative = np.cumsum(p[order])
    if k < vocab and cumulative[-1] < top_p:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
    n = min(int(np.searchsorted(cumulative, top_p)) + 1, len(order))  # tokens whose likelier mass < top_p
    i = int(np.searchsorted(cumulative[:n], u * cumulative[n - 1], side="right"))
    return int(order[min(i, n - 1)])


# ------------------------------------------------------------------- the live sampler

BLOCK = 64          # about this many tokens per block of the two-level inverse CDF
GROUPS = 232        # top-k: tokens are split into about this many strided groups (see _top_k)
NUCLEUS_TRIES = 8   # top-p: draws from the whole distribution before the exact fallback
FEW = 512           # top-k up to this k: the kept tokens are gathered and drawn among
BATCHED_TOP_K = 5   # top-k: from this many rows a batch is drawn all at once (fewer: row by row)


class Sampler:
    """`sample` for one model's logits, in the few microseconds a live event can spend.

    Same arguments and result types as `sample`, the same distribution for every
    setting, and the same draws from the same seed wherever the algorithm allows (top-p
    1.0; top-k up to `FEW` with any top-p; greedy): one uniform per row, the same walk
    as `sample`'s. What changes is how the work is done, because `sample` costs 0.1-0.3
    ms a row on a 3,660-token vocabulary where this costs about 20 us (`ensemble bench
    step`):

    - **no full-vocabulary cumsum** (numpy's is sequential, 14 us for 3,660 tokens): the
      probabilities live in (blocks, ~64) rows (61 for 3,660 tokens, zero padding where
      no block size divides the vocabulary); one BLAS matrix-vector product gives the
      block masses, a cumsum over the ~60 block masses finds the block the uniform lands
      in and a cumsum over its tokens the token.
    - **top-k without a partition of the whole row** (np.partition costs ~27 us): the
      row is cut into ~232 strided groups; the k-th largest group maximum is a value
      that at least k tokens reach, so the k-th largest logit is among the (usually few)
      tokens at or above it, and only they are partitioned; the draw then happens among
      the kept tokens, as `sample` draws (sorting a few dozen tokens for top-p is cheap).
      Ties count as `sample` counts them (every token equal to the k-th value stays).
    - **top-p without a sort** (the nucleus of a flat row holds thousands of tokens):
      rejection. Draw a token i from the whole (tempered, masked, top-k) distribution;
      keep it if the mass of the tokens ahead of it (likelier, or as likely with a
      lower index, the order `sample` sorts in) is below top_p, which is exactly
      "i is in the nucleus"; else draw again with a fresh uniform. Conditioned on being
      kept, token i has probability p_i / P(nucleus): the renormalised nucleus, the
      distribution `sample` draws from. A draw is kept with probability P(nucleus) >=
      top_p (0.95 by default), so it almost always takes one draw and one membership
      test (one vectorised compare and one dot product), and none for a token holding
      more than 1 - top_p of the mass (always in the nucleus). After `NUCLEUS_TRIES`
      rejections (small top_p on a flat row) the row is drawn exactly as `sample`
      does, sorting; the mixture of the two routes is still the nucleus distribution.
      A rejected draw consumes an extra uniform, so with top_p < 1 the draws are the
      same distribution as `sample`'s, not the same tokens.

    Probabilities are float64, computed as `sample` computes them (logits / T, minus
    the row maximum, exp); rows in a batch share every elementwise step and the walk,
    so B rows cost less than B calls. With top-k too, from `BATCHED_TOP_K` rows on
    (below, the ~70 numpy calls of the batched route cost more than the rows alone):
    the group maxima, the bound and the kept tokens of every row at once, then one
    padded draw (16 rows of 3,660 in 0.4-0.6x the time of 16 calls). Sums are taken
    in a different order than `sample`'s, so a draw could differ only where the
    uniform (or a top_p set to exactly a partial mass) falls within float rounding
    (~1e-16) of a token boundary.

    On rows of a few dozen tokens each numpy call costs about a microsecond whatever
    it does, so the small steps call the ufuncs and arrays directly (`np.add.accumulate`,
    `np.maximum.reduce`, `ndarray.argsort`, an in-place `ndarray.partition`): numpy's
    `cumsum`, `max`, `argsort` and `partition` functions wrap exactly these in 0.5-3 us of
    Python each, which was a fifth of a top-k draw.
    """

    def __init__(self, vocab_size: int, max_batch: int = 16):
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        V = self.vocab_size = vocab_size
        # a block size that divides V where one is near 64 (3,660 = 60 x 61): rows then need
        # no padding, so a batch is one contiguous array and every elementwise step runs
        # over it in one go; else 64 and zero padding
        self.block = min((d for d in range(BLOCK // 2, 2 * BLOCK + 1) if V % d == 0),
                         key=lambda d: abs(d - BLOCK), default=BLOCK)
        self.blocks = -(-V // self.block)
        # top-k: tokens per strided group (a divisor of V near V / GROUPS where there is one,
        # so that no leftover tokens need copying on every call) ...
        size = -(-V // GROUPS)
        self.group_size = min((d for d in range(max(1, size // 2), 2 * size + 1) if V % d == 0),
                              key=lambda d: abs(d - V / GROUPS), default=size)
        self.groups = V // self.group_size          # ... and groups, plus V % size groups of one
        self._ones = np.ones(self.block)
        self._flag = np.empty(self.blocks * self.block)  # 0/1 floats: top-k keep flags, nucleus test
        self._gmax = np.empty(self.groups + V - self.groups * self.group_size)
        self._gmax_head = self._gmax[: self.groups]  # the strided groups' maxima (a view made once)
        self._above = np.empty(V, dtype=bool)       # top-k: tokens at or above the bound (and allowed)
        self._keep = np.empty(V)                    # 1.0 where a shared mask allows the token
        self._grow(max_batch)

    def _grow(self, batch: int) -> None:
        V, nb = self.vocab_size, self.blocks
        self.max_batch = batch
        self._z = np.empty((batch, V))                # tempered, masked logits
        self._e = np.zeros((batch, nb * self.block))  # exp(z - max); any padding stays 0
        self._bsum = np.empty((batch, nb))            # block masses
        self._bcum = np.empty((batch, nb))            # their running sums
        self._scratch = np.empty(V, dtype=np.float32)  # top-k: masked logits
        # one row's views, made once: the one-row path is the server's common case
        self._row = (self._z[0], self._e[0, :V], self._e[0], self._e[0].reshape(nb, self.block),
                     self._bsum[0], self._bcum[0])

    def __call__(self, logits: np.ndarray, settings: SamplingSettings, rng: np.random.Generator,
                 mask: np.ndarray | None = None):
        logits = np.asarray(logits)
        V = self.vocab_size
        if logits.shape[-1:] != (V,) or logits.ndim > 2:
            return sample(logits, settings, rng, mask)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.size == V:
                mask = mask.reshape(V)
            elif logits.ndim == 1 or mask.shape != logits.shape:  # as `sample` broadcasts it
                return sample(logits, settings, rng, mask)
        if logits.ndim == 1:
            return self._one(logits, settings, rng, mask)
        if logits.shape[0] == 1 and (mask is None or mask.ndim == 1):
            return np.array([self._one(logits[0], settings, rng, mask)], dtype=np.intp)
        return self._many(logits, settings, rng, mask)

    def _one(self, logits, settings, rng, mask) -> int:
        if settings.greedy:
            z = self._row[0]
            self._masked_logits(z, logits, 1.0, mask)
            return int(z.argmax())
        k = settings.top_k
        if 0 < k < self.vocab_size:
            kept = self._top_k(logits, k, mask)
            if kept is not None:
                return self._draw_among(logits, kept, settings, rng.random(), mask is not None)
            return self._one_row_flagged(logits, settings, mask, rng.random(), rng)
        z, e, row, blocks, bsum, bcum = self._row
        # exp(logits / T - max) as exp((logits - max) / T), the max over every token,
        # masked or not, so that a mask costs one putmask after the exp instead of -inf's
        # slow path through it: the same relative probabilities, up to rounding
        top = np.maximum.reduce(logits)
        np.subtract(logits, top, out=e, dtype=np.float64)
        if settings.temperature != 1.0:
            np.divide(e, settings.temperature, out=e)
        np.exp(e, out=e)
        if mask is not None:
            np.putmask(e, mask, 0.0)
        np.dot(blocks, self._ones, out=bsum)
        np.add.accumulate(bsum, out=bcum)
        if not bcum[-1] > 1e-250:  # nothing left, or the mask hid a far likelier token
            self._masked_logits(z, logits, settings.temperature, mask)  # raises if nothing is left
            np.subtract(z, z.max(), out=e)
            np.exp(e, out=e)
            np.dot(blocks, self._ones, out=bsum)
            np.add.accumulate(bsum, out=bcum)
        return self._draw(row, bsum, bcum, rng.random(), settings.top_p, rng)

    @staticmethod
    def _masked_logits(z, logits, temperature, mask) -> None:
        """z = logits / temperature with -inf where masked, as `sample` makes it; raises
        when nothing is left to draw."""
        if temperature == 1.0:  # x / 1.0 == x: no division
            np.copyto(z, logits)
        else:
            np.divide(logits, temperature, out=z, dtype=np.float64)
        if mask is not None:
            if z.ndim == 1:
                np.putmask(z, mask, -np.inf)
            else:
                np.copyto(z, -np.inf, where=mask)
        if np.any(z.max(axis=-1) == -np.inf):
            if mask is not None and np.any(mask.all(axis=-1)):
                raise ValueError(_NOTHING_LEFT)
            raise ValueError(_ALL_INF if mask is None else _ONLY_INF_LEFT)

    def _many(self, logits, settings, rng, mask) -> np.ndarray:
        B, V = logits.shape
        if B > self.max_batch:
            self._grow(B)
        k = settings.top_k
        if settings.greedy:
            z = self._z[:B]
            self._masked_logits(z, logits, 1.0, mask)
            return np.argmax(z, axis=1)
        if 0 < k < V:
            if mask is not None and mask.ndim == 2 and mask.all(axis=1).any():
                raise ValueError(_NOTHING_LEFT)  # before any row's own error, as `sample` checks
            u = rng.random(B)
            choice = np.empty(B, dtype=np.intp)
            alone = range(B)
            # float32 and float64 only (numpy's float16 arithmetic is slow), finite temperatures
            # (inf / inf would turn the padding into NaN)
            if B >= BATCHED_TOP_K and k <= min(len(self._gmax), FEW) and logits.dtype.char in "fd" \
                    and settings.temperature < np.inf:
                alone = self._many_top_k(logits, settings, mask, u, choice)
            for b in alone:  # row by row, in row order: the rows the batched route left
                m = None if mask is None else (mask if mask.ndim == 1 else mask[b])
                kept = self._top_k(logits[b], k, m)
                if kept is None:
                    choice[b] = self._one_row_flagged(logits[b], settings, m, float(u[b]), rng)
                else:
                    choice[b] = self._draw_among(logits[b], kept, settings, float(u[b]), m is not None)
            return choice
        e = self._e[:B, :V]
        np.copyto(e, logits)  # then subtract in float64: a casting subtract is 2x slower on a batch
        np.subtract(e, logits.max(axis=1, keepdims=True), out=e)
        if settings.temperature != 1.0:
            np.divide(e, settings.temperature, out=e)
        np.exp(e, out=e)
        if mask is not None:
            if mask.ndim == 1:  # one mask for every row: a multiply, 4x cheaper than copyto(where=)
                keep = self._keep
                np.logical_not(mask, out=keep)
                np.multiply(e, keep, out=e)
            else:
                np.copyto(e, 0.0, where=mask)
        bsum, bcum = self._bsum[:B], self._bcum[:B]
        np.dot(self._e[:B].reshape(-1, self.block), self._ones, out=bsum.reshape(-1))
        np.add.accumulate(bsum, axis=1, out=bcum)
        total = bcum[:, -1]
        if not (total > 1e-250).all():  # nothing left, or a mask hid a far likelier token
            z = self._z[:B]
            self._masked_logits(z, logits, settings.temperature, mask)
            np.subtract(z, z.max(axis=1, keepdims=True), out=e)
            np.exp(e, out=e)
            np.dot(self._e[:B].reshape(-1, self.block), self._ones, out=bsum.reshape(-1))
            np.add.accumulate(bsum, axis=1, out=bcum)
        u = rng.random(B)  # one uniform per row, in row order, as `sample` draws them
        rows = np.arange(B)
        # every row's inverse-CDF walk at once: the block, then the token in it
        t = u * total
        j = (bcum <= t[:, None]).sum(axis=1)  # (count_nonzero with an axis is a slower wrapper of this)
        jj = np.minimum(j, self.blocks - 1)
        t -= np.where(j > 0, bcum[rows, jj - 1], 0.0)
        bl = self.block
        block = self._e[:B].reshape(B, self.blocks, bl)[rows, jj]
        i = (np.add.accumulate(block, axis=1) <= t[:, None]).sum(axis=1)
        choice = jj * bl + np.minimum(i, bl - 1)
        edge = (j >= self.blocks) | (i >= bl)  # rounding at the very end of a row or block
        top_p = settings.top_p
        if top_p < 1.0:
            ei = self._e[rows, choice]
            check = edge.copy()
            unsure = np.flatnonzero(ei <= (1.0 - top_p) * total * (1.0 + 1e-9))  # see _draw
            if len(unsure):
                e_u, ei_u = self._e[unsure], ei[unsure]
                ahead = np.einsum("ij,ij->i", e_u, e_u >= ei_u[:, None]) - ei_u
                check[unsure] |= ahead >= top_p * total[unsure]
        else:
            check = edge
        for b in np.flatnonzero(check).tolist():  # ties, outside the nucleus, or an edge
            row = self._e[b]
            if edge[b]:
                choice[b] = self._draw(row, bsum[b], bcum[b], u[b], top_p, rng)
            elif not self._in_nucleus(row, int(choice[b]), top_p * total[b]):
                choice[b] = self._draw(row, bsum[b], bcum[b], rng.random(), top_p, rng)
        return choice

    def _many_top_k(self, logits, settings, mask, u, choice) -> list[int]:
        """`_top_k` then `_draw_among` for every row of a batch at once (k up to `FEW`):
        each numpy call then runs over all B rows, where row by row it would be called B
        times for a few dozen tokens. Writes choice[b] for each row it draws and returns
        the rows it leaves to the one-row code, in order: too few allowed tokens at the
        bound (masked tokens crowd the top), far more candidates than the bound promises
        (ties at the top), or a -inf among the kept (or only -inf: that row raises
        there, as it would alone). The kept tokens, their order and the
        walk are `_draw_among`'s, on rows padded with zero mass after the kept tokens.

        Rows of different lengths are handled as flat index arrays (a 2-D nonzero or
        fancy index costs 5-10x its 1-D form): the nonzero of the flattened flags, the
        row bounds by a searchsorted, then one scatter into a (B, widest) array padded
        with -inf."""
        B, V = logits.shape
        k, G, q = settings.top_k, self.groups, self.group_size
        n = len(self._gmax)
        gmax = np.empty((B, n), dtype=logits.dtype)
        np.maximum.reduce(logits[:, : q * G].reshape(B, q, G), axis=1, out=gmax[:, :G])
        if q * G < V:
            gmax[:, G:] = logits[:, q * G :]
        r = k if mask is None else min(4 * k, n)
        gmax.partition(-r, axis=1)
        above = logits >= gmax[:, -r:-r + 1 or None]
        if mask is not None:  # at or above the bound and allowed
            np.greater(above, mask, out=above)
        flat = above.reshape(-1).nonzero()[0]  # every row's candidates, row after row, ascending
        bounds = flat.searchsorted(np.arange(0, (B + 1) * V, V))
        # a row with far more candidates than the bound promises (ties at the top, a row of
        # zeros, a mask written into the logits as -1e9) would widen every row's padding:
        # it goes alone (taken out here, its padded row is all -inf, so its k-th value too)
        wide = bounds[1:] - bounds[:-1] > 2 * r + 64
        if wide.any():
            if B - np.add.reduce(wide) < BATCHED_TOP_K:  # too few rows left to gain from a batch
                return list(range(B))
            flat = flat[~wide[flat // V]]
            bounds = None
        values, index, _ = _padded(flat, V, B, logits.reshape(-1), bounds=bounds)
        if values.shape[1] < k:
            return list(range(B))
        kth = np.partition(values, -k, axis=1)[:, -k]
        # every allowed token that reaches the k-th value stays, squeezed to the left
        keep = (values >= kth[:, None]).reshape(-1).nonzero()[0]
        x, tokens, nkept = _padded(keep, values.shape[1], B, values.reshape(-1), index.reshape(-1))
        # a -inf k-th value (fewer than k candidates: the padding; or -inf logits among the
        # kept) would keep the padding too: those rows go alone
        here = kth > -np.inf
        if not here.any():
            return list(range(B))
        # in float64, as `sample` divides; the largest of x / T is the largest x, divided
        z = np.divide(x, settings.temperature, dtype=np.float64) if settings.temperature != 1.0 \
            else x.astype(np.float64)
        if not here.all():
            z[~here] = 0.0  # drawn from, then overwritten: no warning from an all -inf row
        np.subtract(z, np.maximum.reduce(z, axis=1, keepdims=True), out=z)
        p = np.exp(z, out=z)  # the padding has zero mass
        p /= np.add.reduce(p, axis=1, keepdims=True)
        width = p.shape[1]
        starts = np.arange(0, B * width, width)  # each row's first entry in the flattened arrays
        if settings.top_p < 1.0:
            order = np.negative(p).argsort(axis=1, kind="stable")  # zero-mass padding sorts last
            np.add(order, starts[:, None], out=order)  # flat indices (take_along_axis wraps this)
            cumulative = np.add.accumulate(p.reshape(-1)[order], axis=1)
            n = np.minimum(np.add.reduce(cumulative < settings.top_p, axis=1), nkept - 1)  # the nucleus' last
            t = u * cumulative.reshape(-1)[starts + n]
            at = order.reshape(-1)[starts + np.minimum(np.add.reduce(cumulative <= t[:, None], axis=1), n)]
            at -= starts
        else:
            cumulative = np.add.accumulate(p, axis=1)
            last = nkept - 1
            t = u * cumulative.reshape(-1)[starts + last]
            at = np.minimum(np.add.reduce(cumulative <= t[:, None], axis=1), last)
        drawn = here.nonzero()[0]
        choice[drawn] = tokens.reshape(-1)[(starts + at)[drawn]]
        return (~here).nonzero()[0].tolist()

    def _one_row_flagged(self, logits, settings, mask, u, rng) -> int:
        """A row whose top-k set is large (flags in self._flag): the whole-row route."""
        z, e, row, blocks, bsum, bcum = self._row
        self._masked_logits(z, logits, settings.temperature, mask)
        np.subtract(z, z.max(), out=e)
        np.exp(e, out=e)
        np.multiply(e, self._flag[: self.vocab_size], out=e)
        np.dot(blocks, self._ones, out=bsum)
        np.add.accumulate(bsum, out=bcum)
        return self._draw(row, bsum, bcum, u, settings.top_p, rng)

    def _top_k(self, logits: np.ndarray, k: int, mask) -> np.ndarray | None:
        """The indices (ascending) of the tokens whose logit reaches the k-th largest
        unmasked logit (ties stay, as in `sample`); None when k is beyond `FEW`, with the
        tokens' 0/1 flags left in self._flag for the whole-row route.

        The k-th largest value is found without partitioning the whole row (27 us): the
        row is cut into strided groups, and the k-th largest group maximum is a value
        that at least k tokens reach; the k-th largest logit is therefore among the
        tokens at or above it (usually a few more than k), and only those are
        partitioned. Ranking raw logits ranks logits / T the same way (T > 0). With a
        mask the maxima are taken over every token and the bound lowered to the 4k-th
        group maximum; if fewer than k allowed tokens reach it (masked tokens crowd the
        top), the maxima are taken again over the allowed tokens only."""
        gmax = self._gmax
        small = k <= min(len(gmax), FEW)
        if small:
            self._group_maxima(logits)
            r = k if mask is None else min(4 * k, len(gmax))
            gmax.partition(-r)  # in place: the maxima are made afresh for every use
            above = np.greater_equal(logits, gmax[-r], out=self._above)
            if mask is not None:  # at or above the bound and allowed: a > b is a and not b
                np.greater(above, mask, out=above)
            candidates = above.nonzero()[0]  # (flatnonzero wraps this in a ravel)
            if len(candidates) >= k:  # always so without a mask
                values = logits[candidates]
                ranked = values.copy()
                ranked.partition(-k)
                return candidates[values >= ranked[-k]]
        x = logits
        if mask is not None:  # the allowed tokens only: masked ones at -inf (in the logits' own precision)
            x = self._scratch if logits.dtype == self._scratch.dtype else np.empty(self.vocab_size, logits.dtype)
            np.copyto(x, logits)
            np.putmask(x, mask, -np.inf)
        if small:
            self._group_maxima(x)
            gmax.partition(-k)
            candidates = np.flatnonzero(x >= gmax[-k])
            values = x[candidates]
            kth = np.partition(values, -k)[-k]
        else:
            kth = np.partition(x, -k)[-k]
        if kth == -np.inf:  # fewer than k tokens allowed: top-k keeps them all
            if mask is not None and mask.all():
                raise ValueError(_NOTHING_LEFT)
            kth = -np.finfo(np.float64).max
        if small:
            return candidates[values >= kth]
        if k <= FEW:  # a few hundred kept: drawn among them, as `sample` draws (the very same tokens)
            return np.flatnonzero(x >= kth)
        np.greater_equal(x, kth, out=self._flag[: self.vocab_size])
        return None

    def _group_maxima(self, x: np.ndarray) -> None:
        """self._gmax = the maximum of each strided group of x, then x's leftover tokens
        (groups of one)."""
        G, q = self.groups, self.group_size
        np.maximum.reduce(x[: q * G].reshape(q, G), axis=0, out=self._gmax_head)
        if q * G < len(x):
            self._gmax[G:] = x[q * G :]

    def _draw_among(self, logits: np.ndarray, kept: np.ndarray, settings: SamplingSettings, u: float,
                    masked: bool = False) -> int:
        """One token among the few `kept` (ascending indices) with uniform u, the way
        `sample` draws: index order for top-p 1.0, else the nucleus sorted likeliest
        first (ties in index order)."""
        x = logits[kept]
        # the largest before the division: x / T (T > 0) has its largest at the same token,
        # and top / T is the very float64 `sample` subtracts (one division, the same operands)
        top = float(np.maximum.reduce(x)) if len(x) else -np.inf  # none kept: every candidate was -inf
        if top == -np.inf:  # what the mask allows (or all there is) is -inf
            raise ValueError(_ONLY_INF_LEFT if masked else _ALL_INF)
        if settings.temperature != 1.0:
            z = np.divide(x, settings.temperature, dtype=np.float64)  # in float64, as `sample` divides
            top /= settings.temperature
        else:
            z = x.astype(np.float64)
        np.subtract(z, top, out=z)
        p = np.exp(z, out=z)
        p /= np.add.reduce(p)  # normalised as `sample` normalises, so a cut at exactly top_p falls the same way
        if settings.top_p < 1.0:
            order = np.negative(p).argsort(kind="stable")  # by p as `sample` sorts (exp may merge near z), ties by index
            cumulative = np.add.accumulate(p[order])
            n = min(int(cumulative.searchsorted(settings.top_p)) + 1, len(p))
            # u * cumulative[n - 1] <= cumulative[n - 1]: the whole array gives the prefix's answer,
            # up to the min below
            i = int(cumulative.searchsorted(u * cumulative[n - 1], "right"))
            return int(kept[order[min(i, n - 1)]])
        cumulative = np.add.accumulate(p)
        i = min(int(np.count_nonzero(cumulative <= u * cumulative[-1])), len(p) - 1)
        return int(kept[i])

    def _draw(self, row: np.ndarray, bsum: np.ndarray, bcum: np.ndarray, u: float, top_p: float,
              rng: np.random.Generator) -> int:
        """One token from a row of probabilities (zero-padded to whole blocks): inverse
        CDF with the uniform u; top-p by rejection, see the class doc."""
        total = bcum[-1]
        threshold = top_p * total
        # a token holding more than 1 - top_p of the mass is in the nucleus whatever is
        # ahead of it (at most total - e_i < top_p * total): no test needed (the margin
        # covers rounding). On a trained model's peaked rows most draws are such tokens.
        sure = (1.0 - top_p) * total * (1.0 + 1e-9)
        for _ in range(NUCLEUS_TRIES):
            t = u * total
            j = int(bcum.searchsorted(t, "right"))  # the block where the running mass passes t
            if j >= len(bcum):  # t reached the total through rounding: the last token with mass
                token = int(np.flatnonzero(row)[-1])
            else:
                if j:
                    t -= bcum[j - 1]
                bl = self.block
                block = row[j * bl : (j + 1) * bl]
                i = int(np.add.accumulate(block).searchsorted(t, "right"))  # never a zero-mass token: t >= 0
                if i >= bl:  # the block's own running sum came out a hair below its BLAS sum
                    i = int(np.flatnonzero(block)[-1])
                token = j * bl + i
            if top_p >= 1.0 or row[token] > sure or self._in_nucleus(row, token, threshold):
                return token
            u = rng.random()
        return _nucleus_draw(row[: self.vocab_size] / total, top_p, rng.random())  # the exact route, rarely

    def _in_nucleus(self, row: np.ndarray, token: int, threshold: float) -> bool:
        """Whether the mass of the tokens ahead of `token` (likelier, or equally likely
        with a lower index: `sample`'s stable sort order) is below threshold."""
        ei = row[token]
        flag = self._flag
        np.greater_equal(row, ei, out=flag)
        ahead = float(np.dot(row, flag)) - ei  # every other token at least as likely
        if ahead < threshold:
            return True
        ties = row[: self.vocab_size] == ei
        n_ties = int(np.count_nonzero(ties))
        if n_ties == 1:
            return False
        n_before = int(np.count_nonzero(ties[:token]))
        return ahead - ei * (n_ties - 1 - n_before) < threshold


def _padded(flat: np.ndarray, width: int, rows: int, values: np.ndarray, index: np.ndarray | None = None,
            bounds: np.ndarray | None = None):
    """Scatter the chosen entries of `rows` rows (`flat`: ascending indices into the
    rows laid end to end, each `width` long; `bounds`: where each row starts in flat,
    if known) into (rows, widest) arrays, left aligned: their values, padded with -inf,
    and their column (or index[flat]), padded with 0; plus each row's count."""
    if bounds is None:
        bounds = flat.searchsorted(np.arange(0, (rows + 1) * width, width))
    counts = bounds[1:] - bounds[:-1]
    widest = int(counts.max())
    row = flat // width
    at = row * widest + (np.arange(len(flat)) - bounds[row])
    out = np.full(rows * widest, -np.inf, dtype=values.dtype)
    out[at] = values[flat]
    where = np.zeros(rows * widest, dtype=np.intp)
    where[at] = flat - row * width if index is None else index[flat]
    return out.reshape(rows, widest), where.reshape(rows, widest), counts


_NOTHING_LEFT = "every token is forbidden by the mask"
_ALL_INF = "every logit is -inf: no token can be drawn"
_ONLY_INF_LEFT = "every token the mask allows has logit -inf: no token can be drawn"

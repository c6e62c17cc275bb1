"""The test a verdict comes from (DESIGN rule 16): an exact sign-flip permutation test over paired
differences, honest at 2 or 3 seeds, where a t-test's interval collapses to a point when every difference is
equal (accuracies move in whole test images). NumPy only.

Under the null hypothesis (no difference between the methods) each paired difference is as likely to have
either sign. The two-sided p-value is the share of the 2^n sign assignments whose |sum| is at least the
observed |sum|: enumerated exactly for n <= EXACT_MAX, else estimated from MC_DRAWS random assignments with a
fixed seed ((1 + hits) / (1 + draws), never 0). With n pairs the smallest two-sided p-value is 2^-(n-1), so a
decision at ALPHA needs at least :func:`seeds_needed` pairs (6 at 0.05). Several methods compared with one
reference at one level are one family: their p-values are Holm-adjusted (:func:`holm`), and a decision then
needs more pairs (7 for two or three comparisons, 8 for four or five).
"""

from __future__ import annotations

import math

import numpy as np

ALPHA = 0.05
EXACT_MAX = 16  # 2^16 sign assignments enumerated; beyond, Monte Carlo
MC_DRAWS = 100_000
MC_SEED = 0
EXACT = "exact sign-flip permutation test (two-sided)"
MONTE_CARLO = f"sign-flip permutation test (two-sided, {MC_DRAWS:,} random flips, seed {MC_SEED})"
INTERVAL = "95% t-interval"  # the size of the difference; the verdict comes from the sign-flip test


def min_p_value(n: int) -> float:
    """The smallest two-sided sign-flip p-value ``n`` nonzero differences can give: 2^-(n-1)."""
    return 1.0 if n < 1 else 2.0 ** -(n - 1)


def seeds_needed(alpha: float = ALPHA, family: int = 1) -> int:
    """The fewest pairs whose smallest two-sided p-value is <= ``alpha / family``: 1 + ceil(log2(family /
    alpha)). ``family``: the comparisons judged together (:func:`holm`): the first of them is held to
    alpha / family, so fewer pairs can never decide any of them."""
    return 1 + math.ceil(math.log2(max(family, 1) / alpha) - 1e-12)


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment of one family's p-values (every method compared with the same reference at
    one level): sorted ascending, p_(i) becomes max over j <= i of min(1, (k - j + 1) p_(j)), k the family's
    size. Rejecting where the adjusted p <= ALPHA keeps the chance of any false "wins" in the family at most
    ALPHA, whatever the dependence between the comparisons (they share the reference's seeds). NaN (no test)
    stays NaN and is not counted in k. A family of one is unchanged."""
    p = [float(v) for v in p_values]
    finite = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    k, out, running = len(finite), list(p), 0.0
    for rank, (value, i) in enumerate(finite):
        running = max(running, min(1.0, (k - rank) * value))
        out[i] = running
    return out


def _sums(diff: np.ndarray, signs: np.ndarray) -> np.ndarray:
    return np.abs(signs @ diff)


def _all_signs(n: int) -> np.ndarray:
    """Every assignment of +-1 to n values, one per row (2^n rows)."""
    bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
    return 1.0 - 2.0 * bits


def sign_flip_test(diff) -> tuple[float, str]:
    """(two-sided p-value, the test's name) for paired differences ``diff``; (NaN, name) when empty.

    Ties with the observed |sum| count as at least as extreme (a relative tolerance absorbs float rounding)."""
    d = np.asarray(diff, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, EXACT
    observed = abs(float(d.sum()))
    tol = 1e-9 * max(float(np.abs(d).sum()), 1e-300)
    if n <= EXACT_MAX:
        return float(np.mean(_sums(d, _all_signs(n)) >= observed - tol)), EXACT
    rng = np.random.default_rng(MC_SEED)
    hits = 0
    for start in range(0, MC_DRAWS, 10_000):
        signs = rng.choice((-1.0, 1.0), size=(min(10_000, MC_DRAWS - start), n))
        hits += int(np.sum(_sums(d, signs) >= observed - tol))
    return (1 + hits) / (1 + MC_DRAWS), MONTE_CARLO

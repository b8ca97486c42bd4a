"""An exact reference for percentile bootstrap intervals of a mean (tests of voting.py's and
diagnostics.py's intervals).

For n problems whose values are 0 or 1, k of them 1, the mean of n problems drawn with
replacement is Binomial(n, k/n) / n, so the percentile interval is that distribution's
quantiles, computed exactly here. R resamples estimate each quantile; the cases are chosen so
that the binomial CDF passes each tail at least 4 Monte Carlo standard deviations from a
step, where R resamples cannot land on a neighbouring value.
"""
import math

import numpy as np

RESAMPLES = 20_000
BINOMIAL_CASES = [(10, 5), (12, 4), (20, 7)]  # (n, k): clear of every step at 60, 85, 95%


def outcomes(n: int, k: int) -> list[float]:
    return [1.0] * k + [0.0] * (n - k)


def binomial_interval(n: int, k: int, level: float) -> tuple[float, float]:
    """The exact percentile bootstrap interval of the mean of k ones and n - k zeros."""
    cdf = np.cumsum([math.comb(n, i) * (k / n) ** i * (1 - k / n) ** (n - i) for i in range(n + 1)])
    tail = (1 - level) / 2
    margin = 4 * math.sqrt(tail * (1 - tail) / RESAMPLES)
    for q in (tail, 1 - tail):
        assert np.all(np.abs(cdf - q) > margin), f"n={n}, k={k}: too close to a step at {level}"
    return (np.searchsorted(cdf, tail) / n, np.searchsorted(cdf, 1 - tail) / n)

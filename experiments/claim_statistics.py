"""The statistics that judge the sweep's claims (experiments/README.md, "The verdict rule").

Every claim is a set of paired per-seed differences Δ (the claim's run minus the run it is
compared with, same seed, in mAP points). The rule, the same for every claim:

* a paired two-sided t-test of mean Δ = 0 at level alpha (t = mean / (sd / sqrt(n)),
  df = n - 1);
* an equivalence test (TOST, two one-sided t-tests) at a margin m fixed in sweeps.yaml:
  equivalent when both H0: mean <= -m and H0: mean >= +m are rejected at alpha;
* verdict: significant in the claimed direction -> "reproduces", significant against it ->
  "opposite", else equivalent -> "no difference", else "cannot tell".

A contrast measured under several settings (samplers, schedules) is also judged pooled with
the setting as a block, Δ_{s,k} = μ + b_s + e_{s,k}: the common-effect test uses the mean over
all n pairs with the within-setting sd (pooled over the k settings) and df = n - k.

Power: the seeds a paired two-sided t-test at alpha needs to detect an effect with the given
power at a given sd(Δ), from the noncentral t distribution (noncentrality effect / sd *
sqrt(n), df n - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

VERDICTS = ("reproduces", "opposite", "no difference", "cannot tell", "n/a")


@dataclass(frozen=True)
class TTest:
    """A t-test of mean Δ = 0 (two-sided) and the TOST equivalence test at +-margin."""

    mean: float
    sd: float  # the sd behind the standard error (sample sd, or the pooled within-setting sd)
    n: int
    df: int
    t: float
    p: float  # two-sided
    tost_p: float  # the larger of the two one-sided p values; nan without a margin
    equivalent: bool


def _t_and_tost(
    estimate: float, se: float, df: int, margin: float | None, alpha: float
) -> tuple[float, float, float, bool]:
    """t = estimate / se with its two-sided p (df degrees of freedom), the TOST p at +-margin
    (the larger of the two one-sided p values; nan without a margin) and whether it is below
    alpha. se = 0 (every value the same): t is infinite unless the estimate is 0."""
    if se == 0:
        t = 0.0 if estimate == 0 else float(np.copysign(np.inf, estimate))
        p = 1.0 if estimate == 0 else 0.0
        tost_p = np.nan if margin is None else (0.0 if abs(estimate) < margin else 1.0)
    else:
        t = estimate / se
        p = float(2 * stats.t.sf(abs(t), df))
        if margin is None:
            tost_p = np.nan
        else:
            p_above_lower = stats.t.sf((estimate + margin) / se, df)  # H0: estimate <= -margin
            p_below_upper = stats.t.cdf((estimate - margin) / se, df)  # H0: estimate >= +margin
            tost_p = float(max(p_above_lower, p_below_upper))
    equivalent = bool(margin is not None and tost_p < alpha)
    return float(t), float(p), float(tost_p), equivalent


def _test(mean: float, sd: float, n: int, df: int, margin: float | None, alpha: float) -> TTest:
    if n < 2 or df < 1:
        return TTest(mean, sd, n, df, np.nan, np.nan, np.nan, False)
    t, p, tost_p, equivalent = _t_and_tost(mean, sd / np.sqrt(n), df, margin, alpha)
    return TTest(float(mean), float(sd), n, df, t, p, tost_p, equivalent)


def paired_test(diffs: np.ndarray, margin: float | None = None, alpha: float = 0.05) -> TTest:
    """Paired two-sided t-test of the differences (df n - 1) and TOST at +-margin."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else np.nan
    return _test(float(d.mean()) if n else np.nan, sd, n, n - 1, margin, alpha)


def block_test(
    diffs_by_setting: list[np.ndarray], margin: float | None = None, alpha: float = 0.05
) -> TTest:
    """Common-effect test of the block model Δ_{s,k} = μ + b_s + e: t = mean over all n pairs
    / (sd_within / sqrt(n)), df = n - k, sd_within pooling the k settings' variances (a
    setting with one pair adds no within-setting degree of freedom)."""
    groups = [np.asarray(g, dtype=float) for g in diffs_by_setting]
    groups = [g[~np.isnan(g)] for g in groups]
    groups = [g for g in groups if len(g)]
    n, k = sum(len(g) for g in groups), len(groups)
    df = n - k
    if df < 1:
        mean = float(np.concatenate(groups).mean()) if n else np.nan
        return _test(mean, np.nan, n, df, margin, alpha)
    within = sum(((g - g.mean()) ** 2).sum() for g in groups) / df
    return _test(float(np.concatenate(groups).mean()), float(np.sqrt(within)), n, df, margin, alpha)


def verdict(test: TTest, direction: str, alpha: float = 0.05) -> str:
    """The verdict word of the rule (module docstring); direction is the claimed sign of Δ
    ("higher" | "lower")."""
    if direction not in ("higher", "lower"):
        raise ValueError(f"a claim's direction must be 'higher' or 'lower', got {direction!r}")
    if test.n < 2 or np.isnan(test.p):
        return "n/a"
    if test.p < alpha:
        return "reproduces" if (test.mean > 0) == (direction == "higher") else "opposite"
    return "no difference" if test.equivalent else "cannot tell"


def power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of a paired two-sided t-test at alpha with n pairs for a true mean `effect` at
    sd(Δ) `sd` (noncentral t, df n - 1)."""
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = abs(effect) / sd * np.sqrt(n)
    return float(
        stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)
    )


def seeds_for_power(
    effect: float, sd: float, target: float = 0.8, alpha: float = 0.05, max_seeds: int = 10_000
) -> int | None:
    """The fewest seed pairs (>= 2) whose paired two-sided t-test at alpha has at least
    `target` power for `effect` at sd(Δ) `sd`; None when sd or effect is missing or zero, or
    more than max_seeds would be needed."""
    if not (np.isfinite(effect) and np.isfinite(sd)) or effect == 0 or sd <= 0:
        return None
    for n in range(2, max_seeds + 1):
        if power(effect, sd, n, alpha) >= target:
            return n
    return None


@dataclass(frozen=True)
class SlopeTest:
    """The slope b of an ordinary least-squares line y = a + b x, its t-test of b = 0
    (two-sided, df = n - 2) and the TOST of b at +-margin."""

    slope: float
    intercept: float
    se: float  # standard error of the slope: s_residual / sqrt(sum (x - mean x)^2)
    n: int
    df: int
    t: float
    p: float
    tost_p: float
    equivalent: bool

    @property
    def mean(self) -> float:
        """The slope, under the name :func:`verdict` reads."""
        return self.slope


def slope_test(
    x: np.ndarray, y: np.ndarray, margin: float | None = None, alpha: float = 0.05
) -> SlopeTest:
    """Regression of y on x (e.g. the per-seed paired Δ on the multi-label rate m of its
    benchmark): the slope's t-test, t = b / se(b), df = n - 2, two-sided; equivalent when
    both one-sided tests of |b| >= margin are rejected at alpha. Pairs with a missing value
    are left out; fewer than 3 points or a single x value give nan."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = len(x)
    sxx = float(((x - x.mean()) ** 2).sum()) if n else 0.0
    if n < 3 or bool((x == x[0]).all()):  # (sxx of equal x is rounding noise, not 0)
        return SlopeTest(np.nan, np.nan, np.nan, n, n - 2, np.nan, np.nan, np.nan, False)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * x.mean())
    df = n - 2
    residual = y - intercept - slope * x
    se = float(np.sqrt((residual**2).sum() / df / sxx))
    t, p, tost_p, equivalent = _t_and_tost(slope, se, df, margin, alpha)
    return SlopeTest(slope, intercept, se, n, df, t, p, tost_p, equivalent)

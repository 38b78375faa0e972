"""The statistics themselves: small, exact routines over numpy arrays, checked against known values.

Every routine either returns its result or raises :class:`NotComputable` with a reason a researcher
can act on ("needs at least 2 runs"); callers turn that reason into a table row. Nothing here
returns a number it could not compute: a degenerate input is never papered over with 0, 1 or NaN.

Reliability is computed on a *documents x runs* matrix (documents are the subjects, runs the
interchangeable "raters"): Cronbach's alpha with Feldt's confidence interval, the intraclass
correlations of Shrout & Fleiss / McGraw & Wong, and Krippendorff's alpha (interval or nominal,
missing values allowed). Tests wrap scipy and add the effect sizes scipy leaves out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

__all__ = [
    "AlphaResult", "AnovaResult", "CorrelationResult", "EquivalenceResult", "IccResult",
    "NotComputable", "TTestResult", "anova", "cronbach_alpha", "correlation", "holm",
    "icc", "krippendorff_alpha", "tost", "t_test",
]  # fmt: skip


class NotComputable(ValueError):
    """The statistic is undefined for this input; the message says why (it becomes a table cell)."""


def _as_matrix(matrix: Any) -> np.ndarray:
    array = np.asarray(matrix, dtype=float)
    if array.ndim != 2:
        raise NotComputable("needs a documents x runs table")
    if np.isnan(array).any():
        raise NotComputable("the documents x runs table has missing values (use complete documents only)")
    return array


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[~np.isnan(array)]


# ---------------------------------------------------------------- reliability


@dataclass(frozen=True)
class AlphaResult:
    alpha: float
    ci_low: float
    ci_high: float
    n_subjects: int
    n_raters: int


def cronbach_alpha(matrix: Any, ci: float = 0.95) -> AlphaResult:
    """Cronbach's alpha of a subjects x raters matrix, with Feldt's (1965) F-based interval.

    alpha = k/(k-1) * (1 - sum of rater variances / variance of subject totals); it equals ICC(3,k).
    """
    x = _as_matrix(matrix)
    n, k = x.shape
    if k < 2:
        raise NotComputable(f"needs at least 2 runs per document, got {k}")
    if n < 2:
        raise NotComputable(f"needs at least 2 documents with every run valid, got {n}")
    total_var = x.sum(axis=1).var(ddof=1)
    if total_var == 0:
        raise NotComputable("the scores do not vary between documents (every run total is equal)")
    alpha = k / (k - 1) * (1 - x.var(axis=0, ddof=1).sum() / total_var)
    df1, df2 = n - 1, (n - 1) * (k - 1)
    tail = (1 - ci) / 2
    low = 1 - (1 - alpha) * sps.f.ppf(1 - tail, df1, df2)
    high = 1 - (1 - alpha) * sps.f.ppf(tail, df1, df2)
    return AlphaResult(float(alpha), float(low), float(high), n, k)


@dataclass(frozen=True)
class IccResult:
    """Intraclass correlations; ``*_k`` is the reliability of the mean of the k runs."""

    icc1: float
    icc1_ci: tuple[float, float]
    icc1_k: float
    icc1_k_ci: tuple[float, float]
    icc2: float
    icc2_ci: tuple[float, float]
    icc2_k: float
    icc3: float
    icc3_k: float
    n_subjects: int
    n_raters: int


def icc(matrix: Any, ci: float = 0.95) -> IccResult:
    """ICC(1), ICC(2), ICC(3) (single and average) from the two-way ANOVA of a subjects x raters matrix.

    Runs of an LLM are interchangeable draws, so ICC(1) (one-way random) is the model that fits
    them; ICC(2) (absolute agreement) is reported because it is what most readers expect.
    """
    x = _as_matrix(matrix)
    n, k = x.shape
    if k < 2:
        raise NotComputable(f"needs at least 2 runs per document, got {k}")
    if n < 2:
        raise NotComputable(f"needs at least 2 documents with every run valid, got {n}")
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_total = ((x - grand) ** 2).sum()
    ss_err = ss_total - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    msw = (ss_cols + ss_err) / (n * (k - 1))
    tiny = 1e-12 * max(msr, msc, 1e-300)  # rounding residue of a sum that is zero in exact arithmetic
    mse, msw = (0.0 if mse <= tiny else mse), (0.0 if msw <= tiny else msw)
    if msr == 0:
        raise NotComputable("the scores do not vary between documents")
    icc1 = (msr - msw) / (msr + (k - 1) * msw)
    icc1_k = (msr - msw) / msr
    icc2 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    icc2_k = (msr - mse) / (msr + (msc - mse) / n)
    icc3 = (msr - mse) / (msr + (k - 1) * mse)
    icc3_k = (msr - mse) / msr
    nan = float("nan")
    icc1_ci = icc1_k_ci = icc2_ci = (nan, nan)  # runs that agree exactly leave no error to build one on
    a = 1 - ci
    if msw > 0:  # ICC(1): Shrout & Fleiss (1979)
        f1 = msr / msw
        f1_low = f1 / sps.f.ppf(1 - a / 2, n - 1, n * (k - 1))
        f1_high = f1 * sps.f.ppf(1 - a / 2, n * (k - 1), n - 1)
        icc1_ci = ((f1_low - 1) / (f1_low + k - 1), (f1_high - 1) / (f1_high + k - 1))
        icc1_k_ci = (1 - 1 / f1_low, 1 - 1 / f1_high)
    if mse > 0:  # ICC(2): McGraw & Wong (1996), Satterthwaite degrees of freedom
        fj = msc / mse
        vn = (k - 1) * (n - 1) * (k * icc2 * fj + n * (1 + (k - 1) * icc2) - k * icc2) ** 2
        vd = (n - 1) * k**2 * icc2**2 * fj**2 + (n * (1 + (k - 1) * icc2) - k * icc2) ** 2
        v = vn / vd
        f_up = sps.f.ppf(1 - a / 2, n - 1, v)
        f_low = sps.f.ppf(1 - a / 2, v, n - 1)
        icc2_ci = (n * (msr - f_up * mse) / (f_up * (k * msc + (k * n - k - n) * mse) + n * msr),
                   n * (f_low * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f_low * msr))
    return IccResult(
        icc1=float(icc1), icc1_ci=(float(icc1_ci[0]), float(icc1_ci[1])), icc1_k=float(icc1_k),
        icc1_k_ci=(float(icc1_k_ci[0]), float(icc1_k_ci[1])), icc2=float(icc2),
        icc2_ci=(float(icc2_ci[0]), float(icc2_ci[1])), icc2_k=float(icc2_k), icc3=float(icc3),
        icc3_k=float(icc3_k), n_subjects=n, n_raters=k)


def krippendorff_alpha(units: Sequence[Sequence[Any]], level: str = "interval") -> float:
    """Krippendorff's alpha; ``units`` holds each unit's values (one per coder), None/NaN = missing.

    ``level`` is ``interval`` (squared difference) or ``nominal`` (0/1 disagreement). Units with
    fewer than two values are not pairable and are ignored, as the coefficient prescribes.
    """
    if level not in ("interval", "nominal"):
        raise ValueError(f"unknown level {level!r}; use 'interval' or 'nominal'")

    def present(value: Any) -> bool:
        return value is not None and not (isinstance(value, float) and math.isnan(value))

    pairable = [[v for v in unit if present(v)] for unit in units]
    pairable = [unit for unit in pairable if len(unit) >= 2]
    if not pairable:
        raise NotComputable("no document has two or more valid runs to compare")
    # The coincidence-matrix sums in closed form, linear in the number of values (the pairwise sum
    # over distinct values was quadratic: 20,000 distinct metric values made 2e8 pairs).
    if level == "interval":
        # sum over ordered pairs of (a - b)^2 = 2 m * sum of squared deviations from the mean
        everything = np.array([float(v) for unit in pairable for v in unit])
        if np.ptp(everything) == 0:
            raise NotComputable("every valid run has the same value, so agreement beyond chance is undefined")
        sizes = np.array([len(unit) for unit in pairable])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        deviations = everything - np.repeat(np.add.reduceat(everything, starts) / sizes, sizes)
        observed = float((2 * sizes * np.add.reduceat(deviations**2, starts) / (sizes - 1)).sum())
        n = float(len(everything))
        expected = 2 * n * float(((everything - everything.mean()) ** 2).sum())
    else:
        # ordered pairs that disagree = m^2 - sum of each value's count squared
        totals: Counter[Any] = Counter()
        observed = 0.0
        for unit in pairable:
            counts = Counter(unit)
            totals.update(counts)
            m = len(unit)
            observed += (m * m - sum(c * c for c in counts.values())) / (m - 1)
        n = float(sum(totals.values()))
        expected = n * n - float(sum(c * c for c in totals.values()))
        if expected == 0:
            raise NotComputable("every valid run has the same value, so agreement beyond chance is undefined")
    return float(1 - (n - 1) * observed / expected)


# ---------------------------------------------------------------- tests


@dataclass(frozen=True)
class TTestResult:
    t: float
    df: float
    p: float
    mean_a: float
    mean_b: float
    n_a: int
    n_b: int
    cohen_d: float
    hedges_g: float


def t_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
           equal_var: bool = False) -> TTestResult:
    """Independent-samples t-test (Welch's unless ``equal_var``), with Cohen's d and Hedges' g.

    d uses the pooled standard deviation whichever test is run, so it reads the same either way.
    """
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        raise NotComputable(f"each group needs at least 2 values, got {len(x)} and {len(y)}")
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    if vx == 0 and vy == 0:
        raise NotComputable("no variance within either group, so t is undefined")
    result = sps.ttest_ind(x, y, equal_var=equal_var)
    nx, ny = len(x), len(y)
    if equal_var:
        df = float(nx + ny - 2)
    else:
        df = float((vx / nx + vy / ny) ** 2 / ((vx / nx) ** 2 / (nx - 1) + (vy / ny) ** 2 / (ny - 1)))
    pooled = math.sqrt(((nx - 1) * vx + (ny - 1) * vy) / (nx + ny - 2))
    d = (x.mean() - y.mean()) / pooled
    g = d * (1 - 3 / (4 * (nx + ny) - 9))
    return TTestResult(float(result.statistic), df, float(result.pvalue), float(x.mean()), float(y.mean()),
                       nx, ny, float(d), float(g))


@dataclass(frozen=True)
class EquivalenceResult:
    difference: float
    margin: float
    t_lower: float
    t_upper: float
    df: float
    p: float
    n_a: int
    n_b: int
    se: float


def tost(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, margin: float) -> EquivalenceResult:
    """Two one-sided Welch tests: is the difference of means inside (-margin, +margin)?

    ``p`` is the larger of the two one-sided p-values; p < alpha means "equivalent within margin".
    """
    if not margin > 0:
        raise NotComputable(f"the equivalence margin must be positive, got {margin}")
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        raise NotComputable(f"each group needs at least 2 values, got {len(x)} and {len(y)}")
    nx, ny = len(x), len(y)
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    se = math.sqrt(vx / nx + vy / ny)
    if se == 0:
        raise NotComputable("no variance within either group, so the equivalence test is undefined")
    df = (vx / nx + vy / ny) ** 2 / ((vx / nx) ** 2 / (nx - 1) + (vy / ny) ** 2 / (ny - 1))
    diff = float(x.mean() - y.mean())
    t_lower = (diff + margin) / se
    t_upper = (diff - margin) / se
    p = max(float(sps.t.sf(t_lower, df)), float(sps.t.cdf(t_upper, df)))
    return EquivalenceResult(diff, margin, float(t_lower), float(t_upper), float(df), p, nx, ny, float(se))


@dataclass(frozen=True)
class AnovaResult:
    f: float
    df_between: int
    df_within: int
    p: float
    eta_squared: float
    omega_squared: float
    n: int
    k: int


def anova(groups: Sequence[Sequence[float] | np.ndarray]) -> AnovaResult:
    """One-way ANOVA with eta squared and omega squared (the less biased of the two)."""
    arrays = [_clean(g) for g in groups]
    arrays = [g for g in arrays if len(g)]
    k = len(arrays)
    n = sum(len(g) for g in arrays)
    if k < 2:
        raise NotComputable(f"needs at least 2 groups with data, got {k}")
    if n - k < 1:
        raise NotComputable(f"needs more values than groups (got {n} values in {k} groups)")
    grand = np.concatenate(arrays).mean()
    ss_between = sum(len(g) * (g.mean() - grand) ** 2 for g in arrays)
    ss_within = sum(((g - g.mean()) ** 2).sum() for g in arrays)
    if ss_within == 0:
        raise NotComputable("no variance within any group, so F is undefined")
    df_b, df_w = k - 1, n - k
    ms_w = ss_within / df_w
    f = (ss_between / df_b) / ms_w
    p = float(sps.f.sf(f, df_b, df_w))
    ss_total = ss_between + ss_within
    return AnovaResult(float(f), df_b, df_w, p, float(ss_between / ss_total),
                       float((ss_between - df_b * ms_w) / (ss_total + ms_w)), n, k)


@dataclass(frozen=True)
class CorrelationResult:
    r: float
    p: float
    n: int


def correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                method: str = "pearson") -> CorrelationResult:
    """Pearson's r or Spearman's rho over the pairs where both values are present."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = len(a)
    if n < 3:
        raise NotComputable(f"needs at least 3 paired values, got {n}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise NotComputable("one of the two variables is constant, so the correlation is undefined")
    if method == "pearson":
        res = sps.pearsonr(a, b)
        return CorrelationResult(float(res.statistic), float(res.pvalue), n)
    if method == "spearman":
        res2 = sps.spearmanr(a, b)
        return CorrelationResult(float(res2.statistic), float(res2.pvalue), n)
    raise ValueError(f"unknown correlation method {method!r}")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given), capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted

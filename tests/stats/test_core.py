"""The statistics against published and hand-computed values, and their refusals on degenerate input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mva_dagster.stats import core
from mva_dagster.stats.core import NotComputable

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges. Their published ICCs:
# ICC(1,1)=.17 ICC(2,1)=.29 ICC(3,1)=.71 ICC(1,4)=.44 ICC(2,4)=.62 ICC(3,4)=.91.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
                         dtype=float)
# Krippendorff (2011) "Computing Krippendorff's alpha-reliability", the worked example: 4 coders x 12
# units with missing values (None). Published: nominal .743, interval .849.
KRIPPENDORFF_CODERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def units_of(coders: list[list[int | None]]) -> list[list[int | None]]:
    return [list(unit) for unit in zip(*coders, strict=True)]


def test_icc_matches_shrout_and_fleiss() -> None:
    r = core.icc(SHROUT_FLEISS)
    assert (round(r.icc1, 2), round(r.icc2, 2), round(r.icc3, 2)) == (0.17, 0.29, 0.71)
    assert (round(r.icc1_k, 2), round(r.icc2_k, 2), round(r.icc3_k, 2)) == (0.44, 0.62, 0.91)
    # Confidence intervals as pingouin 0.7 reports them for the same data.
    assert r.icc1_ci == pytest.approx((-0.133, 0.723), abs=1e-3)
    assert r.icc1_k_ci == pytest.approx((-0.884, 0.912), abs=1e-3)
    assert r.icc2_ci == pytest.approx((0.019, 0.761), abs=1e-3)


def test_cronbach_alpha_equals_icc3k_with_feldt_interval() -> None:
    a = core.cronbach_alpha(SHROUT_FLEISS)
    assert a.alpha == pytest.approx(core.icc(SHROUT_FLEISS).icc3_k, abs=1e-12)
    assert a.alpha == pytest.approx(0.9093, abs=1e-4)
    assert (a.ci_low, a.ci_high) == pytest.approx((0.6757, 0.9859), abs=1e-4)
    assert (a.n_subjects, a.n_raters) == (6, 4)


def test_cronbach_alpha_by_hand() -> None:
    # rater variances 1 and 7/3, total-score variance 19/3: alpha = 2 * (1 - (10/3) / (19/3)) = 18/19
    assert core.cronbach_alpha([[1, 2], [2, 3], [3, 5]]).alpha == pytest.approx(18 / 19, abs=1e-12)


def test_krippendorff_alpha_published_example() -> None:
    units = units_of(KRIPPENDORFF_CODERS)
    assert core.krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert core.krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)


def test_welch_t_test_with_effect_sizes() -> None:
    r = core.t_test([1, 2, 3, 4, 5.5], [2, 4, 4.5, 7, 9, 10])
    assert (r.t, r.df, r.p) == pytest.approx((-2.00366, 8.06401, 0.079778), abs=1e-5)
    assert (r.cohen_d, r.hedges_g) == pytest.approx((-1.151528, -1.052826), abs=1e-6)


def test_student_t_test_by_hand() -> None:
    # means 2 and 5, both variances 1: t = -3 / sqrt(2/3), df 4, d = -3
    r = core.t_test([1, 2, 3], [4, 5, 6], equal_var=True)
    assert r.t == pytest.approx(-3 / math.sqrt(2 / 3), abs=1e-12)
    assert r.df == 4 and r.cohen_d == pytest.approx(-3.0)


def test_anova_by_hand_and_against_known_values() -> None:
    two = core.anova([[1, 2, 3], [4, 5, 6]])
    assert two.f == pytest.approx(13.5, abs=1e-12)  # = t squared for two groups
    assert (two.df_between, two.df_within) == (1, 4)
    assert two.eta_squared == pytest.approx(13.5 / 17.5, abs=1e-12)  # SS_between 13.5, SS_within 4
    three = core.anova([[1, 2, 3], [2, 4, 5, 6], [7, 8, 9.5]])
    assert (three.f, three.p, three.eta_squared) == pytest.approx((14.76497, 0.0030801, 0.808376), abs=1e-5)


def test_correlations_by_hand() -> None:
    # sum dx*dy = 6, sum dx^2 = 10, sum dy^2 = 6: r = 6 / sqrt(60); ranks give 7 / sqrt(90)
    x, y = [1, 2, 3, 4, 5], [2, 4, 5, 4, 5]
    assert core.correlation(x, y, "pearson").r == pytest.approx(6 / math.sqrt(60), abs=1e-12)
    assert core.correlation(x, y, "spearman").r == pytest.approx(7 / math.sqrt(90), abs=1e-12)


def test_tost_is_two_one_sided_welch_tests() -> None:
    a, b = [1.0, 1.2, 0.9, 1.1], [1.05, 1.0, 1.15, 0.95]
    r = core.tost(a, b, margin=0.3)
    se = math.sqrt(np.var(a, ddof=1) / 4 + np.var(b, ddof=1) / 4)
    assert r.se == pytest.approx(se)
    assert r.t_lower == pytest.approx((r.difference + 0.3) / se)
    assert r.t_upper == pytest.approx((r.difference - 0.3) / se)
    assert r.p < 0.01  # clearly inside +/-0.3
    assert core.tost(a, b, margin=0.01).p > 0.4  # not shown equivalent within a tiny margin


def test_holm_adjustment() -> None:
    assert core.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert core.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


# ---------------------------------------------------------------- degenerate input: refused, with reasons


def test_constant_scores_are_not_computable() -> None:
    constant = np.full((5, 3), 0.5)
    for fn in (core.cronbach_alpha, core.icc):
        with pytest.raises(NotComputable, match="do not vary"):
            fn(constant)
    with pytest.raises(NotComputable, match="same value"):
        core.krippendorff_alpha(constant.tolist())
    with pytest.raises(NotComputable, match="no variance"):
        core.t_test([1, 1, 1], [1, 1])
    with pytest.raises(NotComputable, match="no variance"):
        core.anova([[1, 1], [2, 2]])
    with pytest.raises(NotComputable, match="constant"):
        core.correlation([1, 2, 3], [4, 4, 4])


def test_one_run_and_one_document_are_not_computable() -> None:
    with pytest.raises(NotComputable, match="at least 2 runs"):
        core.cronbach_alpha([[0.1], [0.5], [0.9]])
    with pytest.raises(NotComputable, match="at least 2 runs"):
        core.icc([[0.1], [0.5], [0.9]])
    with pytest.raises(NotComputable, match="two or more"):
        core.krippendorff_alpha([[0.1], [0.5]])
    with pytest.raises(NotComputable, match="at least 2 documents"):
        core.cronbach_alpha([[0.1, 0.2, 0.3]])


def test_one_group_and_tiny_groups_are_not_computable() -> None:
    with pytest.raises(NotComputable, match="at least 2 groups"):
        core.anova([[1, 2, 3]])
    with pytest.raises(NotComputable, match="at least 2 values"):
        core.t_test([1.0], [2.0, 3.0])
    with pytest.raises(NotComputable, match="at least 3 paired"):
        core.correlation([1, 2], [3, 4])
    with pytest.raises(NotComputable, match="margin"):
        core.tost([1, 2], [1, 2], margin=0)


def test_runs_that_agree_exactly() -> None:
    """Identical runs, different documents: alpha and Krippendorff's alpha are 1, ICC point is 1."""
    perfect = np.array([[0.1, 0.1, 0.1], [0.5, 0.5, 0.5], [0.9, 0.9, 0.9]])
    assert core.cronbach_alpha(perfect).alpha == pytest.approx(1.0)
    assert core.krippendorff_alpha(perfect.tolist()) == pytest.approx(1.0)
    r = core.icc(perfect)
    assert (r.icc1, r.icc2, r.icc3, r.icc1_k) == pytest.approx((1.0, 1.0, 1.0, 1.0))
    assert all(math.isnan(v) for v in (*r.icc1_ci, *r.icc1_k_ci))  # no interval without error variance

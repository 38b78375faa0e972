"""The number and quotation check catches what MVA experiment 3's synthesis made up."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd

from mva_dagster.stats.grounding import NumberIndex, check_text, find_numbers, find_quotes
from mva_dagster.steps.synthesis import render_html

TESTS = pd.DataFrame({
    "statistic_name": ["F", "Cronbach's alpha", "t (Welch)"],
    "statistic": [2.3251, 0.5702, -0.7311],
    "df": [7.0, None, 3.28],
    "df2": [40.0, None, None],
    "p_value": [0.0431, None, 0.5127],
    "effect_size_name": ["eta squared", None, "Cohen's d"],
    "effect_size": [0.2893, None, -0.5171],
    "detail": ["omega squared=0.156", "ICC(1,k)=0.571, Krippendorff's alpha=0.102", "c: n=4, mean=0.250"],
})
DOCUMENTS = {"speech_a": "We will not be\n  divided, ever.  Our “common” future is *bright* and shared.",
             "speech_b": "Enough is enough."}


def index() -> NumberIndex:
    idx = NumberIndex()
    idx.add_frame(TESTS, "stats_tests")
    idx.add_text("Documents: 8. Runs per model: 6. Criterion p < 0.05.", "prompt")
    return idx


def unmatched(text: str) -> list[str]:
    report = check_text(text, index(), DOCUMENTS, {"the experiment's hypothesis H1": "Speeches will differ a lot."})
    return [n.text.strip() for n in report.unmatched_numbers] + [q.text for q in report.unmatched_quotes]


def test_the_experiment_3_fabrications_are_flagged() -> None:
    text = ("Speech differentiation was massive, F = 31,558, p < 0.001, and reliability near perfect "
            "(α = 0.999).")
    assert unmatched(text) == ["31,558", "0.001", "0.999"]


def test_numbers_copied_from_the_tables_pass_at_any_sensible_precision() -> None:
    text = ("The ANOVA was significant, F(7, 40) = 2.33, p = 0.043, η² = 0.29 (omega squared = 0.156). "
            "Cronbach's alpha was 0.570 (α = 0.57); ICC(1,k) = 0.571. The groups did not differ, "
            "t(3.3) = -0.73, p = 0.513, d = -0.52; the left mean was 0.250. 8 documents, 6 runs, p < 0.05.")
    assert unmatched(text) == []


def test_a_number_must_match_its_own_kind() -> None:
    # 0.57 is an alpha in the tables, not a p-value; 2.33 is an F, not a t.
    assert unmatched("p = 0.57 and t = 2.33 and F = 2.33") == ["0.57", "2.33"]
    # Unlabelled numbers match any computed value at their precision; counts must be exact.
    assert unmatched("values of 0.57 and 2.3 across 7 and 9 documents") == ["9"]
    assert unmatched("29% of the variance; 57.0% consistency; 12% more") == ["12%"]


def test_list_markers_ids_and_version_numbers_are_not_statistics() -> None:
    text = "1. H1 and H3 hold for CFF v4.1.\n2) See ICC(2,1).\n## 3. Limits\n- 4. a nested item"
    assert [t.text for t in find_numbers(text)] == []


def test_quotations_are_looked_up_in_the_documents() -> None:
    text = ('One speaker said “We will not be divided” and, later, "our common future ... shared". '
            'Another said "they are stealing our jobs". The hypothesis, "Speeches will differ a lot", '
            'is quoted too.\n> Enough is enough for everyone\n"too short" is no quotation.')
    report = check_text(text, index(), DOCUMENTS, {"the experiment's hypothesis H1": "Speeches will differ a lot."})
    found = {q.text: q.source for q in report.quotes}
    assert found == {
        "We will not be divided": "document speech_a",
        "our common future ... shared": "document speech_a",
        "they are stealing our jobs": None,
        "Speeches will differ a lot": "the experiment's hypothesis H1",
        "Enough is enough for everyone": None,
    }
    assert [q.text for q in find_quotes('He said "a b c" and "a b"')] == ["a b c"]


def test_numbers_inside_checked_quotations_are_the_documents_not_statistics() -> None:
    idx = NumberIndex()
    report = check_text('"We lost 4,000 jobs in 1982" was said.', idx, {"d": "We lost 4,000 jobs in 1982"})
    assert report.numbers == [] and report.grounded


def test_annotation_marks_each_unmatched_item() -> None:
    text = 'F = 31,558 and "they are stealing our jobs" and F = 2.33.'
    report = check_text(text, index(), DOCUMENTS)
    assert report.annotate(text) == ('F = 31,558 **[!N1]** and "they are stealing our jobs" **[!Q1]** and '
                                     "F = 2.33.")
    assert report.summary() == {"numbers_checked": 2, "numbers_unmatched": 1, "quotes_checked": 1,
                                "quotes_unmatched": 1, "grounded": False}
    assert index().match(find_numbers("F = 31,558")[0])[1] == "2.325 (stats_tests.statistic)"


def test_html_is_self_contained_and_does_not_pass_raw_html(tmp_path: Path) -> None:
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
    (tmp_path / "plot_x.png").write_bytes(png)
    page = render_html("# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![fig](plot_x.png)\n\n<script>alert(1)</script>\n",
                       tmp_path, "T & t")
    assert "<table>" in page and "<title>T &amp; t</title>" in page
    assert 'src="data:image/png;base64,' in page and "plot_x.png" not in page.split("alt=")[0]
    assert "<script>" not in page

"""The real Discernus specs and corpora at ../shared load as documented (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mva_dagster.errors import SpecError
from mva_dagster.specs import load_corpus, load_experiment, load_framework

pytestmark = pytest.mark.shared

CFF_INDICES = ["descriptive_cohesion_index", "motivational_cohesion_index", "full_cohesion_index"]


def test_cff_v41_flat_contract_and_copy_paste_bug(shared: Path) -> None:
    fw = load_framework(shared / "data/frameworks/cff/cff_v4.1.md")
    assert (fw.name, fw.version, fw.spec_version) == ("cff_v4_1", "v4.1", "4")
    assert list(fw.calculation_spec) == CFF_INDICES
    assert len(fw.output_contract.numeric_fields()) == 21 and fw.known_inputs() is not None
    assert fw.calculation_plan().duplicates() == [("motivational_cohesion_index", "full_cohesion_index")]
    assert fw.warnings == [
        "calculation_spec.full_cohesion_index: same formula as motivational_cohesion_index "
        "(after normalisation) - probably a copy-paste mistake"
    ]


def test_cff_v42_nested_contract(shared: Path) -> None:
    fw = load_framework(shared / "data/frameworks/cff/cff_v4.2.md")
    assert set(fw.analysis_variants) == {"default", "descriptive_only"}
    assert list(fw.calculation_spec) == CFF_INDICES and fw.calculation_plan().duplicates() == []
    assert fw.known_inputs() is None
    assert len(fw.warnings) == 1 and "scores" in fw.warnings[0] and "cannot be checked" in fw.warnings[0]


def test_cff_v43_prose_only(shared: Path) -> None:
    fw = load_framework(shared / "data/frameworks/cff/cff_v4.3.md")
    assert fw.calculation_spec == {}
    assert set(fw.calculation_notes) == {
        "salience_weighting_explanation",
        *CFF_INDICES,
        "salience_normalization_note",
    }
    assert len(fw.warnings) == len(fw.calculation_notes)
    assert fw.calculation_notes["descriptive_cohesion_index"].startswith("SALIENCE-WEIGHTED:")


def test_ecf_framework(shared: Path) -> None:
    fw = load_framework(shared / "data/ecf/ecf_v1.0.md")
    assert fw.name == "ecf_v1_0_refined"
    plan = fw.calculation_plan()
    assert plan.order[-1] == "emotional_balance_score"  # a metric built from other metrics
    row = {"hope_score": 0.8, "fear_score": 0.2, "amity_score": 0.6, "enmity_score": 0.1}
    row |= {"compersion_score": 0.5, "envy_score": 0.5}
    values = plan.evaluate(row)
    assert values["emotional_balance_score"] == pytest.approx((0.6 + 0.5 + 0.0) / 3)


def test_nano_framework_v10(shared: Path) -> None:
    fw = load_framework(shared / "data/nano_sentiment/framework.md")
    assert (fw.spec_version, fw.name, fw.version) == ("10", "sentiment_binary_v1", "1.0.0")
    assert [d["name"] for d in fw.dimensions] == ["positive_sentiment", "negative_sentiment"]
    positive = fw.output_contract.schema_["dimensional_scores"]["properties"]["positive_sentiment"]
    assert positive["properties"]["raw_score"] == {"type": "number", "minimum": 0.0, "maximum": 1.0}
    assert fw.calculation_spec == {} and fw.warnings == []


def test_experiment_3_snapshot(shared: Path) -> None:
    exp = load_experiment(shared / "reference/discernus/mva/experiment_3/experiment_snapshot.md")
    assert exp.name == "experiment_3" and exp.spec_version == "2"
    assert exp.models == ["vertex_ai/gemini-2.5-pro"] and exp.runs_per_model == 6
    assert set(exp.hypotheses) == {"H1", "H2", "H3"} and len(exp.statistical_plan) == 2
    assert exp.corpus is None
    fw = load_framework(exp.framework_file)
    assert fw.name == "cff_v4_1" and fw.variant(exp.analysis_variant)


def test_ecf_experiment_points_at_a_framework_that_moved(shared: Path) -> None:
    path = shared / "data/ecf/experiment.md"
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    assert err.value.field == "framework_file" and "ecf_v1.0_refined.md" in str(err.value)
    exp = load_experiment(
        path, corpus_override=shared / "data/ecf/corpus", framework_override=shared / "data/ecf/ecf_v1.0.md"
    )
    assert exp.name == "ecf_v1_reference_framework_validation"
    assert exp.models == ["vertex_ai/gemini-2.5-flash"] and exp.runs_per_model == 2
    assert set(exp.hypotheses) == {"H1", "H2", "H3", "hypothesis"}
    assert load_corpus(exp.corpus or path).kind == "manifest"


def test_nano_experiment_and_corpus(shared: Path) -> None:
    exp = load_experiment(shared / "data/nano_sentiment")
    assert exp.spec_version == "10" and exp.name == "nano_test_experiment" and exp.models == []
    assert exp.framework_file.name == "framework.md"
    assert exp.corpus is not None
    corpus = load_corpus(exp.corpus)
    assert corpus.ids == ["neg_test", "pos_test"]
    assert corpus.document("pos_test").metadata == {"type": "test", "sentiment": "positive"}


def test_mva_corpus_sha256s_verify(shared: Path) -> None:
    corpus = load_corpus(shared / "data/mva_corpus")
    assert corpus.kind == "corpus_md" and len(corpus.documents) == 8
    assert all(d.id.startswith("sanitized_speech_") for d in corpus.documents)
    assert corpus.ids == sorted(corpus.ids)
    for doc in corpus.documents:
        assert doc.n_words == doc.metadata["words"]  # the manifest's counts are whitespace word counts
        assert "sha256" not in doc.metadata and len(doc.sha256) == 64


def test_ecf_corpus_manifest(shared: Path) -> None:
    corpus = load_corpus(shared / "data/ecf/corpus")
    assert corpus.ids[0] == "conservative_dignity_1" and len(corpus.ids) == 8
    assert corpus.document("progressive_dignity_2").metadata["speaker"] == "John Lewis"
    assert "validation_categories" in corpus.metadata and corpus.warnings == []

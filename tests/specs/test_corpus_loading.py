"""load_corpus: the three layouts, ids, fingerprints, and every problem collected in one error."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from mva_dagster.errors import CorpusError
from mva_dagster.specs.corpus import is_valid_document_id, load_corpus


def tree(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(body, bytes):
            path.write_bytes(body)
        else:
            path.write_text(body, encoding="utf-8")
    return root


def problems_of(path: Path, **kwargs: int) -> str:
    with pytest.raises(CorpusError) as err:
        load_corpus(path, **kwargs)
    return str(err.value)


# ---------------------------------------------------------------- layouts


def test_manifest_yaml_fixture(fixtures: Path) -> None:
    corpus = load_corpus(fixtures / "civic_tone" / "corpus")
    assert corpus.kind == "manifest" and corpus.manifest_path is not None
    assert corpus.ids == ["council_minutes_march", "letter_parking", "newsletter_spring"]  # sorted by id
    doc = corpus.document("letter_parking")
    assert doc.filename == "letter_to_editor.txt"
    assert doc.metadata == {"venue": "newspaper", "month": "2024-05"}  # nested metadata flattened
    assert corpus.metadata["corpus_metadata"]["title"] == "Civic tone pilot texts"
    text = doc.text()
    assert doc.sha256 == hashlib.sha256(doc.path.read_bytes()).hexdigest()
    assert (doc.n_chars, doc.n_words) == (len(text), len(text.split()))


def test_corpus_md_fixture_verifies_sha256(fixtures: Path) -> None:
    corpus = load_corpus(fixtures / "letters_corpus")
    assert corpus.kind == "corpus_md" and corpus.ids == ["letter_one", "letter_two"]
    assert corpus.documents[0].metadata == {"tone": "friendly", "author_role": "coordinator"}
    assert corpus.metadata == {"speaker_mapping": []}
    assert load_corpus(fixtures / "letters_corpus" / "corpus.md").sha256 == corpus.sha256


def test_plain_directory_fixture(fixtures: Path) -> None:
    corpus = load_corpus(fixtures / "plain_corpus")
    assert corpus.kind == "directory" and corpus.ids == ["alpha", "beta"]  # README.md is never a document
    assert corpus.warnings == ["skipped (not a .txt/.md file in the corpus folder): notes.csv"]


def test_v10_yaml_corpus_md(fixtures: Path) -> None:
    corpus = load_corpus(fixtures / "v10_style" / "corpus" / "corpus.md")
    assert corpus.ids == ["memo_short"] and corpus.documents[0].metadata == {"kind": "memo"}


def test_fingerprint_depends_on_ids_and_contents_only(tmp_path: Path) -> None:
    a = tree(tmp_path / "a", {"one.txt": "first text", "two.txt": "second text"})
    b = tree(tmp_path / "b", {"two.txt": "second text", "one.txt": "first text", "README.md": "about"})
    assert load_corpus(a).sha256 == load_corpus(b).sha256
    (b / "two.txt").write_text("second text, edited", encoding="utf-8")
    assert load_corpus(a).sha256 != load_corpus(b).sha256


def test_text_refuses_a_changed_file(tmp_path: Path) -> None:
    root = tree(tmp_path / "c", {"one.txt": "original"})
    doc = load_corpus(root).documents[0]
    (root / "one.txt").write_text("changed", encoding="utf-8")
    with pytest.raises(CorpusError, match="changed since the corpus was loaded"):
        doc.text()


def test_unlisted_files_are_reported_not_analysed(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "c",
        {"a.txt": "alpha", "b.txt": "beta", "manifest.yaml": "documents:\n  - filename: a.txt\n"},
    )
    corpus = load_corpus(root)
    assert corpus.ids == ["a"] and "b.txt" in corpus.warnings[0]


def test_manifest_json_and_bare_list(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "c", {"x.txt": "text", "manifest.json": '[{"filename": "x.txt", "id": "doc-1", "k": 1}]'}
    )
    corpus = load_corpus(root)
    assert corpus.ids == ["doc-1"] and corpus.documents[0].metadata == {"k": 1}


@pytest.mark.parametrize("doc_id", ["a", "A.b_c-d", "0" * 128])
def test_valid_ids(doc_id: str) -> None:
    assert is_valid_document_id(doc_id)


@pytest.mark.parametrize("doc_id", ["", "_a", "a/b", "a..b", "a b", "é", "0" * 129, "../x"])
def test_invalid_ids(doc_id: str) -> None:
    assert not is_valid_document_id(doc_id)


# ---------------------------------------------------------------- problems


def test_duplicate_ids_name_both_files(tmp_path: Path) -> None:
    root = tree(tmp_path / "c", {"speech.txt": "one", "speech.md": "two"})
    message = problems_of(root)
    assert "duplicate document id 'speech': speech.md and speech.txt" in message


def test_dotdot_id_in_manifest(tmp_path: Path) -> None:
    manifest = "texts:\n  - id: ../x\n    filename: a.txt\n"
    root = tree(tmp_path / "c", {"a.txt": "alpha", "manifest.yaml": manifest})
    message = problems_of(root)
    assert "manifest.yaml entry 1 (a.txt): document id '../x' is not allowed" in message
    assert "fix the id in the manifest" in message


def test_id_with_slash(tmp_path: Path) -> None:
    manifest = "texts:\n  - id: speeches/one\n    filename: a.txt\n"
    root = tree(tmp_path / "c", {"a.txt": "alpha", "manifest.yaml": manifest})
    assert "document id 'speeches/one' is not allowed" in problems_of(root)


def test_stem_that_is_not_an_id_is_not_rewritten(tmp_path: Path) -> None:
    root = tree(tmp_path / "c", {"my speech.txt": "alpha"})
    message = problems_of(root)
    assert "my speech.txt: document id 'my speech' is not allowed" in message and "rename the file" in message


def test_filename_escaping_the_folder(tmp_path: Path) -> None:
    tree(tmp_path, {"outside.txt": "secret"})
    root = tree(tmp_path / "c", {"manifest.yaml": "texts:\n  - filename: ../outside.txt\n"})
    assert "must be a path inside the corpus folder" in problems_of(root)


def test_huge_document_has_a_hint(tmp_path: Path) -> None:
    root = tree(tmp_path / "c", {"big.txt": "word " * 300})
    message = problems_of(root, max_document_bytes=1000)
    assert "big.txt: 1,500 bytes is larger than max_document_bytes (1,000)" in message
    assert "split the document" in message


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "doc.txt: document is empty"),
        (b" \n\t \n", "doc.txt: document contains only whitespace"),
        (b"PK\x03\x04\x00\x00zip", "doc.txt: document looks binary (NUL byte at offset 4)"),
        (b"na\xefve caf\xe9", "doc.txt: document is not valid UTF-8 (byte 0xef at offset 2)"),
    ],
)
def test_unusable_documents(tmp_path: Path, body: bytes, fragment: str) -> None:
    root = tree(tmp_path / "c", {"doc.txt": body, "ok.txt": "fine"})
    assert fragment in problems_of(root)


def test_manifest_entry_with_missing_file(tmp_path: Path) -> None:
    root = tree(tmp_path / "c", {"manifest.yaml": "texts:\n  - id: gone\n    filename: gone.txt\n"})
    message = problems_of(root)
    assert "manifest.yaml entry 1 (gone.txt): file not found" in message


def test_missing_manifest_or_corpus(tmp_path: Path) -> None:
    assert "corpus not found" in problems_of(tmp_path / "nowhere")
    assert "corpus not found" in problems_of(tmp_path / "nowhere" / "manifest.yaml")


def test_sha256_mismatch(tmp_path: Path) -> None:
    appendix = '```json\n{"file_manifest": [{"name": "a.md", "sha256": "' + "0" * 64 + '"}]}\n```\n'
    root = tree(tmp_path / "c", {"a.md": "alpha", "corpus.md": "# C\n\n" + appendix})
    message = problems_of(root)
    assert "corpus.md entry 1 (a.md): sha256 mismatch: the manifest says 000" in message


def test_all_problems_are_listed_at_once(tmp_path: Path) -> None:
    manifest = (
        "texts:\n"
        "  - {id: ok, filename: ok.txt}\n"
        "  - {id: ../bad, filename: bad.txt}\n"
        "  - {id: missing, filename: missing.txt}\n"
        "  - {id: ok, filename: other.txt}\n"
        "  - {id: empty, filename: empty.txt}\n"
    )
    files: dict[str, str | bytes] = {
        "ok.txt": "x",
        "bad.txt": "y",
        "other.txt": "z",
        "empty.txt": b"",
        "manifest.yaml": manifest,
    }
    root = tree(tmp_path / "c", files)
    with pytest.raises(CorpusError) as err:
        load_corpus(root)
    message = str(err.value)
    assert message.count("\n  - ") == 4 and "4 problems in this corpus" in message
    assert err.value.file == str(root / "manifest.yaml")


def test_reserved_and_hidden_files(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "c", {"a.txt": "x", ".draft.txt": "hidden", "experiment.md": "---\n", "framework.md": "#"}
    )
    assert load_corpus(root).ids == ["a"]
    root2 = tree(tmp_path / "d", {"manifest.yaml": "texts:\n  - filename: corpus.md\n", "corpus.md": "# C\n"})
    assert "corpus.md is a spec/hidden file" in problems_of(root2)


def test_two_listings_are_ambiguous(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "c",
        {
            "a.txt": "x",
            "manifest.yaml": "texts:\n  - filename: a.txt\n",
            "corpus.md": '```json\n{"file_manifest": [{"name": "a.txt"}]}\n```\n',
        },
    )
    assert "both corpus.md and manifest.yaml list documents" in problems_of(root)


def test_empty_corpus_and_bad_manifest(tmp_path: Path) -> None:
    assert "no documents" in problems_of(tree(tmp_path / "e", {"README.md": "hi"}))
    bad = tree(tmp_path / "b", {"manifest.yaml": "texts: [a, b\n"})
    message = problems_of(bad)
    assert "manifest.yaml" in message and "invalid YAML at line" in message


def test_copying_a_corpus_keeps_its_fingerprint(fixtures: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(fixtures / "civic_tone" / "corpus", copy)
    assert load_corpus(copy).sha256 == load_corpus(fixtures / "civic_tone" / "corpus").sha256

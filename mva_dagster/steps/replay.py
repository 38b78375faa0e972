"""Replay a session from its archive alone: no provider, no proxy, and the same bytes.

A copy of the session (manifest, archive, logs, snapshots - never its extracted records or results)
is made in another folder, and extraction, scores, metrics, statistics, synthesis and report are
recomputed there by the very functions the assets call. No LLM gateway exists in a replay, so no
call can be sent: every answer, the synthesis included, comes from the archive. Then every CSV
table of the original ``results/`` is compared byte for byte with the replay's.

The original session is only read. Reproducibility is the point: a table that differs means the
code or a snapshot changed since the session ran, and the replay says which table.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mva_dagster.errors import ArchiveError, SessionError
from mva_dagster.sessions.layout import SessionLayout
from mva_dagster.steps import report as report_step
from mva_dagster.steps import tables
from mva_dagster.steps.context import SessionContext
from mva_dagster.steps.extraction import load_records, run_extraction
from mva_dagster.steps.statistics import run_statistics
from mva_dagster.steps.synthesis import SynthesisOutcome, run_synthesis

NOT_COPIED = ("extracted", "results")  # what a replay recomputes
COMPARED_TEXT = ("report.md", "synthesis.md")


@dataclass
class Comparison:
    name: str
    status: str  # identical | different | missing in replay | only in replay
    detail: str = ""


@dataclass
class ReplayResult:
    original: SessionLayout
    replay: SessionLayout
    tables: list[Comparison] = field(default_factory=list)
    documents: list[Comparison] = field(default_factory=list)
    synthesis: SynthesisOutcome | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Every CSV table of the original is byte-identical in the replay (and none is extra)."""
        return bool(self.tables) and all(c.status == "identical" for c in self.tables)


def _first_difference(a: bytes, b: bytes) -> str:
    lines_a, lines_b = a.decode("utf-8", "replace").splitlines(), b.decode("utf-8", "replace").splitlines()
    for i, (x, y) in enumerate(zip(lines_a, lines_b, strict=False), start=1):
        if x != y:
            return f"line {i}: {x[:120]!r} != {y[:120]!r}"
    return f"{len(lines_a)} lines vs {len(lines_b)} lines"


def compare(original: Path, replay: Path, pattern: str) -> list[Comparison]:
    names = sorted({p.name for p in original.glob(pattern)} | {p.name for p in replay.glob(pattern)})
    out = []
    for name in names:
        a, b = original / name, replay / name
        if not b.exists():
            out.append(Comparison(name, "missing in replay"))
        elif not a.exists():
            out.append(Comparison(name, "only in replay"))
        elif a.read_bytes() == b.read_bytes():
            out.append(Comparison(name, "identical"))
        else:
            out.append(Comparison(name, "different", _first_difference(a.read_bytes(), b.read_bytes())))
    return out


def copy_session(original: SessionLayout, out: Path) -> SessionLayout:
    """The session's inputs under ``out/<project>/experiments/<experiment>/sessions/<id>``."""
    experiment = original.experiment
    source_root = experiment.root
    target_root = out / experiment.project.name / "experiments" / experiment.name
    target_root.mkdir(parents=True)
    for name in ("experiment_snapshot.md", "framework_snapshot.md"):
        if (source_root / name).is_file():
            shutil.copy2(source_root / name, target_root / name)
    target = SessionLayout(target_root / "sessions" / original.session_id)
    shutil.copytree(original.root, target.root,
                    ignore=lambda folder, names: [n for n in names if Path(folder) == original.root
                                                  and n in NOT_COPIED])
    for path in (target.extracted, target.results):
        path.mkdir(parents=True, exist_ok=True)
    return target


def replay_session(original: SessionLayout, out: Path | None = None) -> ReplayResult:
    """Recompute the session in ``out`` (default: a new temporary folder) and compare its tables."""
    if not original.results.is_dir() or not any(original.results.glob("*.csv")):
        raise SessionError(f"{original.root} has no results/*.csv to compare a replay with",
                           hint="replay a session whose session job has run (mva run / mva resume)")
    if out is None:
        out = Path(tempfile.mkdtemp(prefix=f"mva_replay_{original.session_id}_"))
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        raise SessionError(f"{out} is not empty; a replay writes into a new or empty folder")
    if out == original.root.resolve() or original.root.resolve() in out.parents:
        raise SessionError("the replay folder must be outside the session it replays",
                           hint="pass --out with a folder elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    layout = copy_session(original, out)
    ctx = SessionContext.load(layout)
    result = ReplayResult(original=original, replay=layout)

    run_extraction(ctx, [d.id for d in ctx.manifest.documents])
    records = load_records(ctx)
    scores = tables.scores_frame(ctx, records)
    metrics = tables.metrics_frame(ctx, records)
    tables.write_table(ctx, "scores", scores)
    tables.write_table(ctx, "documents", tables.documents_frame(ctx))
    tables.write_table(ctx, "metrics", metrics)
    run_statistics(ctx)
    try:
        result.synthesis = run_synthesis(ctx, None)  # no gateway: the archive or nothing
        result.warnings += result.synthesis.warnings
    except ArchiveError as exc:
        result.warnings.append(f"synthesis not replayed: {exc.message}")
    report_step.write_report(ctx, records, scores, metrics)

    result.tables = compare(original.results, layout.results, "*.csv")
    result.documents = [c for c in compare(original.results, layout.results, "*.md") if c.name in COMPARED_TEXT]
    return result

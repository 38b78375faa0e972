"""Append-only logs: whole lines from many writers, torn tails set aside, rotation, group commit."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from mva_dagster.sessions.appendlog import (
    PlainLog,
    append_line,
    finish_rotations,
    read_jsonl,
    read_plain_log,
    rotated_files,
    torn_path,
)
from mva_dagster.sessions.chronolog import Chronolog, read_events, verify_chronolog
from mva_dagster.sessions.layout import SessionLayout

WRITER = """
import sys
from pathlib import Path
from mva_dagster.sessions.chronolog import Chronolog
log = Chronolog(Path(sys.argv[1]), project="P", session_id=sys.argv[2])
for i in range(int(sys.argv[3])):
    log.append("TICK", {"writer": sys.argv[2], "i": i})
"""


def test_concurrent_processes_write_whole_lines_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "PROJECT_CHRONOLOG_P.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{n}", "60"]) for n in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    read = read_jsonl(path)
    assert not read.bad and len(read.records) == 180
    report = verify_chronolog(path, None)
    assert not report.out_of_order and not report.duplicate_ids and not report.malformed


def test_torn_tail_is_set_aside_and_recorded(tmp_path: Path) -> None:
    layout = SessionLayout(tmp_path / "session_20260101_000000")
    layout.create_dirs()
    log = Chronolog(layout.chronolog, project="P", session_id=layout.session_id)
    log.append("FIRST", {"n": 1})
    with open(layout.chronolog, "ab") as handle:
        handle.write(b'{"timestamp": "2026-01-01T00:00:0')  # a crash mid-write
    events, bad = read_events(layout.chronolog)
    assert len(events) == 1 and len(bad) == 1  # the reader reports it, never raises

    log.append("SECOND", {"n": 2})
    read = read_jsonl(layout.chronolog)
    assert not read.bad  # the fragment did not glue itself to the next line
    assert [e["event"] for e in read.records] == ["FIRST", "SECOND", "TORN_LINE_SET_ASIDE"]
    assert read.set_aside == ['{"timestamp": "2026-01-01T00:00:0']
    assert json.loads(torn_path(layout.chronolog).read_text())["offset"] > 0
    # Every event is mirrored, readable, into the plain session log.
    lines, torn = read_plain_log(layout.run_log)
    PlainLog.for_path(layout.run_log).close()
    assert not torn and any("SECOND n=2" in line for line in lines)


def test_failures_log_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "failures.jsonl"
    append_line(path, b'{"a": 1}')
    with open(path, "ab") as handle:
        handle.write(b'{"a": ')
    assert append_line(path, b'{"a": 2}') is not None
    assert [r["a"] for r in read_jsonl(path).records] == [1, 2]


def test_plain_log_rotates_into_gzip_and_reads_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "session.log"
    log = PlainLog(path, interval=0.05, max_bytes=2000)
    durable: list[int] = []
    log.on_durable = lambda seq, _when: durable.append(seq)
    last = 0
    for i in range(200):
        last = log.write(f"line {i:03d} " + "x" * 40)
    assert log.wait_durable(last, timeout=30) is not None
    log.close()
    parts = rotated_files(path)
    assert len(parts) >= 3 and all(p.name.endswith(".gz") for p in parts)
    assert gzip.decompress(parts[0].read_bytes()).decode().splitlines()[0].endswith("line 000 " + "x" * 40)
    lines, torn = read_plain_log(path)
    assert not torn and [line.split()[2] for line in lines] == [f"{i:03d}" for i in range(200)]
    assert durable and max(durable) == last


def test_a_rotation_interrupted_by_a_crash_is_finished(tmp_path: Path) -> None:
    path = tmp_path / "session.log"
    leftover = tmp_path / "session.log.000001"  # renamed, not yet compressed, when the process died
    leftover.write_text("2026-01-01T00:00:00Z old line\n")
    finish_rotations(path)
    assert not leftover.exists() and rotated_files(path) == [tmp_path / "session.log.000001.gz"]
    log = PlainLog(path)
    log.wait_durable(log.write("new line"))
    log.close()
    lines, _ = read_plain_log(path)
    assert lines[0].endswith("old line") and lines[1].endswith("new line")


KILLED = """
import os, signal, sys
from pathlib import Path
from mva_dagster.sessions.appendlog import PlainLog
log = PlainLog(Path(sys.argv[1]), interval=10.0)   # no fsync before the kill: the kernel has the bytes
for i in range(50):
    log.write(f"event {i}")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_lines_outlive_a_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "session.log"
    result = subprocess.run([sys.executable, "-c", KILLED, str(path)], timeout=120)
    assert result.returncode == -9
    lines, torn = read_plain_log(path)
    assert len(lines) == 50 and not torn

"""`mva chronolog verify`: signatures, order, ids; the Discernus file checks out with its public key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mva_dagster.cli.main import main
from mva_dagster.errors import MvaError
from mva_dagster.sessions.chronolog import Chronolog, sign
from tests.conftest import shared_path

KEY = "a-secret-of-our-own-0123456789"


def _verify(path: Path, *args: str, key: str | None = KEY) -> tuple[int, str]:
    env = {"MVA_CHRONOLOG_KEY": key} if key else {"MVA_CHRONOLOG_KEY": ""}
    result = CliRunner().invoke(main, ["chronolog", "verify", str(path), *args], env=env)
    return result.exit_code, result.output


def test_discernus_file_verifies_with_default_dev_key_which_our_writer_refuses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = shared_path("reference", "discernus", "mva", "PROJECT_CHRONOLOG_MVA.jsonl")
    code, output = _verify(path, key="default_dev_key")
    assert code == 0, output
    assert "958 events, 958 signatures valid, 0 invalid, 0 unsigned" in output
    assert "publicly known default" in output and output.strip().endswith("OK")
    monkeypatch.setenv("MVA_CHRONOLOG_KEY", "default_dev_key")
    with pytest.raises(MvaError, match="publicly known default key"):
        Chronolog(tmp_path / "c.jsonl", project="P")


def test_our_signed_file_verifies_and_tampering_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVA_CHRONOLOG_KEY", KEY)
    path = tmp_path / "PROJECT_CHRONOLOG_P.jsonl"
    log = Chronolog(path, project="P", session_id="s")
    for n in range(3):
        log.append("STEP", {"n": n})
    assert _verify(path)[0] == 0

    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    first["data"]["n"] = 99  # an edit after the fact
    path.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    code, output = _verify(path)
    assert code == 1 and "invalid signature: event 1" in output

    path.write_text("\n".join([lines[1], lines[0], lines[2]]) + "\n")  # lines swapped
    code, output = _verify(path)
    assert code == 1 and "out of order" in output

    code, output = _verify(path, key="another-key-entirely")
    assert code == 1 and "3 invalid" in output


def test_unsigned_events_and_missing_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MVA_CHRONOLOG_KEY", raising=False)
    path = tmp_path / "c.jsonl"
    Chronolog(path, project="P").append("UNSIGNED")
    code, output = _verify(path)
    assert code == 1 and "1 unsigned" in output
    assert _verify(path, "--allow-unsigned")[0] == 0
    code, output = _verify(path, key=None)
    assert "no key" in output
    with pytest.raises(MvaError, match="without a key"):
        sign({"event": "X"}, b"")

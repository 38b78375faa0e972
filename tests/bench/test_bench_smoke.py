"""Each benchmark, at tiny sizes, on one shared simulated stack: they run and report every figure.

The benchmarks themselves (bench/README.md) are not part of the suite; these only prove that the
commands work. No timing is asserted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import common, overhead, scale, throughput

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bench_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A benchmark folder whose proxy and provider every smoke run below reuses."""
    home = common.BenchHome(tmp_path_factory.mktemp("bench"))
    with common.bench_environment(home, common.Caps()):
        common.start_stack()
    try:
        yield home.root
    finally:
        with common.bench_environment(home, common.Caps()):
            common.stop_stack()


def smoke_args(home: Path, *extra: str) -> list[str]:
    return ["--smoke", "--home", str(home), "--keep-stack", *extra]


def test_throughput_smoke(bench_home: Path) -> None:
    result = throughput.main(smoke_args(bench_home, "--json", str(bench_home / "throughput.json")))
    approaches = [row["approach"] for row in result["rows"]]
    assert any(a.startswith("mva session") for a in approaches)
    assert any("floor" in a for a in approaches) and any("sequential" in a for a in approaches)
    assert any("per partition" in a for a in approaches)
    for row in result["rows"]:
        assert row["docs"] > 0 and row["docs_per_s"] > 0 and row["pct_of_bound"] > 0
    assert result["extra"]["session"]["phases"]["per_document_job"] > 0
    assert "x sequential" in throughput.report(result)
    assert (bench_home / "throughput.json").exists()


def test_overhead_smoke(bench_home: Path) -> None:
    result = overhead.main(smoke_args(bench_home))
    assert len(result["rows"]) == 5
    for row in result["rows"]:
        assert row["docs"] == overhead.Sizes.smoke().docs and row["ours_ms"] > 0
    through_proxy = result["rows"][1]
    assert through_proxy["proxy_ms"] > 0  # the proxy's CPU is measured from /proc
    assert all(math.isfinite(v) for v in result["derived"].values())
    assert "event storage" in overhead.report(result)


def test_scale_smoke(bench_home: Path) -> None:
    result = scale.main(smoke_args(bench_home))
    sizes = scale.Sizes.smoke()
    assert result["small"]["docs"] == sizes.small and result["large"]["docs"] == sizes.large
    for run in (result["small"], result["large"]):
        assert run["register_partitions_s"] > 0 and run["session_s"] > 0 and run["peak_rss_mb"] > 0
    stats = result["graphql"]["partition_stats_result"]
    assert stats["numMaterialized"] == sizes.large  # the UI sees every partition of the large session
    assert result["graphql"]["partition_statuses"]["first_s"] > 0

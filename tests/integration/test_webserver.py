"""The Dagster UI's view of a finished simulated session, through dagster-webserver's GraphQL API.

What a researcher sees in the UI: the experiment's asset graph, which partitions of the session
are materialized, the human-readable score table on each document's partition and the session's
asset checks. The session is the one test_observe_session.py watched (run once per test process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mva_dagster.services import free_port
from mva_dagster.sessions.layout import SessionLayout
from tests.integration.test_observe_session import DOCS, watched_session

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finished(simulated_stack: object, tmp_path_factory: pytest.TempPathFactory) -> SessionLayout:
    """The session test_observe_session.py ran (with a provider version change), or run it now."""
    layout: SessionLayout = watched_session(simulated_stack, tmp_path_factory)["layout"]
    return layout


@pytest.fixture(scope="module")
def graphql(finished: SessionLayout) -> Iterator[Any]:
    port = free_port()
    log = finished.root.parent / "webserver.log"
    env = {**os.environ, "MVA_PROJECTS_DIR": str(finished.experiment.project.root.parent)}
    executable = Path(sys.executable).with_name("dagster-webserver")
    with open(log, "wb") as out:
        server = subprocess.Popen([str(executable), "-h", "127.0.0.1", "-p", str(port), "-m", "mva_dagster.definitions"],
                                  stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"dagster-webserver exited ({server.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver did not answer:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

        def query(text: str, **variables: Any) -> dict[str, Any]:
            response = httpx.post(url + "/graphql", json={"query": text, "variables": variables}, timeout=60)
            body = response.json()
            assert "errors" not in body, json.dumps(body)[:2000]
            return dict(body["data"])

        yield query
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the webserver and the code server it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_the_ui_shows_graph_partitions_scores_and_checks(finished: SessionLayout, graphql: Any) -> None:
    session = finished.session_id
    nodes = graphql("""query { assetNodes(group: {groupName: "OBS__watched", repositoryName: "__repository__",
                       repositoryLocationName: "mva_dagster.definitions"}) { assetKey { path } } }""")["assetNodes"]
    names = {tuple(n["assetKey"]["path"]) for n in nodes}
    for step in ("documents", "analysis", "extraction", "scores", "metrics", "report"):
        assert ("OBS", "watched", step) in names

    statuses = """query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) { ... on AssetNode {
        assetPartitionStatuses { __typename
          ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
          ... on MultiPartitionStatuses { primaryDimensionName ranges { primaryDimStartKey primaryDimEndKey
              secondaryDim { ... on DefaultPartitionStatuses { materializedPartitions } } } } } } } }"""
    scores = graphql(statuses, k={"path": ["OBS", "watched", "scores"]})["assetNodeOrError"]["assetPartitionStatuses"]
    assert session in scores["materializedPartitions"] and scores["failedPartitions"] == []
    per_doc = graphql(statuses, k={"path": ["OBS", "watched", "analysis"]})["assetNodeOrError"]["assetPartitionStatuses"]
    assert per_doc["__typename"] == "MultiPartitionStatuses" and per_doc["primaryDimensionName"] == "document"
    covered = [(r["primaryDimStartKey"], r["primaryDimEndKey"]) for r in per_doc["ranges"]
               if session in r["secondaryDim"]["materializedPartitions"]]
    assert covered == [(DOCS[0], DOCS[-1])]

    materialized = graphql("""query($k: AssetKeyInput!, $p: [String!]) { assetOrError(assetKey: $k) { ... on Asset {
        assetMaterializations(partitions: $p) { partition metadataEntries { label ... on MarkdownMetadataEntry { mdStr } } }
        } } }""", k={"path": ["OBS", "watched", "analysis"]}, p=[f"{DOCS[1]}|{session}"])["assetOrError"]
    markdown = next(e["mdStr"] for o in materialized["assetMaterializations"] for e in o["metadataEntries"]
                    if e["label"] == "scores")
    record = json.loads(next(finished.extracted.glob(f"{DOCS[1]}__*.json")).read_text())
    assert markdown.startswith(f"### {DOCS[1]}") and "| dimension | score | confidence | evidence |" in markdown
    for name, value in record["fields"].items():
        if name.endswith("_evidence") and value:
            assert f"| {name.removesuffix('_evidence')} | " in markdown and value[0] in markdown

    checks = graphql("""query($k: AssetKeyInput!) { coverage: assetCheckExecutions(assetKey: $k, checkName: "coverage",
        limit: 10) { status partition evaluation { description } }
        drift: assetCheckExecutions(assetKey: $k, checkName: "provider_versions", limit: 10) { status partition } }""",
                     k={"path": ["OBS", "watched", "scores"]})
    coverage = next(c for c in checks["coverage"] if c["partition"] == session)
    assert coverage["status"] == "SUCCEEDED" and coverage["evaluation"]["description"].startswith("6 of 6 calls")
    # The provider changed its model mid-session: the UI shows the check as failed (a warning).
    assert next(c for c in checks["drift"] if c["partition"] == session)["status"] == "FAILED"

"""The benchmark harness in smoke mode against the session's broker: every peer drains all N
events and the report has a row per peer. Speed is not asserted: this checks the harness works."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]


def smoke_peers() -> list[str]:
    """The meter (a, b), the ceiling (c) and naive faust (d) always; Quix Streams (e) when the
    `bench` extra is installed; Kafka Streams (f) with Maven and Java (a warm build takes ~3 s)."""
    peers = ["a", "b", "c", "d"]
    if importlib.util.find_spec("quixstreams") is not None:
        peers.append("e")
    if shutil.which("mvn") and shutil.which("java"):
        peers.append("f")
    return peers


def test_every_peer_drains_all_events_and_gets_a_row(kafka_bootstrap: str, tmp_path: Path) -> None:
    peers = smoke_peers()
    out, results = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"
    cmd = [
        sys.executable, "-m", "bench.run", "--smoke",
        "--only", ",".join(peers),
        "--out", str(out),
        "--json", str(results),
        "--workdir", str(tmp_path / "work"),
    ]  # fmt: skip
    done = subprocess.run(
        cmd,
        cwd=REPO,
        env={**os.environ, "METER_KAFKA_BOOTSTRAP": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=870,
        check=False,
    )
    print(done.stderr[-8000:])
    assert results.is_file(), f"no results (exit {done.returncode})"
    doc = json.loads(results.read_text())
    rows = {p["key"]: p for p in doc["peers"]}
    assert sorted(rows) == peers
    drained = {key: (p["drained"], p["error"]) for key, p in rows.items()}
    assert drained == dict.fromkeys(peers, (doc["events"], None))
    report = out.read_text()
    for key in peers:
        assert report.count(f"| ({key}) ") == 1, key
    assert done.returncode == 0

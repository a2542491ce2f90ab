"""`meter demo`, the README's main command, end to end on a small replay: worker, store and API
started, every alert printed, and the checks against the ground truth pass (topics, API, and the
year's usage statement, which then verifies)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meter.adapters.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_agrees_with_the_truth_through_the_topics_and_the_api(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env |= {"METER_KAFKA_BOOTSTRAP": kafka_bootstrap, "METER_STATE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "meter.cli", "demo", "--calls", "4000",
         "--web-port", str(free_port()), "--port", str(free_port())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    lines = output.splitlines()
    assert any(line.startswith("API at http://127.0.0.1:") for line in lines), output
    api = next(line for line in lines if line.startswith("API        2022 month by month"))
    assert api.endswith("as the truth says"), api
    statement = next(line for line in lines if line.startswith("statement  microsoft's 2022"))
    assert "as the truth says" in statement, statement
    verify = next(line for line in lines if "check it: meter report verify " in line)
    checked = subprocess.run(
        [sys.executable, "-m", "meter.cli", "report", "verify", verify.split()[-1]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(list(tmp_path.glob("demo/*/report/*.html"))) == 1
    assert "OK: meter matches the truth" in output
    assert result.stdout.splitlines()[-1] == "the meter agrees with the ground truth"
    # the demo's processes leave their logs in its state directory
    logs = {p.name for p in tmp_path.glob("demo/*/*.log")}
    assert logs == {"worker.log", "store.log", "api.log"}

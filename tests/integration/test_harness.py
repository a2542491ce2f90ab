"""The harness itself: a faust worker consumes what kafka-python produced on a real broker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.kafka import produce, read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HERE = Path(__file__).resolve().parent


def test_faust_agent_receives_exactly_what_was_produced(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    source = make_topic("echo-in", partitions=3)
    sink = make_topic("echo-out", partitions=1)
    sent = [f"record-{i}".encode() for i in range(200)]
    produce(kafka_bootstrap, source, sent, keys=[str(i % 7).encode() for i in range(200)])

    env = dict(
        os.environ,
        ECHO_GROUP=unique("echo"),
        ECHO_BOOTSTRAP=kafka_bootstrap,
        ECHO_IN=source,
        ECHO_OUT=sink,
        ECHO_PARTITIONS="3",
        ECHO_DATADIR=str(tmp_path / "faust"),
    )
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "faust_echo.py"), "worker", "-l", "warn"],
        env=env,
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        got = read_all(
            kafka_bootstrap,
            sink,
            expect=len(sent),
            timeout=90,
            settle=2.0,
            abort=lambda: worker.poll() is not None,
        )
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err.decode(errors="replace")[-2000:]
    assert sorted(r.value for r in got) == sorted(b"seen:" + v for v in sent)

"""`meter worker` subprocesses for end-to-end tests, and waiting for conditions."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.25,
    what: str = "condition",
    abort: Callable[[], bool] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout` s or
    as soon as `abort()` is true (e.g. a worker died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if abort is not None and abort():
            raise AssertionError(f"gave up waiting for {what}: aborted (a worker exited?)")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _names_port(text: str, port: int) -> bool:
    """Whether `text` names 127.0.0.1:`port` (and not a longer port that starts the same)."""
    return re.search(rf"127\.0\.0\.1:{port}(?!\d)", text) is not None


class WorkerProcess:
    """One `python -m meter.cli worker ...` subprocess, logging to a file."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        web_port: int,
        data_dir: Path,
        module: str = "meter.cli",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.args = args
        self.log_path = log_path
        self.web_port = web_port
        self.data_dir = data_dir
        self.expected_exit = False
        extra = env or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["METER_STATE_DIR"] = str(data_dir.parent / "state")
        env.update(extra)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def died(self) -> bool:
        """Exited without the test asking it to."""
        return not self.expected_exit and self.proc.poll() is not None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait, and assert a clean exit (status 0)."""
        self.expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker {self.pid} did not stop within {timeout:.0f}s of SIGTERM\n"
                + self.log_tail()
            ) from None
        finally:
            self._log.close()
        assert code == 0, f"worker {self.pid} exited with {code}\n{self.log_tail()}"
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to flush or commit anything."""
        self.expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def ensure_gone(self) -> None:
        """Finalizer: stop without asserting (SIGTERM, then SIGKILL after a while)."""
        self.expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log.close()

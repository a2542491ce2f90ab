"""What a benchmark peer reports: when it processed its first and its N-th event, the CPU time
of its process at both moments (/proc/<pid>/stat) and its peak RSS (VmHWM), as a JSON file."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int | str = "self") -> int:
    """utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def vmhwm_kb(pid: int | str = "self") -> int:
    """Peak resident set size of a process in KiB (VmHWM in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def rss_mib(pid: int | str = "self") -> float:
    """Resident set size of a process now, in MiB (VmRSS); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def size_mib(path: Path) -> float:
    """Bytes of the files under `path`, in MiB (0 when it does not exist)."""
    if not path.exists():
        return 0.0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Atomically: a reader polling for `path` never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value) + "\n")
    tmp.replace(path)


@dataclass
class Sample:
    """The raw measurements of one drain, in the peer's own units."""

    events: int
    t_first: float  # epoch seconds: the first event processed
    t_last: float  # epoch seconds: the events-th event processed
    cpu_first: int  # clock ticks of the process at t_first
    cpu_last: int
    vmhwm_kb: int

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Sample:
        return cls(
            events=int(doc["events"]),
            t_first=float(doc["t_first"]),
            t_last=float(doc["t_last"]),
            cpu_first=int(doc["cpu_first"]),
            cpu_last=int(doc["cpu_last"]),
            vmhwm_kb=int(doc["vmhwm_kb"]),
        )


class DrainClock:
    """Counts processed events inside a peer; times the first one and the `target`-th one and
    writes the `Sample` to `result` when the target is reached."""

    def __init__(self, target: int, result: Path, peer: str) -> None:
        self.target = target
        self.result = result
        self.peer = peer
        self.seen = 0
        self.t_first = 0.0
        self.cpu_first = 0
        self.done = False

    def start(self) -> None:
        """Marks the first event processed (idempotent)."""
        if not self.t_first:
            self.t_first = time.time()
            self.cpu_first = cpu_ticks()

    def add(self, n: int = 1) -> bool:
        """`n` more events processed; True (once) when the target is reached."""
        if not self.t_first:
            self.start()
        self.seen += n
        if self.done or self.seen < self.target:
            return False
        self.done = True
        t_last = time.time()
        write_json(
            self.result,
            {
                "peer": self.peer,
                "events": self.seen,
                "t_first": self.t_first,
                "t_last": t_last,
                "cpu_first": self.cpu_first,
                "cpu_last": cpu_ticks(),
                "vmhwm_kb": vmhwm_kb(),
            },
        )
        return True

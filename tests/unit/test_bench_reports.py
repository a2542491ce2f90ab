"""The on-demand benches' pure parts: the state-size measurement and the report's sections
(`bench/state_size.py`, `bench/sections.py`), so that they do not rot between runs."""

from __future__ import annotations

from pathlib import Path

from bench.sections import other_sections, write_section
from bench.state_size import measure


def test_state_size_measures_every_window_and_id_it_creates() -> None:
    figures = measure(orgs=20, ids=2_500)
    # Every app and organisation has more than one window (caps of several sizes).
    assert figures["active windows"] == figures["compacted windows"] > figures["apps"]
    assert figures["remembered ids"] == 2_500
    for name in (
        "store bytes per active window",
        "store bytes per compacted window",
        "store bytes per remembered id",
        "heap bytes per remembered id",
    ):
        assert 10 < figures[name] < 5_000, (name, figures[name])
    # Compaction drops the breakdowns.
    assert figures["store bytes per compacted window"] < figures["store bytes per active window"]


def test_a_bench_rewrites_its_own_section_and_keeps_the_others(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# results\n")
    write_section(report, "bench.api", "<!-- bench.api -->\nA1\n<!-- /bench.api -->")
    write_section(
        report, "bench.state_size", "<!-- bench.state_size -->\nS1\n<!-- /bench.state_size -->"
    )
    write_section(report, "bench.api", "<!-- bench.api -->\nA2\n<!-- /bench.api -->")
    text = report.read_text()
    assert "A1" not in text
    assert text.index("A2") < text.index("S1")
    assert other_sections(report) == (
        "<!-- bench.api -->\nA2\n<!-- /bench.api -->\n\n"
        "<!-- bench.state_size -->\nS1\n<!-- /bench.state_size -->"
    )

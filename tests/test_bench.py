"""`musicgen-bridge bench`: each row runs in its own process and reports real figures (tiny model here)."""

from __future__ import annotations

from bridge.bench import format_table, run_row


def test_bench_rows_on_a_tiny_checkpoint(tiny_mono):
    folder = tiny_mono[0]
    results = {row: run_row(row, folder, steps=30, threads=1, timeout=300) for row in ("hf-fp32", "ours-int8")}
    ours, theirs = results["ours-int8"], results["hf-fp32"]
    assert ours["steps"] == 30 and ours["steps_per_s"] > 0 and theirs["steps_per_s"] > 0
    assert 0 < ours["ttfa_s"] < 120 and ours["peak_rss_mb"] > ours["rss_base_mb"] > 0
    assert ours["lm_mb"] > 0
    table = format_table(results)
    assert "| ours-int8 |" in table and "| hf-fp32 |" in table and "real-time factor" in table

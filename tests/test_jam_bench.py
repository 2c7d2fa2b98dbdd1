"""`bench --jam` on the tiny model for a few seconds: the real server, the device's messages, real figures."""

from __future__ import annotations

import logging
import threading

import torch

from bridge.jam_bench import format_jam, run_jam_bench
from engine.devices import auto_dtype, dtype_name

AUTO = dtype_name(auto_dtype(torch.device("cpu"))[0])  # what --dtype auto picks on this CPU


def test_jam_bench_on_the_tiny_model(tiny_mono, caplog):
    caplog.set_level(logging.INFO, logger="bridge.jam")
    engines = lambda: {t for t in threading.enumerate() if t.name == "batch-engine"}  # noqa: E731
    before = engines()
    result = run_jam_bench(str(tiny_mono[0]), seconds=4.0, threads=1, prompt="warm keys")
    assert engines() <= before  # the server closed its batching engine when it stopped
    assert result["complete"] and result["chunks"] == 2 and result["audio_s"] == 4.0  # two 1-bar chunks at 120 bpm
    assert result["chunks_late"] == 0 and result["min_slack_s"] > 0
    assert result["realtime"] > 0 and result["steps_per_s"] > 0 and result["dtype"] == AUTO  # serve's default
    assert result["first_bar_s"] >= result["first_chunk_s"] > 0  # the first chunk came before its bar line
    assert "| tiny |" in format_jam(result, "tiny")
    assert "'warm keys, 120 bpm'" in caplog.text  # the jam's prompt, with the song's tempo

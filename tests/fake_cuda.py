"""torch.cuda's graph, stream and capture calls replaced by stand-ins, so that CUDA-graph logic runs on CPU."""

from __future__ import annotations

import contextlib

import torch


class FakeStream:
    def wait_stream(self, other) -> None:
        pass


def fake_cuda_graph_calls(monkeypatch, graph_class: type) -> None:
    """`graph_class` stands in for `torch.cuda.CUDAGraph` (its `replay` re-executes what was captured); capturing
    and streams do nothing, so a capture runs its function once, eagerly."""
    monkeypatch.setattr(torch.cuda, "CUDAGraph", graph_class)
    monkeypatch.setattr(torch.cuda, "graph", lambda g, **kw: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", FakeStream)

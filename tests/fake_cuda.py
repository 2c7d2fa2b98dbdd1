"""torch.cuda's graph, stream and capture calls replaced by stand-ins, so that CUDA-graph logic runs on CPU."""

from __future__ import annotations

import contextlib

import torch


class FakeStream:
    def wait_stream(self, other) -> None:
        pass


def fake_cuda_graph_calls(monkeypatch, graph_class: type) -> list[bool]:
    """`graph_class` stands in for `torch.cuda.CUDAGraph` (its `replay` re-executes what was captured); capturing
    and streams do nothing, so a capture runs its function once, eagerly. Returns a list that gets, per capture,
    whether it ran under `engine.lm.static_shapes` (where cuDNN's attention may plan once for the replays)."""
    from engine.lm import _STATIC_SHAPES

    static = []

    def graph(g, **kw):
        static.append(_STATIC_SHAPES.get())
        return contextlib.nullcontext()

    monkeypatch.setattr(torch.cuda, "CUDAGraph", graph_class)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", FakeStream)
    return static

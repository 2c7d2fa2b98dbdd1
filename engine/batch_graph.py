"""The batching engine's decode step on CUDA, captured as CUDA graphs.

A batched step feeds one column per row, each row at its own position (`input_pos` [B, 1]). Eagerly it attends
to the longest row's length, a shape that changes every step. Captured, it attends to the whole bound cache under
each row's own mask (`MusicGenLM.row_mask`), so its shapes are the row bucket's and the cache's alone: one graph
per bucket (2, 4, 8 ... rows, `engine.batch_engine`), one launch per round in place of a few hundred. Masked
positions weigh exactly zero, so a row's logits are those of the eager step up to the order of float additions.

A graph reads the buffers it was captured on. The batch cache replaces them when it grows for a longer request or
is released when idle, so the step keys each graph on the bound buffers' addresses and captures again when they
change. A capture that fails leaves the step eager, with one warning: the engine keeps serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.lm import MusicGenLM
from engine.steps import Step, capture_graph, decode_step, resolve_step_mode

log = logging.getLogger(__name__)


@dataclass
class _Captured:
    key: tuple
    graph: "torch.cuda.CUDAGraph"
    tokens: Tensor
    input_pos: Tensor
    logits: Tensor


class BatchGraphedStep:
    """A batch's decode step as CUDA graphs (see the module docstring)."""

    def __init__(self, lm: MusicGenLM):
        self.lm = lm
        self.graphs: dict[int, _Captured] = {}  # rows -> its graph
        self.eager = decode_step(lm, "eager")
        self.failed = False

    def _key(self, rows: int) -> tuple:
        """What a graph of `rows` rows read: every bound buffer's address, and the cache's and text's lengths."""
        tensors = []
        for kv_cache, cross in self.lm.attention_slots():
            tensors.append(kv_cache.kv)
            if cross is not None and cross.k is not None:
                tensors += [cross.k, cross.v] + ([cross.mask] if cross.mask is not None else [])
        return (rows, *(t.data_ptr() for t in tensors), *tensors[0].shape, *tensors[-1].shape)

    def _run(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        lm = self.lm
        return lm(lm.embed(tokens), input_pos, kv_len=lm.layers[0].attn.kv_cache.kv.shape[3])

    @torch.inference_mode()
    def __call__(self, tokens: Tensor, input_pos: Tensor, kv_len: int) -> Tensor:
        """tokens [B, K, 1], input_pos [B, 1] -> logits [B, K, 1, card] (float32; a graph's, until its next call)."""
        if self.failed:
            return self.eager(tokens, input_pos, kv_len)
        rows = tokens.shape[0]
        key = self._key(rows)
        captured = self.graphs.get(rows)
        if captured is None or captured.key != key:
            self.graphs.pop(rows, None)  # the old graph's memory goes before the new one is captured
            try:
                captured = self.graphs[rows] = self._capture(key, tokens, input_pos)
            except Exception as e:  # noqa: BLE001 - any capture failure: stay eager, keep serving
                log.warning("capturing the batched decode step as a CUDA graph failed (%s: %s); it runs eagerly",
                            type(e).__name__, e)
                self.failed, self.graphs = True, {}
                return self.eager(tokens, input_pos, kv_len)
        captured.tokens.copy_(tokens)
        captured.input_pos.copy_(input_pos)
        captured.graph.replay()
        return captured.logits

    def _capture(self, key: tuple, tokens: Tensor, input_pos: Tensor) -> _Captured:
        tokens, input_pos = tokens.clone(), input_pos.clone()
        # The warm-up runs write each row's keys and values at its own position, which the round's replay writes
        # again: harmless.
        graph, logits = capture_graph(lambda: self._run(tokens, input_pos))
        return _Captured(key, graph, tokens, input_pos, logits)


def batch_decode_step(lm: MusicGenLM, mode: str) -> Step:
    """The batching engine's step for `mode` (`engine.steps`' names): graphs per row bucket for "graph"."""
    if resolve_step_mode(mode, lm.device) != "graph":
        return decode_step(lm, mode)
    if "batch-graph" not in lm.compiled_steps:
        lm.compiled_steps["batch-graph"] = BatchGraphedStep(lm)
    return lm.compiled_steps["batch-graph"]

"""Generation's decode step (one column, T = 1) in its three forms, chosen by name with `decode_step`:

- "eager": `MusicGenLM.forward`, op by op.
- "traced" (CPU): `TracedStep`, the sliced step as one frozen TorchScript graph.
- "graph" (CUDA): `GraphedStep`, the static step captured as a CUDA graph.
- "auto": "graph" on CUDA, "traced" on CPU, "eager" elsewhere.

All three compute the same logits; the graphs only remove per-op launch and dispatch costs. A traced or captured
step is kept on its LM (`MusicGenLM.compiled_steps`), so it is paid once (by `engine.generate.warm_up`) and then
serves every generation, window and prompt.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from engine.lm import CROSS_STATE, MusicGenLM, static_shapes

log = logging.getLogger(__name__)

STEP_MODES = ("auto", "eager", "traced", "graph")

# A step: (tokens [B, K, 1], input_pos [1], kv_len) -> logits [B, K, 1, card] (float32).
Step = Callable[[Tensor, Tensor, int], Tensor]


def resolve_step_mode(mode: str, device: torch.device) -> str:
    if mode not in STEP_MODES:
        raise ValueError(f"unknown decode step mode {mode!r}; one of {', '.join(STEP_MODES)}")
    if mode == "auto":
        return {"cuda": "graph", "cpu": "traced"}.get(device.type, "eager")
    return mode


def traced_step(lm: MusicGenLM) -> "TracedStep":
    """This LM's TorchScript decode step for CPU (traced on first use, kept across generations)."""
    if "traced" not in lm.compiled_steps:
        lm.compiled_steps["traced"] = TracedStep(lm)
    return lm.compiled_steps["traced"]


def graphed_step(lm: MusicGenLM) -> "GraphedStep":
    """This LM's CUDA-graph decode step (captured on first use, kept across generations)."""
    if "graph" not in lm.compiled_steps:
        lm.compiled_steps["graph"] = GraphedStep(lm)
    return lm.compiled_steps["graph"]


def decode_step(lm: MusicGenLM, mode: str = "auto") -> Step:
    """The decode step for `mode` (see the module docstring), as one callable."""
    mode = resolve_step_mode(mode, lm.device)
    if mode == "graph":
        graph = graphed_step(lm)
        return lambda tokens, input_pos, kv_len: graph(tokens, input_pos)
    if mode == "traced":
        traced = traced_step(lm)
        return lambda tokens, input_pos, kv_len: traced(lm.positioned(lm.embed(tokens), input_pos), input_pos, kv_len)
    return lambda tokens, input_pos, kv_len: lm(lm.embed(tokens), input_pos, kv_len=kv_len)


class _StepGraph(nn.Module):
    """What `TracedStep` traces: the one-column sliced step with the per-generation tensors as inputs.

    The caches and the cross-attention keys/values are bound to the layers for the duration of the call, so the
    tracer sees them as inputs, not as constants: one trace serves every generation and prompt. The cache length
    to attend to arrives as the length of `lengths` (a view of a spare buffer), which the tracer keeps symbolic.
    """

    def __init__(self, lm: MusicGenLM):
        super().__init__()
        self.lm = lm

    def forward(self, h: Tensor, input_pos: Tensor, lengths: Tensor, kvs: list[Tensor], cross: list[Tensor] | None = None,
                cross_mask: Tensor | None = None, live: Tensor | None = None, std_rows: Tensor | None = None) -> Tensor:
        """`cross`: per layer the text keys and values (k, v); with `live`, the folded rows (p, u) instead; with
        `std_rows` too, both (k, v, p, u) (see CrossAttention)."""
        lm = self.lm
        names = CROSS_INPUTS[(live is not None) + (std_rows is not None)]
        per = len(names)
        saved = [(l.attn.kv_cache.kv, *((getattr(l.cross, n) for n in CROSS_STATE) if l.cross is not None else ())) for l in lm.layers]
        try:
            for i, layer in enumerate(lm.layers):
                layer.attn.kv_cache.kv = kvs[i]
                if layer.cross is not None:
                    layer.cross.__dict__.update(p=None, live=live, std_rows=std_rows, mask=cross_mask)
                    layer.cross.__dict__.update(zip(names, cross[per * i : per * (i + 1)]))
            # A batch of streams (input_pos [B, 1]): each row attends to its own length.
            mask = lm.row_mask(input_pos, lengths.shape[0]) if input_pos.dim() == 2 else None
            return lm.layers_and_heads(h, input_pos, mask, lengths.shape[0])
        finally:
            for layer, (kv, *c) in zip(lm.layers, saved):
                layer.attn.kv_cache.kv = kv
                if layer.cross is not None:
                    layer.cross.__dict__.update(zip(CROSS_STATE, c))


CROSS_INPUTS = (("k", "v"), ("p", "u"), ("k", "v", "p", "u"))  # per layer: projected, folded, both


class TracedStep:
    """One decode step (T = 1, sliced) as a frozen TorchScript graph: the CPU's way past per-op overhead.

    In eager mode a step is ~1,500 small tensor ops, each paying Python and dispatch costs; the graph runs the
    same ops without them (what that saves is measured in benchmarks/RESULTS.md). Traced once per batch size,
    activation dtype and KV cache dtype; the caches, the conditioning and the position are inputs, so
    generations, windows and prompts of any length reuse it. torch.jit is deprecated in torch 2.x: if tracing
    fails, the step runs eagerly (the "eager" step mode turns it off).
    """

    def __init__(self, lm: MusicGenLM):
        self.lm = lm
        self.graphs: dict[tuple, torch.jit.ScriptModule] = {}
        self.lengths = torch.empty(0)
        self.zero_mask = torch.empty(0)
        self.failed = False

    def _inputs(self, h: Tensor, input_pos: Tensor, kv_len: int) -> tuple:
        lm = self.lm
        if self.lengths.numel() < kv_len:
            self.lengths = torch.empty(max(kv_len, lm.max_len), dtype=torch.uint8)
        slots = lm.attention_slots()
        kvs = [kv_cache.kv for kv_cache, _ in slots]
        # A model without cross-attention (melody) has no such inputs: the tracer refuses empty lists (and Nones).
        if slots[0][1] is None:
            return (h, input_pos, self.lengths[:kv_len], kvs)
        first = slots[0][1]
        mask = first.mask  # a batch of streams' text key mask, shared by the layers
        if first.p is None:
            cross = [t for _, c in slots for t in (c.k, c.v)]
            return (h, input_pos, self.lengths[:kv_len], kvs, cross) + (() if mask is None else (mask,))
        # Folded (CrossAttention): a mask (zeros for one stream), the folded rows, and the rows attending as defined.
        if mask is None:
            mask = self._zero_mask(first.p.shape[0], first.p.shape[2])
        names = CROSS_INPUTS[1 + (first.std_rows is not None)]
        cross = [getattr(c, n) for _, c in slots for n in names]
        return (h, input_pos, self.lengths[:kv_len], kvs, cross, mask, first.live) + \
            (() if first.std_rows is None else (first.std_rows,))

    def _zero_mask(self, rows: int, keys: int) -> Tensor:
        if self.zero_mask.shape != (rows, 1, 1, keys):
            self.zero_mask = torch.zeros(rows, 1, 1, keys)
        return self.zero_mask

    @torch.inference_mode()
    def __call__(self, h: Tensor, input_pos: Tensor, kv_len: int) -> Tensor:
        """Positioned inputs [B, 1, D] (act_dtype) at `input_pos` [1], or [B, 1] for a batch of streams (one
        position per row, `kv_len` the longest row's length) -> logits [B, K, 1, card] (float32)."""
        args = self._inputs(h, input_pos, kv_len)
        key = (h.shape[0], h.dtype, args[3][0].dtype, input_pos.dim(), len(args))  # args[3]: the KV caches
        graph = self.graphs.get(key)
        if graph is None and not self.failed:
            graph = self._trace(args, key)
        if graph is None:
            return _StepGraph(self.lm)(*args)
        # The plain interpreter: the profiling executor's first runs are slow and its passes gain nothing here
        # (benchmarks/RESULTS.md).
        with torch.jit.optimized_execution(False):
            return graph(*args)

    def _trace(self, args: tuple, key: tuple):
        # Tracing runs the step once: it writes this step's keys and values at this step's position, as the
        # call itself will again, so the cache ends up the same.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = torch.jit.freeze(torch.jit.trace(_StepGraph(self.lm).eval(), args, check_trace=False))
        except Exception as e:  # noqa: BLE001 - any tracer failure means: run eagerly
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            log.warning("tracing the decode step failed (%s: %s); running it eagerly", type(e).__name__, first_line)
            self.failed = True
            return None
        self.graphs[key] = graph
        return graph


class GraphedStep:
    """One decode step (T = 1, static shapes) captured as a CUDA graph: a single replay per column.

    Inputs are copied into static buffers, the graph runs the embedding and the static-mode forward over the whole
    cache, and the logits come back in a static output buffer (valid until the next call). The graph is captured
    again whenever what it points at changes: a new KV cache (`setup_caches`), or conditioning of a new shape
    (same-shaped conditioning is written in place by `CrossAttention.set_condition`).
    """

    def __init__(self, lm: MusicGenLM):
        self.lm = lm
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None

    def _key(self) -> tuple:
        lm = self.lm
        cross = [l.cross.k.data_ptr() for l in lm.layers if l.cross is not None and l.cross.k is not None]
        return (lm.layers[0].attn.kv_cache.k.data_ptr(), lm.max_len, *cross)

    def _run(self) -> Tensor:
        return self.lm(self.lm.embed(self.tokens), self.input_pos, kv_len=None)

    @torch.inference_mode()
    def __call__(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        """tokens [B, K, 1] at position `input_pos` [1] -> logits [B, K, 1, card] (float32)."""
        if self.graph is None or self.key != self._key():
            self._capture(tokens, input_pos)
        self.tokens.copy_(tokens)
        self.input_pos.copy_(input_pos)
        self.graph.replay()
        return self.logits

    def _capture(self, tokens: Tensor, input_pos: Tensor) -> None:
        self.tokens, self.input_pos = tokens.clone(), input_pos.clone()
        # The warm-up runs write this step's own keys and values at this step's position: harmless.
        self.graph, self.logits = capture_graph(self._run)
        self.key = self._key()


def capture_graph(run: Callable[[], Tensor]) -> tuple["torch.cuda.CUDAGraph", Tensor]:
    """`run` (which must be harmless to run again) captured as a CUDA graph, and the output its replays write.

    Two warm-up runs on a side stream first (allocator and kernel selection), as torch.cuda.graphs asks. Both the
    warm-up and the capture run under `static_shapes`: one shape, so cuDNN's attention may plan in the warm-up and
    serve the replays. thread_local: other threads (the codec worker, a joining request's T5) use the GPU
    meanwhile, which the default mode ("global") would make fail."""
    with static_shapes():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = run()
    return graph, out

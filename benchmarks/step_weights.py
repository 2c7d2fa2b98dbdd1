"""How fast the step's matmul kernels stream one step's weights, against the read bandwidth in the same run.

Each kernel multiplies the guidance batch ([2, K] activations) by all 144 matrices of musicgen-small's decoder
(24 layers x fused qkv, attention out, cross-attention q and out, fc1, fc2: the real shapes, random weights) once
per pass, so no matrix is reused within a pass and every weight comes from memory, as in a step. The kernels:

- `ours-w8a8`: the w8a8 linear `--dtype auto` builds on this CPU (`engine.quantize.w8a8_linear`: the native
  kernel where it builds, rows rounded inside the op).
- `fbgemm-w8a8`: `engine.quantize.FbgemmW8A8Linear` (the per-row scaling in front, fbgemm's int8 linear, the
  output scale): w8a8's fallback, and what it ran on before the native kernel.
- `onednn-w8a8`: the same rounding with oneDNN's `qlinear_pointwise` as the kernel (what w8a8 ran on before
  fbgemm): each row rounded to uint8 on its own scale in front, the row's scale multiplied in after.
- `ours-int4`: the int4 linear `--dtype int4` builds on this CPU (`engine.quantize.int4_linear`: the native kernel,
  int4 weights in groups of 32 times int8 rows, where it builds).
- `torch-int4`: `engine.quantize.Int4Linear`, group 32: torch's weight-only int4 kernel, int4's fallback.
- `ort-8bit` / `ort-4bit`: onnxruntime's `MatMulNBits` (block 128, `accuracy_level=4`: activations rounded to int8
  per block inside the op), all 144 nodes in one session, so one call streams the whole step's weights and pays
  the Python-to-onnxruntime crossing once. Only with `pip install onnxruntime onnx`.
- `bandwidth`: a sum over 512 MB of fp32 (what `bench` reports as the machine's read bandwidth).
- `bandwidth-2mb`: the same sum over a buffer on 2 MB pages (engine/hugepages.py), as the native rows' weights are.

The native rows' weights lie in one buffer on 2 MB pages, as in the LM (`gather_weights`).

The rows run interleaved in every round, so a change in the host's load hits all of them alike; a round's figure
is the best of `--passes`. Every round is printed, then the median round per row with its weight bytes, GB/s, and
fraction of the bandwidth row's median.

    python benchmarks/step_weights.py [--threads 2] [--rounds 5] [--passes 5] [--rows ours-w8a8,ort-8bit,...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List, Optional, Union

import numpy as np
import torch

from engine.lm import LMConfig
from engine.hugepages import huge_empty
from engine.quantize import (FbgemmW8A8Linear, Int4Linear, _scripted, gather_weights, int4_linear, module_bytes,
                             quantize_rows, w8a8_linear)
from engine.threads import in_own_thread

ROWS = ("bandwidth", "bandwidth-2mb", "ours-w8a8", "fbgemm-w8a8", "onednn-w8a8", "ours-int4", "torch-int4", "ort-8bit",
        "ort-4bit")


def step_shapes(cfg: LMConfig = LMConfig()) -> list[tuple[int, int]]:
    """(out, in) of every linear a decode step multiplies by, in the step's order (output heads left out)."""
    D, F = cfg.dim, cfg.ffn_dim
    return [(3 * D, D), (D, D), (D, D), (D, D), (F, D), (D, F)] * cfg.n_layers


def torch_pass(layers: list[torch.nn.Module], inputs: dict[int, torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        for layer in layers:
            layer(inputs[layer.in_features])
    return run


class OneDNNW8A8(torch.nn.Module):
    """w8a8 on oneDNN's `qlinear_pointwise`: uint8 rows with zero point 128, per-row int8 weights."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scale = quantize_rows(weight)
        self.register_buffer("weight", torch.ops.onednn.qlinear_prepack(q, [2, self.in_features]))
        self.register_buffer("scale", scale / 127.0)
        self.register_buffer("zero", torch.zeros(self.out_features, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).float()
        top = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True).clamp_(min=1e-30)
        q = torch.round(torch.addcmul(torch.tensor(128.0), x, 127.0 / top)).to(torch.uint8)
        if torch.jit.is_tracing():  # the tracer cannot type the op's empty scalar list; a scripted call can
            y = _scripted(_onednn_matmul)(q, self.weight, self.scale, self.zero)
        else:
            y = _onednn_matmul(q, self.weight, self.scale, self.zero)
        return (y * top).view(*shape[:-1], self.out_features)


def _onednn_matmul(q: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    no_scalars: List[Optional[Union[int, float, complex]]] = []
    return torch.ops.onednn.qlinear_pointwise(q, 1.0, 128, w, scale, zero, None, 1.0, 0, torch.float32, "none",
                                              no_scalars, "")


def matmul_nbits(x: str, y: str, n: int, k: int, bits: int, block: int, rng: np.random.Generator) -> tuple[list, int]:
    """onnxruntime's `MatMulNBits` node y = x W^T for random [n, k] weights in `bits`-bit blocks of `block`
    (`accuracy_level=4`: activations rounded to int8 per block inside the op); returns ([node, weights, scales],
    weight bytes)."""
    from onnx import helper, numpy_helper

    blob = rng.integers(0, 256, (n, k // block, block * bits // 8), dtype=np.uint8)
    scale = (rng.random(n * (k // block), dtype=np.float32) + 0.5) * 1e-3
    node = helper.make_node("MatMulNBits", [x, y + "_w", y + "_s"], [y], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=4)
    return [node, numpy_helper.from_array(blob, y + "_w"), numpy_helper.from_array(scale, y + "_s")], blob.nbytes + scale.nbytes


def ort_session(graph, threads: int, spin: bool = True):
    """An onnxruntime CPU session over `graph` (opsets 17 and com.microsoft 1) on `threads` threads; `spin`: its
    threads spin between calls (onnxruntime's default)."""
    import onnxruntime as ort
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10  # what onnxruntime 1.31 reads
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_pass(shapes: list[tuple[int, int]], bits: int, block: int, threads: int) -> tuple[Callable[[], None], int]:
    """One onnxruntime session holding a MatMulNBits node per matrix; returns (one pass, weight bytes)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    nodes, inits, outputs, nbytes = [], [], [], 0
    for i, (n, k) in enumerate(shapes):
        (node, *weights), size = matmul_nbits(f"A{k}", f"Y{i}", n, k, bits, block, rng)
        nodes.append(node)
        inits += weights
        outputs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, [2, n]))
        nbytes += size
    widths = sorted({k for _, k in shapes})
    graph = helper.make_graph(nodes, "step_weights", [helper.make_tensor_value_info(f"A{k}", TensorProto.FLOAT, [2, k])
                                                      for k in widths], outputs, inits)
    session = ort_session(graph, threads)
    feed = {f"A{k}": rng.standard_normal((2, k), dtype=np.float32) for k in widths}
    return (lambda: session.run(None, feed)), nbytes


def build_rows(names: list[str], threads: int) -> dict[str, tuple[Callable[[], None], int]]:
    """Each row's pass and the bytes one pass reads."""
    shapes = step_shapes()
    inputs = {k: torch.randn(2, k) for k in {k for _, k in shapes}}
    rows: dict[str, tuple[Callable[[], None], int]] = {}
    for name in names:
        if name == "bandwidth":
            buf = torch.randn(512 * 2**20 // 4)
            rows[name] = (lambda buf=buf: buf.sum()), buf.numel() * 4
        elif name == "bandwidth-2mb":
            buf = huge_empty((512 * 2**20 // 4,), torch.float32).normal_()
            rows[name] = (lambda buf=buf: buf.sum()), buf.numel() * 4
        elif name in ("ours-w8a8", "fbgemm-w8a8", "onednn-w8a8", "ours-int4", "torch-int4"):
            g = torch.Generator().manual_seed(0)
            make = {"ours-w8a8": w8a8_linear, "fbgemm-w8a8": FbgemmW8A8Linear, "onednn-w8a8": OneDNNW8A8,
                    "ours-int4": int4_linear, "torch-int4": lambda w: Int4Linear(w, 32)}[name]
            layers = [make(torch.randn(n, k, generator=g) * 0.02) for n, k in shapes]
            gather_weights(torch.nn.ModuleList(layers))
            nbytes = sum(module_bytes(layer) for layer in layers)
            rows[name] = torch_pass(layers, inputs), nbytes
        elif name in ("ort-8bit", "ort-4bit"):
            try:
                rows[name] = ort_pass(shapes, 8 if name == "ort-8bit" else 4, 128, threads)
            except ImportError:
                print(f"{name}: onnxruntime or onnx is not installed; row left out")
        else:
            raise SystemExit(f"unknown row {name!r}; rows are {', '.join(ROWS)}")
    return rows


def best_of(run: Callable[[], None], passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best


def measure(names: list[str], threads: int, rounds: int, passes: int) -> None:
    rows = build_rows(names, threads)
    for run, _ in rows.values():  # first calls: oneDNN primitives, onnxruntime's prepacking
        run()
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(rounds):
        order = list(rows) if r % 2 == 0 else list(reversed(rows))
        for name in order:
            seconds[name].append(best_of(rows[name][0], passes))
        rates = ", ".join(f"{n} {rows[n][1] / seconds[n][-1] / 1e9:.1f} GB/s" for n in rows)
        print(f"round {r + 1}: {rates}", flush=True)
    limit = rows["bandwidth"][1] / statistics.median(seconds["bandwidth"]) if "bandwidth" in rows else None
    print(f"\n| row | ms per pass, every round | median ms | MB read | GB/s | of bandwidth |  ({threads} threads)")
    print("|---|---|---:|---:|---:|---:|")
    for name, (_, nbytes) in rows.items():
        med = statistics.median(seconds[name])
        share = f"{nbytes / med / limit:.0%}" if limit else "-"
        every = " / ".join(f"{s * 1000:.1f}" for s in seconds[name])
        print(f"| {name} | {every} | {med * 1000:.1f} | {nbytes / 1e6:.0f} | {nbytes / med / 1e9:.1f} | {share} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--passes", type=int, default=5, help="passes per row and round (the fastest counts)")
    p.add_argument("--rows", default=",".join(ROWS))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    # The passes run on a thread of their own, as the engine's steps do (engine/threads.py).
    in_own_thread(measure, a.rows.split(","), a.threads, a.rounds, a.passes)


if __name__ == "__main__":
    main()

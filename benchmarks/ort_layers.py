"""Would onnxruntime make the CPU step faster? The decode step with every linear, norm, GELU and the cross-attention
in onnxruntime (8-bit `MatMulNBits`, one session per layer), self-attention in torch (bf16 cache, SDPA), against
the traced w8a8 step (`--dtype auto` on CPU), musicgen-small's shape, random weights, guidance batch 2.

Each layer's session runs from the attention output of layer i to the fused qkv of layer i + 1 (wo, residual,
norm, cross-attention q, cross-attention over 24 condition positions, its out projection, residual, norm, fc1,
GELU, fc2, residual, the next norm, qkv): 6 of the step's 144 matmuls per call, 24 calls per step, with torch's
SDPA over the layer's bf16 cache between calls, as an onnxruntime step that keeps today's cache would run. The
onnxruntime weights are random 8-bit blocks (block 128, `accuracy_level=4`: activations rounded to int8 per
block inside the op), the fastest setting of `benchmarks/step_weights.py`; only the time is compared.

Rows run interleaved in every round at each context; a round's figure is the fastest of `--steps` steps (and
their median). `--spin 1` lets onnxruntime's threads spin between calls (its default), `--spin 0` parks them.
Only with `pip install onnxruntime onnx`.

    python benchmarks/ort_layers.py [--threads 2] [--spin 0] [--rounds 4] [--steps 8] [--contexts 100,1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.kv_context import build
from benchmarks.step_weights import matmul_nbits, ort_session
from engine.lm import LMConfig
from engine.steps import traced_step

BLOCK = 128
COND = 24  # condition positions the cross-attention reads (text tokens)
MAX_LEN = 1504  # a 30 s window's cache


def layer_session(cfg: LMConfig, batch: int, threads: int, spin: bool, rng: np.random.Generator):
    """One onnxruntime session from a layer's attention output to the next layer's qkv (see the module doc)."""
    from onnx import TensorProto, helper, numpy_helper

    D, H, hd = cfg.dim, cfg.n_heads, cfg.head_dim
    nodes, inits = [], []

    def linear(x: str, name: str, n: int, k: int) -> str:
        (node, *weights), _ = matmul_nbits(x, name, n, k, 8, BLOCK, rng)
        nodes.append(node)
        inits.extend(weights)
        return name

    def norm(x: str, name: str) -> str:
        inits.extend([numpy_helper.from_array(np.ones(D, np.float32), name + "_g"),
                      numpy_helper.from_array(np.zeros(D, np.float32), name + "_b")])
        nodes.append(helper.make_node("LayerNormalization", [x, name + "_g", name + "_b"], [name], axis=-1))
        return name

    def add(a: str, b: str, out: str) -> str:
        nodes.append(helper.make_node("Add", [a, b], [out]))
        return out

    x1 = add("x", linear("y", "wo", D, D), "x1")
    q = linear(norm(x1, "norm_cross"), "cross_q", D, D)
    inits.extend([numpy_helper.from_array(np.array([batch, H, 1, hd], np.int64), "heads"),
                  numpy_helper.from_array(np.array([batch, D], np.int64), "rows")])
    nodes.extend([helper.make_node("Reshape", [q, "heads"], ["q4"]),
                  helper.make_node("MatMul", ["q4", "cross_kt"], ["scores"]),
                  helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
                  helper.make_node("MatMul", ["weights", "cross_v"], ["cross4"]),
                  helper.make_node("Reshape", ["cross4", "rows"], ["cross"])])
    x2 = add(x1, linear("cross", "cross_o", D, D), "x2")
    hidden = linear(norm(x2, "norm_ffn"), "fc1", cfg.ffn_dim, D)
    nodes.append(helper.make_node("Gelu", [hidden], ["gelu"], domain="com.microsoft"))
    add(x2, linear("gelu", "fc2", D, cfg.ffn_dim), "x_out")
    linear(norm("x_out", "norm_next"), "qkv", 3 * D, D)
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(n, f, s) for n, s in
              (("y", [batch, D]), ("x", [batch, D]), ("cross_kt", [batch, H, hd, COND]), ("cross_v", [batch, H, COND, hd]))]
    outputs = [helper.make_tensor_value_info("x_out", f, [batch, D]), helper.make_tensor_value_info("qkv", f, [batch, 3 * D])]
    return ort_session(helper.make_graph(nodes, "layer", inputs, outputs, inits), threads, spin)


class HybridStep:
    """The step with its layers' dense parts in onnxruntime and self-attention in torch."""

    def __init__(self, cfg: LMConfig, batch: int, threads: int, spin: bool):
        rng = np.random.default_rng(0)
        self.cfg, self.batch = cfg, batch
        self.sessions = [layer_session(cfg, batch, threads, spin, rng) for _ in range(cfg.n_layers)]
        shape = (2, batch, cfg.n_heads, MAX_LEN, cfg.head_dim)
        self.caches = [torch.randn(shape).to(torch.bfloat16) for _ in range(cfg.n_layers)]
        self.cross = {"cross_kt": rng.standard_normal((batch, cfg.n_heads, cfg.head_dim, COND), dtype=np.float32),
                      "cross_v": rng.standard_normal((batch, cfg.n_heads, COND, cfg.head_dim), dtype=np.float32)}

    def __call__(self, context: int) -> np.ndarray:
        B, H, hd, D = self.batch, self.cfg.n_heads, self.cfg.head_dim, self.cfg.dim
        x, y = np.zeros((B, D), np.float32), np.zeros((B, D), np.float32)
        pos = torch.tensor([context - 1])
        for session, cache in zip(self.sessions, self.caches):
            x, qkv = session.run(None, {"y": y, "x": x, **self.cross})
            qkv = torch.from_numpy(qkv).view(B, 1, 3, H, hd).permute(2, 0, 3, 1, 4)
            cache.index_copy_(3, pos, qkv[1:].to(torch.bfloat16))
            kv = cache[:, :, :, :context]
            out = F.scaled_dot_product_attention(qkv[0].to(torch.bfloat16), kv[0], kv[1])
            y = out.float().transpose(1, 2).reshape(B, D).numpy()
        return x


def ours(batch: int):
    """The traced w8a8 step over a full-window bf16 cache, as `--dtype auto` runs on CPU."""
    lm = build(torch.qint8)
    lm.setup_caches(batch, MAX_LEN)
    g = torch.Generator().manual_seed(1)
    lm.set_condition(torch.randn(batch, COND, lm.cfg.dim, generator=g))
    step = traced_step(lm)
    tokens = torch.randint(0, lm.cfg.card, (batch, lm.cfg.n_codebooks, 1), generator=g)

    def run(context: int) -> None:
        pos = torch.tensor([context - 1])
        step(lm.positioned(lm.embed(tokens), pos), pos, context)
    return run


def timed(run, context: int, steps: int) -> tuple[float, float]:
    ms = []
    for _ in range(steps):
        t = time.perf_counter()
        run(context)
        ms.append((time.perf_counter() - t) * 1e3)
    return min(ms), statistics.median(ms)


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch's and onnxruntime's threads")
    p.add_argument("--spin", type=int, default=0, choices=(0, 1), help="onnxruntime's threads spin between calls")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=8, help="steps per row and round")
    p.add_argument("--contexts", default="100,1000", help="cache positions attended to (50 = 1 s)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    contexts = [int(c) for c in a.contexts.split(",")]
    rows = {"ours-w8a8": ours(2), "ort-layers": HybridStep(LMConfig(), 2, a.threads, bool(a.spin))}
    for run in rows.values():  # trace and warm up
        for c in contexts:
            timed(run, c, 2)
    best = {(r, c): [] for r in rows for c in contexts}
    for i in range(a.rounds):
        figures = []
        for c in contexts:
            for name, run in rows.items() if i % 2 == 0 else reversed(rows.items()):
                b, m = timed(run, c, a.steps)
                best[(name, c)].append(b)
                figures.append(f"{name}@{c} {b:.1f}/{m:.1f}")
        print(f"round {i + 1}: " + ", ".join(figures) + " ms (fastest/median step)", flush=True)
    print(f"\n{a.threads} threads, onnxruntime spinning {'on' if a.spin else 'off'}, batch 2, median of the rounds' "
          "fastest steps:")
    print("| step | " + " | ".join(f"ms at {c}" for c in contexts) + " |")
    print("|---|" + "---:|" * len(contexts))
    for name in rows:
        print(f"| {name} | " + " | ".join(f"{statistics.median(best[(name, c)]):.1f}" for c in contexts) + " |")


if __name__ == "__main__":
    main()

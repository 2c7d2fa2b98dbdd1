"""Weight-only matmul kernels for the decode step's shapes: torch int8, torch int4, onnxruntime MatMulNBits.

Each kernel multiplies a [2, K] activation (the guidance batch) by the two matrix shapes that carry most of a
step's weights (4096x1024 fc1-like, 1024x4096 fc2-like); per-call time, best and median of `--repeats`, and the
weight bytes streamed per second. onnxruntime is optional (`pip install onnxruntime onnx`); its
`accuracy_level=4` quantizes the activations to int8 per block (not weight-only), `0` keeps them fp32.

    python benchmarks/int4_kernels.py [--threads 2] [--repeats 60]
"""

from __future__ import annotations

import argparse
import time

import torch


def timed(fn, repeats: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[0] * 1e6, ts[len(ts) // 2] * 1e6


def torch_rows(N: int, K: int, repeats: int):
    from engine.quantize import Int4Linear, Int8Linear

    w = torch.randn(N, K) * 0.02
    x = torch.randn(2, K)
    for name, lin in [("torch int8 (per row)", Int8Linear(w))] + [(f"torch int4 g{g}", Int4Linear(w, g)) for g in (32, 64, 128)]:
        nbytes = sum(b.numel() * b.element_size() for b in lin.buffers())
        yield name, nbytes, timed(lambda: lin(x), repeats)


def ort_rows(N: int, K: int, repeats: int, threads: int):
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return
    w = torch.randn(N, K) * 0.02
    for g in (32, 64, 128):
        wg = w.view(N, K // g, g)
        scale = (wg.abs().amax(-1) / 7).clamp(min=1e-8)
        q = (torch.round(wg / scale[..., None]).clamp(-8, 7) + 8).to(torch.uint8)
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).numpy()  # [N, K/g, g/2], low nibble first
        for acc in (0, 4):
            node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=K, N=N, bits=4,
                                    block_size=g, accuracy_level=acc)
            graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, K])],
                                      [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, N])],
                                      [numpy_helper.from_array(packed, "B"),
                                       numpy_helper.from_array(scale.reshape(-1).numpy().astype(np.float32), "S")])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
            model.ir_version = 10  # what onnxruntime 1.31 reads
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            x = np.random.randn(2, K).astype(np.float32)
            yield f"onnxruntime MatMulNBits g{g} acc{acc}", packed.nbytes + scale.numel() * 4, timed(lambda: sess.run(None, {"A": x}), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=60)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"| kernel | matrix | best us | median us | GB/s (best) |  ({a.threads} threads, batch 2)")
    print("|---|---|---:|---:|---:|")
    for N, K in ((4096, 1024), (1024, 4096)):
        for name, nbytes, (best, med) in [*torch_rows(N, K, a.repeats), *ort_rows(N, K, a.repeats, a.threads)]:
            print(f"| {name} | {N}x{K} | {best:.0f} | {med:.0f} | {nbytes / best / 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()

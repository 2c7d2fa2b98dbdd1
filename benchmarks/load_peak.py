"""Peak memory of one model load, in this fresh process (VmHWM), for benchmarks/RESULTS.md's loading table.

    python benchmarks/load_peak.py FOLDER --dtype bfloat16 --loader bridge

--loader bridge: bridge.model_loading.load_model (what `generate`, `serve` and `bench` use, with the allocator
policy); engine: engine.checkpoint.load_model alone; safeopen: bridge's, with the safetensors package's `safe_open`
reading the tensors instead of engine/tensors.py's plain reads. FOLDER: e.g. the bench checkpoint
(`python -m bridge.bench` writes it to ~/.cache/musicgen-bridge/bench-small-t5base).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--loader", choices=("bridge", "engine", "safeopen"), default="bridge")
    a = p.parse_args()
    if a.loader == "engine":
        from engine.checkpoint import load_model
    else:
        from bridge.model_loading import load_model
    if a.loader == "safeopen":
        from safetensors import safe_open

        import engine.tensors

        def read_with_package(path, prefixes):
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    if name.startswith(prefixes):
                        yield name, f.get_tensor(name)

        engine.tensors.read_safetensors = read_with_package
    from bridge.bench import peak_rss_mb, rss_mb

    base = rss_mb()
    t0 = time.perf_counter()
    load_model(a.folder, device="cpu", dtype=a.dtype)
    print(json.dumps({"loader": a.loader, "dtype": a.dtype, "load_s": round(time.perf_counter() - t0, 2),
                      "base_mb": round(base), "loaded_mb": round(rss_mb()), "peak_mb": round(peak_rss_mb())}))


if __name__ == "__main__":
    main()

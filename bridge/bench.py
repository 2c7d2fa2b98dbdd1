"""`musicgen-bridge bench`: how fast generation runs here, ours against transformers' `generate`.

Everything runs on a model of musicgen-small's shape (decoder: dim 1024, 24 layers, 16 heads, ffn 4096,
4 codebooks; `--shape medium`: 1536, 48, 24, 6144; the full-size 32 kHz EnCodec; t5-base's shape) with random
weights, so it needs no download, on `--device` (a GPU when there is one). The checkpoint is written once, in Hugging Face format and fp32 like
the published one, to a cache folder; every row then loads it in a fresh subprocess, so that the peak RSS of a
row is what that configuration costs from disk to the last step.

Rows: the machine's read bandwidth, transformers' `generate` (fp32, bf16; and bf16 without cuDNN's attention,
`hf-bf16-nocudnn`, for GPUs), ours (fp32, bf16, int8, w8a8, int4, and
`auto` = what `--dtype auto` picks), and the streaming EnCodec decode.
Columns: decoder steps per second (50 steps = 1 s of audio), real-time factor (steps/s / 50; above 1 keeps up),
time to first audio (ours: until the first 1 s chunk is out of a streaming session; transformers: generation
of the whole request plus its decode, since `generate` returns nothing before the end), peak RSS, and the LM's
own memory (weights + KV cache), and for our rows the bytes a step reads (linear weights + KV cache at the
run's mean context), the effective read rate (bytes x steps/s) and its fraction of the bandwidth row (the
machine's streaming read rate with the same threads, measured in the same run). Guidance is on (batch 2),
top-k 250, as Meta's defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


FRAME_RATE = 50
ROWS = ("bandwidth", "hf-fp32", "hf-bf16", "hf-bf16-nocudnn", "ours-fp32", "ours-bf16", "ours-int8", "ours-w8a8",
        "ours-int4", "ours-auto", "decode")
DEFAULT_ROWS = ("bandwidth", "hf-fp32", "hf-bf16", "ours-fp32", "ours-bf16", "ours-int8", "ours-w8a8", "ours-int4", "decode")
GPU_DEFAULT_ROWS = ("bandwidth", "hf-bf16", "hf-bf16-nocudnn", "ours-fp32", "ours-bf16", "decode")
CPU_ONLY_ROWS = ("ours-int8", "ours-w8a8", "ours-int4")  # the integer formats run on CPU kernels
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8", "w8a8": "w8a8", "int4": "int4", "auto": "auto"}
PROMPT = "warm lo fi hip hop with soft drums and piano 90 bpm"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "musicgen-bridge" / "bench-small-t5base"


# ------------------------------------------------------------------------------------------- the model
def spread_codebooks(codec) -> None:
    """transformers initializes EnCodec's codebooks to zeros; random ones make different codes decode differently."""
    import torch

    with torch.no_grad():
        for layer in codec.quantizer.layers:
            layer.codebook.embed.normal_(0.0, 10.0)


def random_codec(seed: int = 0):
    """The full-size 32 kHz codec with random weights (for decode timings)."""
    import torch
    from transformers import EncodecModel

    from engine.codec import musicgen_codec_config

    torch.manual_seed(seed)
    codec = EncodecModel(musicgen_codec_config()).eval()
    spread_codebooks(codec)
    return codec


# The published decoders' shapes (hidden size, layers, heads, ffn width); both use t5-base and the 32 kHz codec.
SHAPES = {"small": (1024, 24, 16, 4096), "medium": (1536, 48, 24, 6144)}


def small_shape_config(n_layers: int | None = None, shape: str = "small"):
    """transformers' MusicgenConfig of musicgen-small (or `shape`): its decoder shape, t5-base's shape (12 layers,
    768 wide, 32128 tokens; the test tokenizer uses a few of them), the real codec. Full size, so that memory is a
    real checkpoint's."""
    from transformers import MusicgenConfig, MusicgenDecoderConfig, T5Config

    from engine.codec import musicgen_codec_config

    hidden, layers, heads, ffn = SHAPES[shape]
    t5 = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    decoder = MusicgenDecoderConfig(vocab_size=2048, hidden_size=hidden, num_hidden_layers=n_layers or layers,
                                    num_attention_heads=heads, ffn_dim=ffn, num_codebooks=4,
                                    max_position_embeddings=2048, audio_channels=1)
    return MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=musicgen_codec_config().to_dict(), decoder=decoder.to_dict())


def small_shape_model(n_layers: int | None = None, seed: int = 0, shape: str = "small"):
    """transformers' model of the small shape (or `shape`) with random weights (fp32)."""
    import torch
    from transformers import MusicgenForConditionalGeneration

    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(small_shape_config(n_layers, shape)).eval()
    spread_codebooks(model.audio_encoder)
    return model


def ensure_checkpoint(folder: Path, shape: str = "small") -> Path:
    """The checkpoint of `shape` in Hugging Face format (written once; about 2.4 GB small, 7 GB medium)."""
    folder = Path(folder)
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    from engine.tiny import tiny_tokenizer

    print(f"writing the {shape}-shape checkpoint to {folder} (once) ...", file=sys.stderr, flush=True)
    tmp = folder.with_name(folder.name + ".partial")
    small_shape_model(shape=shape).save_pretrained(tmp)
    tiny_tokenizer().save_pretrained(tmp)
    tmp.rename(folder)
    return folder


# --------------------------------------------------------------------------------------------- memory
def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB on Linux


def lm_bytes(lm) -> int:
    """Weights and buffers (KV cache included) of our LM; prepacked tensors counted by their elements."""
    from engine.quantize import module_bytes

    return module_bytes(lm)


def step_bytes(lm, batch: int, context: float) -> int:
    """Bytes one decode step must read: every linear's weights (and scales) but cross-attention's keys/values
    projection (run once per generation), the KV cache up to `context` positions, the cross-attention keys and
    values; where cross-attention is folded (engine.lm.CrossAttention), its rows for the rows with a prompt in place
    of its query and output projections and keys and values. Embedding rows, norms and activations are under 0.1%
    and left out."""
    import torch.nn as nn

    from engine.quantize import module_bytes

    folded = {f"layers.{i}.cross.{w}" for i, layer in enumerate(lm.layers)
              if layer.cross is not None and layer.cross.p is not None for w in ("wq", "wo")}
    weights = 0
    for name, m in lm.named_modules():
        if name.endswith("cross.wkv") or name in folded or not (isinstance(m, nn.Linear) or "Linear" in type(m).__name__):
            continue
        weights += module_bytes(m, recurse=False)
    kv = cross = 0
    for layer in lm.layers:
        cache = layer.attn.kv_cache.kv  # [2, B, H, L, d]
        kv += int(cache[:, :batch, :, : int(context)].numel() * cache.element_size())
        c = layer.cross
        if c is not None and c.p is not None:
            cross += 2 * c.p[0].numel() * c.p.element_size() * int(c.live.sum())
        elif c is not None and c.k is not None:
            cross += 2 * c.k.numel() * c.k.element_size()
    return weights + kv + cross


def read_bandwidth_gbs(mb: int = 512, repeats: int = 7, device: str = "cpu") -> float:
    """The machine's streaming read rate with this process's torch threads (or the GPU's memory, on `device`):
    best of `repeats` sums over a `mb`-MB fp32 tensor (far larger than any cache), in GB/s."""
    import torch

    x = torch.ones(mb * 2**20 // 4, device=device)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        x.sum()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def sync(device) -> None:
    """Wait for the GPU's queued work, so that a wall-clock interval covers it (nothing to do on CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def gpu_peak_mb(device) -> float | None:
    """The GPU memory torch's allocator held at most, in MB (None on CPU)."""
    import torch

    return torch.cuda.max_memory_allocated() / 1e6 if torch.device(device).type == "cuda" else None


# ---------------------------------------------------------------------------------------------- workers
def _settings():
    from engine.sampling import SamplingSettings

    return SamplingSettings(top_k=250, cfg=3.0, temperature=1.0, seed=1234)


def worker_ours(folder: Path, dtype: str, steps: int, device: str = "cpu") -> dict:
    import torch

    from bridge.model_loading import load_model
    from engine.devices import dtype_name
    from engine.generate import open_stream, warm_up
    from engine.session import StreamSession

    base = rss_mb()
    t0 = time.perf_counter()
    model = load_model(str(folder), device=device, dtype=dtype)
    warm_up(model)  # as `serve` does before it says ready: tracing the step is part of loading
    load_s, loaded = time.perf_counter() - t0, rss_mb()

    # Time to first audio: a streaming session's first 1 s chunk (T5, prefill, steps, codec decode). Also warms up.
    t0 = time.perf_counter()
    session = StreamSession(model, PROMPT, _settings(), seconds=2.0, chunk_seconds=1.0)
    next(iter(session))
    ttfa = time.perf_counter() - t0
    session.cancel()

    # Steps/s: the token stream alone (T5 and codec excluded), `steps` decoder calls.
    frames = steps - model.pattern.max_delay
    t0 = time.perf_counter()
    stream = open_stream(model, PROMPT, _settings(), frames=frames)
    sync(device)
    t1 = time.perf_counter()
    stream.run()
    sync(device)
    gen_s = time.perf_counter() - t1
    batch = 2  # guidance on: [cond; uncond]
    return {
        "dtype": dtype_name(model.lm.dtype),
        "step_mb": step_bytes(model.lm, batch, context=stream.steps / 2) / 1e6,
        "steps": stream.steps, "steps_per_s": stream.steps / gen_s, "cond_s": t1 - t0, "ttfa_s": ttfa,
        "load_s": load_s, "rss_base_mb": base, "rss_loaded_mb": loaded, "peak_rss_mb": peak_rss_mb(),
        "lm_mb": lm_bytes(model.lm) / 1e6, "threads": torch.get_num_threads(), "gpu_peak_mb": gpu_peak_mb(device),
        "step_mode": getattr(stream, "step_mode", None),
    }


def worker_transformers(folder: Path, dtype: str, steps: int, device: str = "cpu", no_cudnn: bool = False) -> dict:
    """transformers' `generate`; `no_cudnn`: with cuDNN's SDPA left out (on CUDA it plans again for every new key
    length, which a growing cache meets every step: the row shows what transformers does without that cost)."""
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    base = rss_mb()
    t0 = time.perf_counter()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = MusicgenForConditionalGeneration.from_pretrained(str(folder), dtype=torch_dtype).eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    inputs = lambda: tokenizer([PROMPT], return_tensors="pt").to(device)  # noqa: E731
    load_s, loaded = time.perf_counter() - t0, rss_mb()
    kw = dict(do_sample=True, top_k=250, guidance_scale=3.0)
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with torch.inference_mode(), sdpa_kernel(backends) if no_cudnn else contextlib.nullcontext():
        # Time to first audio: `generate` hands nothing out before its end, so the earliest audio is a 1 s request
        # (50 frames + 3 delay steps) decoded whole. Also the warm-up.
        t0 = time.perf_counter()
        model.generate(**inputs(), **kw, max_new_tokens=FRAME_RATE + 3)
        sync(device)
        ttfa = time.perf_counter() - t0
        decode = model.audio_encoder.decode
        model.audio_encoder.decode = lambda codes, *a, **k: decode(codes[..., :1], *a, **k)  # steps only, no codec
        torch.manual_seed(0)
        sync(device)
        t0 = time.perf_counter()
        model.generate(**inputs(), **kw, max_new_tokens=steps)
        sync(device)
        gen_s = time.perf_counter() - t0
    return {
        "steps": steps, "steps_per_s": steps / gen_s, "ttfa_s": ttfa, "load_s": load_s,
        "rss_base_mb": base, "rss_loaded_mb": loaded, "peak_rss_mb": peak_rss_mb(), "lm_mb": None,
        "threads": torch.get_num_threads(), "gpu_peak_mb": gpu_peak_mb(device),
    }


def worker_decode(chunks: int, device: str = "cpu") -> dict:
    """Streaming EnCodec decode of 1 s chunks on the full-size codec (benchmarks/stream_decode.py's setup)."""
    import torch

    from engine.stream_decode import StreamingDecoder

    codec = random_codec().to(device)
    codes = torch.randint(0, 2048, (4, chunks * FRAME_RATE), generator=torch.Generator().manual_seed(1))
    decoder = StreamingDecoder(codec, 1)
    times = []
    for i in range(0, codes.shape[1], FRAME_RATE):
        t0 = time.perf_counter()
        decoder.push(codes[:, i : i + FRAME_RATE])  # returns audio on the CPU: the GPU's work is done
        times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    return {"ms_per_chunk": statistics.median(steady) * 1e3, "first_chunk_ms": times[0] * 1e3, "chunks": len(times),
            "latency_ms": decoder.latency_ms, "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()}


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("row", choices=ROWS)
    p.add_argument("--folder", type=Path)
    p.add_argument("--steps", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    if a.row == "bandwidth":
        mb = 4096 if a.device.startswith("cuda") else 512  # far past the GPU's 60 MB of L2 too
        out = {"gb_s": read_bandwidth_gbs(mb, device=a.device), "threads": torch.get_num_threads()}
    elif a.row == "decode":
        out = worker_decode(max(3, a.steps // FRAME_RATE), a.device)
    else:
        who, dt, *variant = a.row.split("-")
        if who == "ours":
            out = worker_ours(a.folder, DTYPES[dt], a.steps, a.device)
        else:
            out = worker_transformers(a.folder, DTYPES[dt], a.steps, a.device, no_cudnn=variant == ["nocudnn"])
    print("BENCH-RESULT " + json.dumps(out), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ driver
def run_row(row: str, folder: Path, steps: int, threads: int, timeout: float = 1800, device: str = "cpu") -> dict:
    """One row in a fresh subprocess (so its peak RSS is its own); returns the worker's figures."""
    cmd = [sys.executable, "-m", "bridge.bench", "--worker", row, "--folder", str(folder), "--steps", str(steps),
           "--threads", str(threads), "--device", str(device)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(Path(__file__).resolve().parents[1]))
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT "):])
    raise RuntimeError(f"bench row {row} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def machine(device: str = "cpu") -> str:
    """The CPU's name, cores and vector extensions; and the GPU's name when `device` is a CUDA device."""
    gpu = ""
    if device.startswith("cuda"):
        import torch

        gpu = f"; GPU {torch.cuda.get_device_name(torch.device(device))}"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        import platform

        name = platform.processor() or platform.machine()
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    extra = [f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni") if f in flags]
    return f"{name}, {os.cpu_count()} cores" + (f" ({', '.join(extra)})" if extra else "") + gpu


def format_table(results: dict[str, dict], auto: str | None = None) -> str:
    """The figures as markdown; `auto` (a dtype name) marks the row `--dtype auto` runs."""
    bandwidth = results.get("bandwidth", {}).get("gb_s")
    gpu = any(r.get("gpu_peak_mb") for r in results.values())
    lines = []
    if bandwidth:
        over = "the GPU's memory, 4096 MB fp32" if gpu else "512 MB fp32"
        lines += [f"read bandwidth: {bandwidth:.1f} GB/s (sum over {over}, best of 7, same threads)", ""]
    lines += ["| row | steps/s | real-time factor | time to first audio (s) | peak RSS (MB) | LM weights+KV (MB) "
              "| MB read/step | effective GB/s | of bandwidth |" + (" GPU peak (MB) |" if gpu else ""),
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else "")]
    for row, r in results.items():
        if row in ("decode", "bandwidth"):
            continue
        lm = f"{r['lm_mb']:.0f}" if r.get("lm_mb") else "-"
        name = f"{row} ({r['dtype']})" if row == "ours-auto" else row
        if auto is not None and row != "ours-auto" and r.get("dtype") == auto:
            name += " (= auto)"
        if r.get("step_mb"):
            gbs = r["step_mb"] * r["steps_per_s"] / 1e3
            frac = f"{gbs / bandwidth:.0%}" if bandwidth else "-"
            traffic = f"{r['step_mb']:.0f} | {gbs:.1f} | {frac}"
        else:
            traffic = "- | - | -"
        lines.append(f"| {name} | {r['steps_per_s']:.1f} | {r['steps_per_s'] / FRAME_RATE:.2f} | {r['ttfa_s']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {lm} | {traffic} |" + (f" {r.get('gpu_peak_mb') or 0:.0f} |" if gpu else ""))
    if "decode" in results:
        d = results["decode"]
        lines += ["", "| streaming decode (full-size EnCodec, 1 s chunks) | ms per chunk | first chunk ms | holdback ms | peak RSS (MB) |",
                  "|---|---:|---:|---:|---:|",
                  f"| decode | {d['ms_per_chunk']:.1f} | {d['first_chunk_ms']:.1f} | {d['latency_ms']:.0f} | {d['peak_rss_mb']:.0f} |"]
    return "\n".join(lines)


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="measure generation speed and memory on this machine (no download)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=None,
                   help=f"comma-separated, from: {', '.join(ROWS)} (default on CPU: {', '.join(DEFAULT_ROWS)}; "
                        f"on a GPU: {', '.join(GPU_DEFAULT_ROWS)})")
    p.add_argument("--steps", type=int, default=250, help="decoder steps per row (default 250 = 5 s of audio)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"where the random checkpoint is kept (default {DEFAULT_CACHE}, or -medium beside it)")
    p.add_argument("--shape", choices=tuple(SHAPES), default="small",
                   help="the published decoder shape the random checkpoint takes (default small)")
    p.add_argument("--device", default="auto", help="auto (cuda, then cpu), cpu or cuda: where every row runs")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--jam", action="store_true", help="instead: a 60 s jam through the OSC server, as the device "
                   "drives it (bridge/jam_bench.py): chunks late, real-time factor, first bar, steps/s")
    p.add_argument("--jam-seconds", type=float, default=60.0, help="with --jam: seconds of audio (default 60)")
    p.add_argument("--model", default=None, help="with --jam: a model folder or name (default: the small shape)")
    p.add_argument("--jam-dtype", default=None, help="with --jam: the weight format (default: serve's)")
    p.add_argument("--jam-prompt", default="", help="with --jam: the text prompt (default: none, so the text is the "
                   "song's tempo alone, e.g. '120 bpm')")
    p.add_argument("--jam-time-limit", type=float, default=1200.0,
                   help="with --jam: stop after this many seconds of jamming and report what was delivered")
    p.add_argument("--streams", default=None, metavar="1,2,4,8",
                   help="instead: streams at once on the batching engine (bridge/bench_streams.py), in --streams-dtype")
    p.add_argument("--streams-dtype", default="auto", help="weights for --streams (default auto, as serve)")
    p.add_argument("--rounds", type=int, default=3, help="--streams: rounds of 1 vs 4 requests and takes")
    p.add_argument("--step-mode", choices=("auto", "eager", "traced", "graph"), default="auto",
                   help="--streams: how the batch's rounds run (default auto: CUDA graphs on a GPU, traced on CPU)")
    p.set_defaults(func=run_bench)
    return p


def cache_dir(args: argparse.Namespace) -> Path:
    """--cache-dir, else the default folder of --shape's checkpoint."""
    if args.cache_dir is not None:
        return args.cache_dir
    return DEFAULT_CACHE if args.shape == "small" else DEFAULT_CACHE.with_name(f"bench-{args.shape}-t5base")


def run_bench(args: argparse.Namespace) -> int:
    from engine.devices import resolve_device
    from engine.errors import UserError

    try:
        args.device = str(resolve_device(args.device))
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    args.cache_dir = cache_dir(args)
    if args.jam:
        from bridge.jam_bench import run_jam_command

        return run_jam_command(args)
    if args.streams:
        return _run_streams(args)
    gpu = args.device.startswith("cuda")
    rows = [r.strip() for r in (args.rows or ",".join(GPU_DEFAULT_ROWS if gpu else DEFAULT_ROWS)).split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        print(f"unknown row(s) {', '.join(bad)}: choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    cpu_only = [r for r in rows if gpu and r in CPU_ONLY_ROWS]
    if cpu_only:
        print(f"row(s) {', '.join(cpu_only)} run on CPU only: leave them out, or use --device cpu", file=sys.stderr)
        return 2
    if args.steps < 8:
        print("--steps must be at least 8", file=sys.stderr)
        return 2
    threads = args.threads or os.cpu_count() or 1
    needs_model = any(r not in ("decode", "bandwidth") for r in rows)
    folder = ensure_checkpoint(args.cache_dir, args.shape) if needs_model else args.cache_dir
    print(f"machine: {machine(args.device)}; {threads} threads; {args.steps} steps per row; {args.shape} shape, "
          "random weights, guidance on", flush=True)
    results = {}
    for row in rows:
        print(f"  {row} ...", file=sys.stderr, flush=True)
        results[row] = run_row(row, folder, args.steps, threads, device=args.device)
    import torch

    from engine.devices import auto_dtype, dtype_name

    print(format_table(results, auto=dtype_name(auto_dtype(torch.device(args.device))[0])))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(args.device), "threads": threads, "steps": args.steps,
                                         "shape": args.shape, "device": args.device, "rows": results}, indent=1))
    return 0


def _run_streams(args: argparse.Namespace) -> int:
    import torch

    from bridge.bench_streams import run_streams_bench

    try:
        counts = [int(n) for n in args.streams.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        print(f"--streams wants stream counts like 1,2,4,8, got {args.streams!r}", file=sys.stderr)
        return 2
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    folder = ensure_checkpoint(args.cache_dir, args.shape)
    print(f"machine: {machine(args.device)}; {threads} threads; {args.steps} steps per stream; {args.shape} shape, "
          "random weights, guidance on", flush=True)
    run_streams_bench(folder, counts, DTYPES.get(args.streams_dtype, args.streams_dtype), args.steps, args.rounds,
                      out=lambda line: print(line, flush=True), device=args.device, step_mode=args.step_mode)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker_main(argv[1:])
    parser = argparse.ArgumentParser(prog="musicgen-bridge")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

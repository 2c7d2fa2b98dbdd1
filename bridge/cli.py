"""The `musicgen-bridge` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from engine.errors import UserError

log = logging.getLogger("musicgen_bridge")


def _positive_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="facebook/musicgen-small",
                   help="a local folder (Hugging Face or Meta format), a hub id, or random-tiny (noise, for wiring tests)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (T5 stays float32)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None, help="same seed, same audio (default: a fresh one, printed)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance (1 = off)")
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling; > 0 replaces top-k")
    p.add_argument("--temperature", type=float, default=1.0)


def sampling_settings(args):
    from engine.sampling import SamplingSettings

    return SamplingSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg=args.cfg,
                            greedy=args.greedy, seed=args.seed).validate()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicgen-bridge", description="MusicGen as a live instrument for Ableton Live")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="render a text prompt to a WAV file")
    g.add_argument("prompt", help='what to play, e.g. "warm lo-fi piano"; "" generates unconditionally')
    g.add_argument("--seconds", type=_positive_float, default=8.0)
    g.add_argument("--out", default="musicgen.wav", help="WAV file to write (atomically)")
    g.add_argument("--codes-out", default=None, help="also write the codes as int64 .npy [K, frames], delay removed")
    add_model_args(g)
    add_sampling_args(g)
    g.set_defaults(func=cmd_generate)
    return parser


def cmd_generate(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from bridge.audio_io import atomic_output, write_wav_atomic
    from engine.checkpoint import load_model
    from engine.generate import check_seconds, generate

    settings = sampling_settings(args)
    _check_out_path(args.out, ".wav")
    if args.codes_out:
        _check_out_path(args.codes_out, ".npy")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    check_seconds(model, args.seconds)
    with tqdm(total=100, desc="generating", unit="%", file=sys.stderr, disable=None, leave=False) as bar:
        def progress(fraction: float) -> None:
            bar.update(round(fraction * 100) - bar.n)

        result = generate(model, args.prompt, args.seconds, settings, on_progress=progress)
    write_wav_atomic(args.out, result.audio, result.sample_rate)
    if args.codes_out:
        with atomic_output(args.codes_out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, result.codes.numpy().astype(np.int64))
    print(f"wrote {args.out}: {result.audio.shape[1] / result.sample_rate:.2f} s, {result.audio.shape[0]} channel(s), "
          f"{result.sample_rate} Hz, seed {result.seed}")
    return 0


def _check_out_path(path: str, suffix: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {path}: the folder {folder} does not exist", code="bad_args")
    if not path.lower().endswith(suffix):
        raise UserError(f"{path} should end in {suffix}", code="bad_args")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UserError as err:
        print(f"musicgen-bridge: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("musicgen-bridge: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: one line, the traceback only when asked for
        if os.environ.get("MUSICGEN_BRIDGE_DEBUG"):
            raise
        print(f"musicgen-bridge: internal error: {type(err).__name__}: {err} (set MUSICGEN_BRIDGE_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The `musicgen-bridge` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from bridge import protocol
from engine.errors import UserError

log = logging.getLogger("musicgen_bridge")

DEFAULT_OUT_DIR = os.path.join(os.path.expanduser("~"), "MusicGenBridge")


def _positive_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="facebook/musicgen-small",
                   help="a local folder (Hugging Face or Meta format), a hub id, or random-tiny (noise, for wiring tests)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--dtype", default="auto",
                   help="auto (default: w8a8 on CPU, bfloat16 on CUDA, float16 on MPS), float32, bfloat16, float16, "
                        "int8 or int4 (weight-only, CPU only), w8a8 (int8 weights and int8 activations, quantized per "
                        "row as they arrive; CPU only); T5 runs in bf16 for bf16/int8/w8a8/int4, else fp32")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    # Defaults are None so that a --preset can fill what was not given; sampling_settings() applies Meta's.
    p.add_argument("--seed", type=int, default=None, help="same seed, same audio (default: a fresh one, printed)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance (1 = off; default 3)")
    p.add_argument("--top-k", type=int, default=None, help="default 250")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling; > 0 replaces top-k (default 0)")
    p.add_argument("--temperature", type=float, default=None, help="default 1")


def sampling_settings(args, preset: dict | None = None):
    """SamplingSettings from the flags; flags not given come from `preset` (setting name -> value), else
    from SamplingSettings' defaults (Meta's)."""
    from engine.sampling import SamplingSettings

    base, preset = SamplingSettings(), preset or {}

    def pick(name: str):
        given = getattr(args, name)
        return given if given is not None else preset.get(name, getattr(base, name))

    seed = args.seed if args.seed is not None else preset.get("seed")
    return SamplingSettings(temperature=pick("temperature"), top_k=pick("top_k"), top_p=pick("top_p"),
                            cfg=pick("cfg"), greedy=args.greedy,
                            seed=None if seed is None or seed < 0 else seed).validate()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicgen-bridge", description="MusicGen as a live instrument for Ableton Live")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="render a text prompt to a WAV file")
    g.add_argument("prompt", nargs="?", default=None,
                   help='what to play, e.g. "warm lo-fi piano"; "" generates unconditionally (default: the preset\'s)')
    g.add_argument("--preset", default=None, metavar="NAME",
                   help="a preset from presets/ (e.g. lofi-keys): fills the prompt, sampling and bars not given")
    g.add_argument("--seconds", type=_positive_float, default=None, help="length (default 8, or the preset's bars)")
    g.add_argument("--out", default="musicgen.wav", help="WAV file to write (atomically)")
    g.add_argument("--codes-out", default=None, help="also write the codes as int64 .npy [K, frames], delay removed")
    g.add_argument("--bars", type=_positive_float, default=None, help="length in bars at --bpm (replaces --seconds)")
    g.add_argument("--bpm", default=None, help="tempo, e.g. 120 or 97.5 (needed for bars)")
    g.add_argument("--time-signature", default="4/4", help="e.g. 4/4, 7/8")
    g.add_argument("--no-tempo-text", action="store_true", help="do not add the tempo to the prompt (', 120 bpm')")
    g.add_argument("--chunk-seconds", type=_positive_float, default=None, help="stream in chunks of this many seconds")
    g.add_argument("--chunk-bars", type=_positive_float, default=None, help="stream in chunks of this many bars")
    g.add_argument("--continue", dest="continue_wav", default=None, metavar="FILE.wav",
                   help="continue this audio (any rate, mono or stereo); only the new audio is written")
    g.add_argument("--context-seconds", type=_positive_float, default=None,
                   help="slide the model's window past this context (endless mode; allows lengths past the model's limit)")
    g.add_argument("--stream-dir", default=None, help="write each chunk there as its own WAV as soon as it is final")
    g.add_argument("--takes", type=int, default=1, help="render 1-4 variations at once (seeds seed, seed+1, ...): "
                   "NAME-1.wav ... NAME-N.wav")
    g.add_argument("--melody", default=None, metavar="FILE", help="melody to follow (.wav/.mid; melody models only)")
    g.add_argument("--hum", action="store_true", help="--melody is a voice recording: track its pitch")
    g.add_argument("--melody-track", default=None, help="MIDI track (index or name) for --melody")
    add_model_args(g)
    add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("serve", help="run the OSC bridge for the Max for Live device")
    s.add_argument("--host", default=protocol.HOST,
                   help="address to listen on (default: loopback only; beyond loopback, anyone who can reach the "
                   "port can use the bridge and get its replies)")
    s.add_argument("--port", type=int, default=protocol.PORT, help="port to listen on")
    s.add_argument("--reply-port", type=int, default=protocol.REPLY_PORT, help="port the device listens on")
    s.add_argument("--out-dir", default=None,
                   help=f"folder for the WAV files (default {DEFAULT_OUT_DIR}, created if missing)")
    s.add_argument("--audio-device", default=None, metavar="NAME",
                   help="also play results live to this output device (e.g. BlackHole, a JACK port), on bar lines")
    s.add_argument("--input-device", default=None, metavar="NAME", help="microphone for humming a melody")
    s.add_argument("--presets-dir", default=None, help="folder of preset .json files (default: presets/)")
    s.add_argument("--engine", default="batch", metavar="batch|local|ws://HOST:PORT",
                   help="batch: streams advance together in one decoder step (default); local: one stream at a "
                        "time; ws://HOST:PORT: use the engine served there (`musicgen-bridge engine` or `cluster`) "
                        "and load no model here")
    s.add_argument("--token", default=None, help="the remote engine's token (or set MUSICGEN_BRIDGE_TOKEN)")
    add_model_args(s)
    s.set_defaults(func=cmd_serve)

    pr = sub.add_parser("protocol", help="print the OSC protocol (messages, settings, errors) as JSON")
    pr.set_defaults(func=cmd_protocol)

    lk = sub.add_parser("lock", help="warp audio so its beats fall on the grid of a tempo (at most 8 %% stretch)")
    lk.add_argument("input", help="audio file to lock (WAV, AIFF, FLAC, ...)")
    lk.add_argument("--bpm", default=None, help="the grid's tempo, e.g. 96 or 97.5 (required)")
    lk.add_argument("--time-signature", default="4/4", help="e.g. 4/4, 7/8")
    lk.add_argument("--bars", default=None, help="make the result exactly this many bars (default: the bars it fills)")
    lk.add_argument("--out", default=None, help="WAV file to write (required; written atomically)")
    lk.set_defaults(func=cmd_lock)

    from bridge.bench import add_bench_parser

    add_bench_parser(sub)

    from bridge.cluster import add_cluster_parser
    from bridge.engine_server import add_engine_parser

    add_engine_parser(sub)
    add_cluster_parser(sub)

    c = sub.add_parser("chroma", help="write the one-hot chroma a melody model would see, to check a melody")
    c.add_argument("input", help=".wav (or other audio) or .mid")
    c.add_argument("--out", required=True, help="output .npy [frames, 12]")
    c.add_argument("--hum", action="store_true", help="the input is a voice: track its pitch (pyin)")
    c.add_argument("--bpm", type=_positive_float, default=None, help="play a MIDI file at this tempo")
    c.add_argument("--track", default=None, help="MIDI track (index or name); default all")
    c.add_argument("--plot", default=None, help="also draw it to this .png, with note names")
    c.set_defaults(func=cmd_chroma)
    return parser


def cmd_serve(args) -> int:
    from bridge.server import IN_PROCESS_ENGINES, ServeConfig, is_remote_engine, serve

    for name in ("port", "reply_port"):
        if not 1 <= getattr(args, name) <= 65535:
            raise UserError(f"--{name.replace('_', '-')} must be between 1 and 65535", code="bad_args")
    if args.engine not in IN_PROCESS_ENGINES and not is_remote_engine(args.engine):
        raise UserError(f"--engine must be batch, local or a WebSocket address like ws://gpu-box:9300, got "
                        f"{args.engine!r}", code="bad_args")
    out_dir = args.out_dir
    if out_dir is None:
        out_dir = DEFAULT_OUT_DIR
        os.makedirs(out_dir, exist_ok=True)
    return serve(ServeConfig(model=args.model, host=args.host, port=args.port, reply_port=args.reply_port,
                             out_dir=out_dir, audio_device=args.audio_device, input_device=args.input_device,
                             device=args.device, dtype=args.dtype, presets=args.presets_dir,
                             engine=args.engine, token=args.token))


def cmd_protocol(args) -> int:
    sys.stdout.write(protocol.protocol_json())
    return 0


def _apply_preset(args) -> dict:
    """Fill what --preset gives and the command line did not; returns the preset's settings (for sampling)."""
    if args.preset is None:
        if args.prompt is None:
            raise UserError("give a prompt (or --preset NAME)", code="bad_args")
        if args.seconds is None and args.bars is None:
            args.seconds = 8.0
        return {}
    from bridge.presets import load_preset, render_prompt
    from engine.bars import format_bpm, parse_bpm

    preset = load_preset(args.preset)
    if args.prompt is None:
        bpm = format_bpm(parse_bpm(args.bpm)) if args.bpm is not None else None
        args.prompt = render_prompt(preset.prompt, bpm=bpm, key=preset.key)
    settings = dict(preset.settings)
    if args.seconds is None and args.bars is None:
        if args.bpm is not None and "bars" in settings:  # bars mean something only at a tempo
            args.bars = float(settings["bars"])
        else:
            args.seconds = 8.0
    log.info("preset %s: %s", preset.name, args.prompt)
    return settings


def cmd_chroma(args) -> int:
    from bridge.melody import chroma_command
    from engine.chroma import CHROMA_HOP, CHROMA_SR, NOTE_NAMES

    _check_out_path(args.out, ".npy")
    if args.plot:
        _check_out_path(args.plot, ".png")
    chroma = chroma_command(args.input, args.out, hum=args.hum, bpm=args.bpm, plot=args.plot, track=args.track)
    counts = chroma.sum(axis=0)
    top = ", ".join(f"{NOTE_NAMES[i]} {int(counts[i])}" for i in counts.argsort()[::-1][:4] if counts[i])
    print(f"wrote {args.out}: {chroma.shape[0]} frames ({chroma.shape[0] * CHROMA_HOP / CHROMA_SR:.2f} s); most frames: {top}")
    return 0


def cmd_generate(args) -> int:
    import time

    import numpy as np
    from tqdm import tqdm

    from bridge.audio_io import atomic_output, load_audio, write_wav_atomic
    from engine.bars import Tempo, parse_time_signature
    from bridge.model_loading import load_model
    from engine.session import StreamSession

    preset = _apply_preset(args)
    settings = sampling_settings(args, preset)
    _check_out_path(args.out, ".wav")
    if args.codes_out:
        _check_out_path(args.codes_out, ".npy")
    if args.stream_dir and not os.path.isdir(args.stream_dir):
        raise UserError(f"--stream-dir {args.stream_dir} is not a folder: create it first", code="bad_args")
    if not 1 <= args.takes <= 4:
        raise UserError(f"--takes must be 1 to 4, got {args.takes}", code="bad_args")
    if args.takes > 1 and args.stream_dir:
        raise UserError("--stream-dir writes one take's chunks: leave it out with --takes", code="bad_args")
    tempo = None
    if args.bpm is not None:
        tempo = Tempo(args.bpm, *parse_time_signature(args.time_signature))
    elif args.bars is not None or args.chunk_bars is not None:
        raise UserError("--bars and --chunk-bars need --bpm (and --time-signature if not 4/4)", code="bad_args")
    audio_prompt = load_audio(args.continue_wav) if args.continue_wav else None
    melody = None
    if args.melody:
        from bridge.melody import melody_chroma_from_file

        melody = melody_chroma_from_file(args.melody, hum=args.hum, bpm=float(args.bpm) if args.bpm else None,
                                         track=args.melody_track)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.takes > 1:
        return _generate_takes(args, model, settings, tempo, audio_prompt, melody)

    started = time.perf_counter()
    session = StreamSession(
        model, args.prompt, settings, seconds=None if args.bars is not None else args.seconds, bars=args.bars,
        tempo=tempo, chunk_seconds=args.chunk_seconds, chunk_bars=args.chunk_bars, audio_prompt=audio_prompt,
        context_seconds=args.context_seconds, tempo_in_prompt=not args.no_tempo_text, melody=melody,
    )
    chunks, first_audio = [], None
    with tqdm(total=session.total_samples, desc="generating", unit="sample", unit_scale=True, file=sys.stderr,
              disable=None, leave=False) as bar:
        for chunk in session:
            first_audio = first_audio or time.perf_counter() - started
            chunks.append(chunk.audio)
            if args.stream_dir:
                write_wav_atomic(os.path.join(args.stream_dir, f"chunk-{chunk.index:04d}.wav"), chunk.audio, model.sample_rate)
            bar.update(chunk.audio.shape[1])
    audio = np.concatenate(chunks, axis=1)
    write_wav_atomic(args.out, audio, model.sample_rate)
    if args.codes_out:
        with atomic_output(args.codes_out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, session.stream.codes().numpy().astype(np.int64))
    elapsed = time.perf_counter() - started
    print(f"wrote {args.out}: {audio.shape[1] / model.sample_rate:.2f} s, {audio.shape[0]} channel(s), "
          f"{model.sample_rate} Hz, seed {session.seed}; first audio after {first_audio:.2f} s, "
          f"{session.steps / elapsed:.1f} steps/s")
    return 0


def _take_path(path: str, index: int) -> str:
    """NAME.ext -> NAME-<index + 1>.ext"""
    stem, ext = os.path.splitext(path)
    return f"{stem}-{index + 1}{ext}"


def _generate_takes(args, model, settings, tempo, audio_prompt, melody) -> int:
    """`generate --takes N`: N variations rendered together on a batching engine, one WAV (and .npy) each."""
    import time

    import numpy as np

    from bridge.audio_io import atomic_output, write_wav_atomic
    from engine.batch_engine import BatchEngine
    from engine.interface import StreamSpec
    from engine.takes import render_takes

    spec = StreamSpec(args.prompt, settings, tempo=tempo, bars=args.bars,
                      seconds=None if args.bars is not None else args.seconds,
                      chunk_seconds=args.chunk_seconds, chunk_bars=args.chunk_bars, audio_prompt=audio_prompt,
                      melody=melody, context_seconds=args.context_seconds, tempo_in_prompt=not args.no_tempo_text)
    started = time.perf_counter()
    engine = BatchEngine(model, max_rows=2 * args.takes)
    try:
        takes = render_takes(engine, spec, args.takes)
    finally:
        engine.close()
    elapsed = time.perf_counter() - started
    for take in takes:
        path = _take_path(args.out, take.index)
        write_wav_atomic(path, take.audio, model.sample_rate)
        if args.codes_out and take.codes is not None:
            with atomic_output(_take_path(args.codes_out, take.index)) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, take.codes.numpy().astype(np.int64))
        print(f"wrote {path}: {take.audio.shape[1] / model.sample_rate:.2f} s, seed {take.seed}")
    steps = sum(t.steps for t in takes)
    print(f"{len(takes)} takes in {elapsed:.2f} s ({steps / elapsed:.1f} steps/s together)")
    return 0


def cmd_lock(args) -> int:
    from bridge.tempo_lock import lock_file

    if args.bpm is None or args.out is None:
        raise UserError("lock needs --bpm B and --out OUT.wav, e.g. musicgen-bridge lock in.wav --bpm 96 --out "
                        "locked.wav", code="bad_args")
    _check_out_path(args.out, ".wav")
    result = lock_file(args.input, args.out, args.bpm, args.time_signature, args.bars)
    # Audio that cannot be locked is a result, not an error: it is written unchanged and the reason printed.
    print(f"wrote {args.out}: {result.message}")
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

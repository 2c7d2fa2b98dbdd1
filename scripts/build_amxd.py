"""Build max_for_live/MusicGenBridge.amxd (a Max for Live audio effect) from MusicGenBridge.maxpat.

An .amxd is a small binary header followed by the patcher JSON:
    'ampf' u32(4) 'aaaa'  'meta' u32(4) u32(1)  'ptch' u32(length) <patcher JSON>
(all u32 little-endian; 'aaaa' = audio effect). The JavaScript files (musicgen_bridge.js, bridge_core.js,
protocol_table.js) and protocol.json are referenced by name, not embedded: keep them next to the .amxd, or open
the device in Max and Freeze it to get one self-contained file.

The output depends only on the .maxpat text (line endings normalised), so rebuilding gives the same bytes:
    python scripts/build_amxd.py            # write the .amxd
    python scripts/build_amxd.py --check    # exit 1 if the committed .amxd is stale
"""

from __future__ import annotations

import argparse
import json
import logging
import struct
import sys
from pathlib import Path

DEVICE_DIR = Path(__file__).resolve().parent.parent / "max_for_live"
SOURCE = DEVICE_DIR / "MusicGenBridge.maxpat"
TARGET = DEVICE_DIR / "MusicGenBridge.amxd"

AUDIO_EFFECT = b"aaaa"
log = logging.getLogger("build_amxd")


def build_amxd(patcher_text: str, device_type: bytes = AUDIO_EFFECT) -> bytes:
    """The .amxd bytes for a patcher given as JSON text."""
    json.loads(patcher_text)  # refuse to package a patch Max could not open
    body = patcher_text.replace("\r\n", "\n").encode("utf-8")  # a CRLF checkout must build the same bytes
    header = b"ampf" + struct.pack("<I", 4) + device_type
    header += b"meta" + struct.pack("<II", 4, 1)
    header += b"ptch" + struct.pack("<I", len(body))
    return header + body


def parse_amxd(data: bytes) -> tuple[bytes, dict]:
    """(device type, patcher dict) from .amxd bytes; ValueError if the header is not the one build_amxd writes."""
    if len(data) < 32 or data[:4] != b"ampf" or data[12:16] != b"meta" or data[24:28] != b"ptch":
        raise ValueError("not an .amxd: bad header")
    if struct.unpack("<I", data[4:8])[0] != 4 or struct.unpack("<II", data[16:24]) != (4, 1):
        raise ValueError("not an .amxd: unexpected header fields")
    (length,) = struct.unpack("<I", data[28:32])
    if length != len(data) - 32:
        raise ValueError(f"patcher length {length} does not match the {len(data) - 32} bytes that follow")
    return data[8:12], json.loads(data[32:].decode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=TARGET)
    parser.add_argument("--check", action="store_true", help="only check that --out is up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    data = build_amxd(args.source.read_text(encoding="utf-8"))
    if args.check:
        if not args.out.exists() or args.out.read_bytes() != data:
            log.error("%s is stale: run python scripts/build_amxd.py", args.out)
            return 1
        log.info("%s is up to date", args.out)
        return 0
    args.out.write_bytes(data)
    log.info("wrote %s (%d bytes)", args.out, len(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

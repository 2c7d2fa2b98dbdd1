"""Build max_for_live/MusicGenBridge.amxd (a Max for Live audio effect) from MusicGenBridge.maxpat.

An .amxd is a small binary header followed by the patcher JSON:
    'ampf' u32(4) 'aaaa'  'meta' u32(4) u32(1)  'ptch' u32(length) <patcher JSON> NUL
(all u32 little-endian; 'aaaa' = audio effect; the JSON ends with the NUL byte Max writes, counted in the
length). The JavaScript files are referenced by name, not embedded: keep them next to the .amxd, or open the
device in Max and Freeze it to get one self-contained file. They are found through require() only, under unique
names (mgb_*), and the patch lists them in its dependency_cache, so a frozen device or a copy elsewhere works.

The protocol table is built into the device as mgb_protocol_data.js (from protocol.json, which
scripts/write_protocol_json.py writes from bridge/protocol.py): nothing is read through the search path at init.

The output depends only on the .maxpat text (line endings normalised), so rebuilding gives the same bytes.

The Preset menu lists the presets the bridge ships (presets/*.json, as bridge/presets.py lists them): the build
first writes those names into the menu of the .maxpat, so adding or renaming a preset only needs a rebuild.
    python scripts/build_amxd.py            # update the Preset menu and the dependencies in the .maxpat, write
                                            # mgb_protocol_data.js and the .amxd
    python scripts/build_amxd.py --check    # exit 1 if any of them is stale
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVICE_DIR = ROOT / "max_for_live"
SOURCE = DEVICE_DIR / "MusicGenBridge.maxpat"
TARGET = DEVICE_DIR / "MusicGenBridge.amxd"
PROTOCOL_JSON = DEVICE_DIR / "protocol.json"
PROTOCOL_MODULE = DEVICE_DIR / "mgb_protocol_data.js"
PRESET_MENU = "Preset"  # varname of the live.menu whose items are preset names

AUDIO_EFFECT = b"aaaa"
log = logging.getLogger("build_amxd")


def build_amxd(patcher_text: str, device_type: bytes = AUDIO_EFFECT) -> bytes:
    """The .amxd bytes for a patcher given as JSON text."""
    json.loads(patcher_text)  # refuse to package a patch Max could not open
    body = patcher_text.replace("\r\n", "\n").encode("utf-8") + b"\0"  # a CRLF checkout builds the same bytes
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
    if not data.endswith(b"\0"):
        raise ValueError("the patcher JSON does not end with the NUL byte Max writes")
    return data[8:12], json.loads(data[32:-1].decode("utf-8"))


def preset_names(folder: Path | None = None) -> list[str]:
    """The names `/preset` accepts: bridge/presets.py's own listing of the shipped presets/ folder (not
    $MUSICGEN_BRIDGE_PRESETS, which is one user's setting). That module needs neither torch nor the venv."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bridge import presets

    names = presets.list_presets(folder or presets.PRESETS_DIR)
    if not names:
        raise ValueError(f"no presets in {folder or presets.PRESETS_DIR}: the Preset menu would be empty")
    return names


def preset_menu(patcher: dict) -> dict:
    """The `valueof` attributes of the Preset live.menu in a .maxpat dict."""
    menus = [b["box"] for b in patcher["patcher"]["boxes"]
             if b["box"]["maxclass"] == "live.menu" and b["box"].get("varname") == PRESET_MENU]
    if len(menus) != 1:
        raise ValueError(f"expected one live.menu named {PRESET_MENU!r}, found {len(menus)}")
    return menus[0]["saved_attribute_attributes"]["valueof"]


def set_preset_menu(patcher: dict, names: list[str]) -> bool:
    """Make the Preset menu's items `names` (in place); True if anything changed."""
    values = preset_menu(patcher)
    wanted = {"parameter_enum": list(names), "parameter_mmax": len(names) - 1}
    if values.get("parameter_initial", [0])[0] >= len(names):
        wanted["parameter_initial"] = [0]
    changed = any(values.get(k) != v for k, v in wanted.items())
    values.update(wanted)
    return changed


def format_maxpat(value, indent: int = 0) -> str:
    """JSON in the .maxpat's layout (tabs; one key per line; lists of plain values on one line), so that a
    rewritten patch differs from the committed one only where it changed."""
    pad = "\t" * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}\t{json.dumps(k, ensure_ascii=False)}: {format_maxpat(v, indent + 1)}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in value) + "]"
        items = [f"{pad}\t{format_maxpat(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False)


def protocol_module(table_text: str) -> str:
    """mgb_protocol_data.js: the protocol table as an ES5 module (ASCII; Max's require() fills `exports`)."""
    table = json.loads(table_text)
    return ("// Generated by scripts/build_amxd.py from protocol.json (bridge/protocol.py's table): do not edit.\n"
            "// Built into the device so that it needs no file from the search path (Freeze, other folders).\n"
            "exports.TABLE = " + json.dumps(table, indent=1, ensure_ascii=True) + ";\n")


def script_dependencies(patcher: dict, folder: Path = DEVICE_DIR) -> list[str]:
    """The js object's script and every module it require()s, directly or not, in load order."""
    scripts = [b["box"]["text"].split()[1] for b in patcher["patcher"]["boxes"]
               if b["box"]["maxclass"] == "newobj" and b["box"]["text"].split()[0] == "js"]
    found: list[str] = []
    while scripts:
        name = scripts.pop(0)
        if name in found:
            continue
        found.append(name)
        path = folder / name
        if not path.exists():
            raise ValueError(f"{name} is used by the device but missing from {folder}")
        scripts += [f"{m}.js" for m in re.findall(r'require\("([\w.]+)"\)', path.read_text(encoding="utf-8"))]
    return found


def set_dependencies(patcher: dict, names: list[str]) -> bool:
    """List `names` in the patcher's dependency_cache, as Max does for files a frozen device must embed."""
    wanted = [{"name": n, "patcherrelativepath": ".", "type": "TEXT", "implicit": 1} for n in names]
    changed = patcher["patcher"].get("dependency_cache") != wanted
    patcher["patcher"]["dependency_cache"] = wanted
    return changed


def synced_maxpat(text: str, names: list[str], folder: Path = DEVICE_DIR) -> str:
    """The .maxpat text with its Preset menu listing `names` and its dependencies those of its scripts (the same
    text when it already does)."""
    patcher = json.loads(text)
    changed = set_preset_menu(patcher, names)
    changed = set_dependencies(patcher, script_dependencies(patcher, folder)) or changed
    if not changed:
        return text
    return format_maxpat(patcher) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=TARGET)
    parser.add_argument("--presets", type=Path, default=None,
                        help="folder of preset .json files for the Preset menu (default: the shipped presets/)")
    parser.add_argument("--check", action="store_true",
                        help="only check that the Preset menu and --out are up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    text = args.source.read_text(encoding="utf-8")
    try:
        module = protocol_module(PROTOCOL_JSON.read_text(encoding="utf-8"))
    except ValueError as exc:
        log.error("%s: %s", PROTOCOL_JSON, exc)
        return 1
    module_ok = PROTOCOL_MODULE.exists() and PROTOCOL_MODULE.read_text(encoding="utf-8") == module
    if not module_ok and not args.check:  # first: the dependencies below include it
        PROTOCOL_MODULE.write_text(module, encoding="utf-8")
        log.info("wrote %s from %s", PROTOCOL_MODULE, PROTOCOL_JSON)
    try:
        names = preset_names(args.presets)
        synced = synced_maxpat(text, names)
        data = build_amxd(synced)
    except ValueError as exc:  # no presets, no Preset menu, a patch that is not JSON, a missing script
        log.error("%s", exc)
        return 1
    if args.check:
        stale = [p for p, ok in ((args.source, synced == text), (PROTOCOL_MODULE, module_ok),
                                 (args.out, args.out.exists() and args.out.read_bytes() == data)) if not ok]
        for path in stale:
            log.error("%s is stale: run python scripts/build_amxd.py", path)
        if stale:
            return 1
        log.info("%s is up to date", args.out)
        return 0
    if synced != text:
        args.source.write_text(synced, encoding="utf-8")
        log.info("updated the Preset menu and dependencies of %s (presets: %s)", args.source, ", ".join(names))
    args.out.write_bytes(data)
    log.info("wrote %s (%d bytes)", args.out, len(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

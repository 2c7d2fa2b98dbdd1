"""Presets: named groups of settings in `presets/NAME.json`, for `/preset NAME` and `generate --preset NAME`.

A preset file is one JSON object:

    {"name": "lofi-keys",                      # must equal the file name without .json
     "description": "what it is for",          # optional
     "prompt": "lo-fi hip hop keys, {key}, {bpm} bpm, vinyl crackle",
     "key": "F minor",                         # optional; fills {key}
     "bars": 4, "chunk_bars": 1, "temperature": 1.0, "top_k": 250, "cfg": 3.0, ...}

Every other field is a setting from the protocol's settings table (`bridge/protocol.py`), checked against its
type and range; `/preset` sets the ones a preset leaves out to the table's defaults (except the seed). The
prompt is a template: `{bpm}` becomes the song tempo and `{key}` the preset's key when a job runs. A
comma-separated phrase whose field has no value (no tempo known, no key) is left out, so "drums, {bpm} bpm,
dusty" without a tempo reads "drums, dusty". The text says "N bpm" itself, so no tempo is appended twice.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError

from . import protocol

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
FIELDS = ("bpm", "key")
_FIELD_RE = re.compile(r"\{([^{}]*)\}")
_META = ("name", "description", "prompt", "key")
KEPT = ("seed",)  # settings a preset leaves alone unless it gives them


@dataclass(frozen=True)
class Preset:
    name: str
    prompt: str  # a template with {bpm} / {key}
    description: str = ""
    key: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # protocol setting name -> value (prompt excluded)

    def as_settings(self) -> dict[str, Any]:
        """Everything `/preset` sets, as /set name -> value: the prompt template, the preset's settings, and the
        table's defaults for the rest (so a preset sounds the same whatever was set before), except the seed,
        which stays the user's."""
        defaults = {s.name: s.default for s in protocol.SETTINGS if s.name not in KEPT}
        return {**defaults, "prompt": self.prompt, **self.settings}


def presets_dir() -> Path:
    """The folder presets are read from: $MUSICGEN_BRIDGE_PRESETS, else `presets/` of this checkout."""
    return Path(os.environ.get("MUSICGEN_BRIDGE_PRESETS") or PRESETS_DIR)


def list_presets(folder: str | Path | None = None) -> list[str]:
    folder = Path(folder) if folder else presets_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if NAME_RE.match(p.stem))


def load_preset(name: str, folder: str | Path | None = None) -> Preset:
    """Read and check one preset. UserError 'not_found' for an unknown name, 'bad_input' for a broken file."""
    folder = Path(folder) if folder else presets_dir()
    if not NAME_RE.match(name):  # names become file names: no paths, no dots
        raise UserError(f"preset name {name!r} is not valid: use lowercase letters, digits, - and _ "
                        f"(presets: {', '.join(list_presets(folder)) or 'none'})", code="bad_args")
    path = folder / f"{name}.json"
    if not path.is_file():
        raise UserError(f"no preset named {name!r}; presets: {', '.join(list_presets(folder)) or 'none'} "
                        f"(in {folder})", code="not_found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read preset {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"preset {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return parse_preset(data, name, str(path))


def parse_preset(data: Any, name: str, source: str = "preset") -> Preset:
    """Check a preset's JSON object; errors name the file and the field."""
    def bad(problem: str) -> UserError:
        return UserError(f"{source}: {problem}")

    if not isinstance(data, dict):
        raise bad("must be a JSON object")
    if data.get("name") != name:
        raise bad(f"\"name\" must be {name!r} (the file name), got {data.get('name')!r}")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("\"prompt\" must be a non-empty string")
    for found in _FIELD_RE.findall(prompt):
        if found not in FIELDS:
            raise bad(f"\"prompt\" has an unknown field {{{found}}}; use {{bpm}} or {{key}}")
    if "{" in _FIELD_RE.sub("", prompt) or "}" in _FIELD_RE.sub("", prompt):
        raise bad("\"prompt\" has an unmatched { or }")
    key = data.get("key")
    if key is not None and (not isinstance(key, str) or not key.strip() or len(key) > 40):
        raise bad("\"key\" must be a short string such as \"F minor\"")
    if "{key}" in prompt and key is None:
        raise bad("\"prompt\" uses {key} but the preset has no \"key\"")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise bad("\"description\" must be a string")
    longest = render_prompt(prompt, bpm="999.999", key=key)
    if len(longest) > protocol.TEXT_MAX_LEN:
        raise bad(f"\"prompt\" is too long ({len(longest)} > {protocol.TEXT_MAX_LEN} characters)")
    settings = {}
    names = [s.name for s in protocol.SETTINGS if s.name != "prompt"]
    for k, v in data.items():
        if k in _META:
            continue
        if k not in names:
            raise bad(f"unknown field {k!r}; a preset may set {', '.join(names)}")
        try:
            settings[k] = protocol.validate("/set", [k, v])[1]
        except protocol.ProtocolError as exc:
            raise bad(f"{k}: {exc.message}") from None
        if isinstance(v, bool) or (protocol.setting(k).type == "i" and isinstance(v, float)):
            raise bad(f"{k} must be a whole number, got {v!r}")
    return Preset(name=name, prompt=prompt, description=description, key=key, settings=settings)


def render_prompt(template: str, bpm: str | None = None, key: str | None = None) -> str:
    """Fill {bpm} and {key}. Comma-separated phrases whose field has no value are left out. Text that is not
    one of these fields (a literal brace a user typed) is kept as it is."""
    values = {"bpm": bpm, "key": key}
    parts = []
    for part in template.split(","):
        missing = False
        for name, value in values.items():
            if "{" + name + "}" in part:
                if value is None or not str(value).strip():
                    missing = True
                else:
                    part = part.replace("{" + name + "}", str(value).strip())
        if not missing:
            parts.append(part)
    text = ",".join(parts).strip()
    return re.sub(r"\s+,", ",", text).strip(", ")

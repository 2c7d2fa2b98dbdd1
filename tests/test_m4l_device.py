"""The Max for Live device: the .maxpat source, the built .amxd, and their agreement with the bridge."""

import importlib.util
import json
import re
import struct
from pathlib import Path

import pytest

from bridge import protocol
from bridge.presets import PRESETS_DIR, list_presets, load_preset

ROOT = Path(__file__).resolve().parent.parent
DEVICE = ROOT / "max_for_live"
MAXPAT = DEVICE / "MusicGenBridge.maxpat"
AMXD = DEVICE / "MusicGenBridge.amxd"

# Real Max objects the device may use, with their (inlets, outlets) where those are fixed.
NEWOBJ_IO = {
    "live.thisdevice": (1, 3), "udpreceive": (1, 1), "udpsend": (1, 0), "metro": (2, 1), "js": None,
    "route": None, "prepend": (1, 1), "buffer~": (1, 2), "sig~": (1, 1), "groove~": None, "record~": None,
    "plugin~": (2, 2), "plugout~": (2, 2), "opendialog": (1, 2), "conformpath": (1, 2), "dspstate~": (1, 4),
    "pattr": (1, 3),
}
UI_IO = {
    "message": (2, 1), "comment": (1, 0), "textedit": (1, 4), "live.menu": (1, 3), "live.text": (1, 2),
    "live.numbox": (1, 2), "live.dial": (1, 2), "live.comment": (1, 0), "waveform~": (5, 6),
}
LIVE_DEVICE_HEIGHT = 169


def load_build_script():
    spec = importlib.util.spec_from_file_location("build_amxd", ROOT / "scripts" / "build_amxd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def patcher():
    return json.loads(MAXPAT.read_text(encoding="utf-8"))["patcher"]


@pytest.fixture(scope="module")
def boxes(patcher):
    return {b["box"]["id"]: b["box"] for b in patcher["boxes"]}


def objects(boxes, name):
    """newobj boxes whose object class is `name`."""
    return [b for b in boxes.values() if b["maxclass"] == "newobj" and b["text"].split()[0] == name]


def of_class(boxes, maxclass):
    return [b for b in boxes.values() if b["maxclass"] == maxclass]


# --- the .amxd ---

def test_amxd_header_is_an_audio_effect():
    data = AMXD.read_bytes()
    assert data[:4] == b"ampf" and struct.unpack("<I", data[4:8]) == (4,) and data[8:12] == b"aaaa"
    assert data[12:16] == b"meta" and struct.unpack("<II", data[16:24]) == (4, 1)
    assert data[24:28] == b"ptch"
    assert struct.unpack("<I", data[28:32]) == (len(data) - 32,)
    assert data.endswith(b"}\n\0"), "the patcher JSON ends with the NUL Max writes, counted in the length"


def test_amxd_holds_the_maxpat_json():
    kind, patch = load_build_script().parse_amxd(AMXD.read_bytes())
    assert kind == b"aaaa"
    assert patch == json.loads(MAXPAT.read_text(encoding="utf-8"))


def test_rebuilding_gives_the_committed_bytes():
    build = load_build_script()
    text = MAXPAT.read_text(encoding="utf-8")
    assert build.build_amxd(text) == AMXD.read_bytes(), "run: python scripts/build_amxd.py"
    assert build.build_amxd(text.replace("\n", "\r\n")) == AMXD.read_bytes(), "line endings must not matter"


def test_parse_rejects_damaged_files():
    build = load_build_script()
    data = AMXD.read_bytes()
    with pytest.raises(ValueError):
        build.parse_amxd(b"xmpf" + data[4:])
    with pytest.raises(ValueError):
        build.parse_amxd(data[:-1])
    with pytest.raises(ValueError, match="NUL"):
        body = data[32:-1]
        build.parse_amxd(data[:28] + struct.pack("<I", len(body)) + body)
    with pytest.raises(ValueError):
        build.build_amxd("{not json")


# --- the patch ---

def test_box_ids_unique(patcher):
    ids = [b["box"]["id"] for b in patcher["boxes"]]
    assert len(ids) == len(set(ids))


def test_every_object_is_a_known_max_object_with_the_right_inlets(boxes):
    for box in boxes.values():
        if box["maxclass"] == "newobj":
            name = box["text"].split()[0]
            assert name in NEWOBJ_IO, f"unknown object {name!r}"
            io = NEWOBJ_IO[name]
        else:
            assert box["maxclass"] in UI_IO, f"unknown box class {box['maxclass']!r}"
            io = UI_IO[box["maxclass"]]
        if io is not None:
            assert (box["numinlets"], box["numoutlets"]) == io, box["id"]
        assert len(box["outlettype"]) == box["numoutlets"], box["id"]
    for box in objects(boxes, "route"):
        n = len(box["text"].split()) - 1
        assert (box["numinlets"], box["numoutlets"]) == (n + 1, n + 1)
    for box in objects(boxes, "record~") + objects(boxes, "groove~"):
        channels = int(box["text"].split()[2])
        expected = (channels + 2, 1) if box["text"].startswith("record~") else (3, channels + 1)
        assert (box["numinlets"], box["numoutlets"]) == expected, box["text"]


def test_every_cord_joins_existing_boxes_at_real_inlets_and_outlets(patcher, boxes):
    assert patcher["lines"]
    for line in patcher["lines"]:
        (src, outlet), (dst, inlet) = line["patchline"]["source"], line["patchline"]["destination"]
        assert src in boxes and dst in boxes, line
        assert 0 <= outlet < boxes[src]["numoutlets"], line
        assert 0 <= inlet < boxes[dst]["numinlets"], line


def test_osc_ports_are_the_bridge_defaults(boxes):
    (send,) = objects(boxes, "udpsend")
    (receive,) = objects(boxes, "udpreceive")
    assert send["text"].split()[1:3] == [protocol.HOST, str(protocol.PORT)]
    assert receive["text"].split()[1] == str(protocol.REPLY_PORT)


def test_osc_objects_are_wired_to_the_js(patcher, boxes):
    (js,) = objects(boxes, "js")
    (send,) = objects(boxes, "udpsend")
    (receive,) = objects(boxes, "udpreceive")
    cords = {(l["patchline"]["source"][0], l["patchline"]["source"][1], l["patchline"]["destination"][0])
             for l in patcher["lines"]}
    assert (js["id"], 0, send["id"]) in cords
    assert (receive["id"], 0, js["id"]) in cords


def test_javascript_files_exist(boxes):
    (js,) = objects(boxes, "js")
    script = DEVICE / js["text"].split()[1]
    assert script.exists()
    source = script.read_text(encoding="utf-8")
    for module in re.findall(r'require\("([\w.]+)"\)', source):
        assert (DEVICE / f"{module}.js").exists(), module
    for name in re.findall(r'new File\("([\w.]+)"', source):
        assert (DEVICE / name).exists(), name


def test_patch_commands_of_the_js_all_have_a_route(boxes):
    """Every name mgb_bridge_core.js and the wrapper send to the patch reaches an object through the route under the js."""
    (route,) = [b for b in objects(boxes, "route") if "engine" in b["text"].split()]
    routed = set(route["text"].split()[1:])
    core = (DEVICE / "mgb_bridge_core.js").read_text(encoding="utf-8")
    wrapper = (DEVICE / "musicgen_bridge.js").read_text(encoding="utf-8")
    used = set(re.findall(r'ui\("(\w+)"(?! \+)', core)) | {"status", "error"}
    used |= set(re.findall(r'out\("(\w+)"', wrapper))
    for prefix in re.findall(r'ui\("(\w+)" \+ ', core):  # "buf" + slot and the like: two players
        used |= {prefix + "0", prefix + "1"}
    assert used and used <= routed, used - routed


def test_ui_messages_reach_functions_of_the_wrapper(patcher, boxes):
    (js,) = objects(boxes, "js")
    into_js = {l["patchline"]["source"][0] for l in patcher["lines"] if l["patchline"]["destination"][0] == js["id"]}
    wrapper = (DEVICE / "musicgen_bridge.js").read_text(encoding="utf-8")
    functions = set(re.findall(r"^function (\w+)\(", wrapper, re.M))
    words = set()
    for box_id in into_js:
        box = boxes[box_id]
        if box["maxclass"] == "message":
            words.add(box["text"].split()[0])
        elif box["text"].startswith("prepend "):
            words.add(box["text"].split()[1])
    assert {"init", "beat", "prompt", "generate", "continue_track", "jam", "stop", "param"} <= words
    assert words <= functions, words - functions
    assert "anything" in functions  # OSC arrives named by its address


def test_param_boxes_name_real_settings(boxes):
    for box in objects(boxes, "prepend"):
        words = box["text"].split()
        if words[1] == "param":
            protocol.setting(words[2])  # raises for a name the bridge does not know


def test_the_controls_are_there(boxes):
    texts = sorted(b["text"] for b in of_class(boxes, "live.text"))
    assert texts == ["Continue", "Generate", "Jam", "Rec/Open", "Stop"]
    menus = {b["varname"]: b["saved_attribute_attributes"]["valueof"]["parameter_enum"]
             for b in of_class(boxes, "live.menu")}
    assert menus["Bars"] == ["1", "2", "4", "8", "16"]
    assert menus["Melody"][:4] == ["none", "selected MIDI clip", "hum", "audio file"]  # saved sets keep their index
    assert menus["Melody"][4] == "hum (bridge mic)" and menus["Preset"]
    assert menus["Takes"] == ["1 take", "2 takes", "3 takes", "4 takes"]
    assert len(of_class(boxes, "textedit")) == 1 and len(of_class(boxes, "waveform~")) == 1
    assert len(of_class(boxes, "live.numbox")) == 3


def test_live_parameters_have_unique_names_and_ranges_the_bridge_accepts(boxes):
    names = []
    for box in boxes.values():
        if box.get("parameter_enable"):
            values = box["saved_attribute_attributes"]["valueof"]
            names.append(values["parameter_longname"])
    assert len(names) == len(set(names))
    limits = {"Temperature": "temperature", "Guidance": "cfg", "Top K": "top_k"}
    for box in of_class(boxes, "live.numbox"):
        values = box["saved_attribute_attributes"]["valueof"]
        setting = protocol.setting(limits[values["parameter_longname"]])
        assert setting.min <= values["parameter_mmin"] <= values["parameter_mmax"] <= setting.max


def test_presentation_fits_the_device(patcher, boxes):
    width = patcher["devicewidth"]
    shown = [b for b in boxes.values() if b.get("presentation")]
    assert len(shown) >= 15
    for box in shown:
        x, y, w, h = box["presentation_rect"]
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= LIVE_DEVICE_HEIGHT, box["id"]


def test_buffers_are_private_to_each_device_instance(boxes):
    # '---' makes Max for Live give each instance its own buffer name.
    for name in ("buffer~", "groove~", "record~"):
        for box in objects(boxes, name):
            assert box["text"].split()[1].startswith("---"), box["text"]


# --- the Preset menu: the presets the bridge ships ---

def preset_menu_items(maxpat_text: str) -> list[str]:
    patch = json.loads(maxpat_text)["patcher"]
    (menu,) = [b["box"] for b in patch["boxes"]
               if b["box"]["maxclass"] == "live.menu" and b["box"].get("varname") == "Preset"]
    return menu["saved_attribute_attributes"]["valueof"]["parameter_enum"]


def test_preset_menu_is_exactly_the_shipped_presets():
    # The menu sends its item as `/preset ITEM`; the bridge only knows the files in presets/. A preset added,
    # renamed or removed without `python scripts/build_amxd.py` fails here.
    items = preset_menu_items(MAXPAT.read_text(encoding="utf-8"))
    assert items == list_presets(PRESETS_DIR), "run: python scripts/build_amxd.py"
    for name in items:
        load_preset(name, PRESETS_DIR)  # /preset accepts it (raises UserError otherwise)
    (menu,) = [b for b in json.loads(MAXPAT.read_text(encoding="utf-8"))["patcher"]["boxes"]
               if b["box"].get("varname") == "Preset"]
    assert menu["box"]["saved_attribute_attributes"]["valueof"]["parameter_mmax"] == len(items) - 1


def test_build_check_passes_for_the_committed_files():
    assert load_build_script().main(["--check"]) == 0


def test_maxpat_layout_is_what_the_build_writes():
    # The build rewrites the .maxpat when the menu changes; with the same layout the diff is only the menu.
    build = load_build_script()
    text = MAXPAT.read_text(encoding="utf-8")
    assert build.format_maxpat(json.loads(text)) + "\n" == text


def test_build_puts_a_new_preset_into_the_menu(tmp_path):
    build = load_build_script()
    presets = tmp_path / "presets"
    presets.mkdir()
    for path in PRESETS_DIR.glob("*.json"):
        (presets / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (presets / "zz-test.json").write_text(json.dumps({"name": "zz-test", "prompt": "test, {bpm} bpm"}))
    source, out = tmp_path / "device.maxpat", tmp_path / "device.amxd"
    original = MAXPAT.read_text(encoding="utf-8")
    source.write_text(original, encoding="utf-8")
    out.write_bytes(AMXD.read_bytes())
    argv = ["--source", str(source), "--out", str(out), "--presets", str(presets)]

    assert build.main(argv + ["--check"]) == 1, "the new preset makes the menu stale"
    assert build.main(argv) == 0
    rebuilt = source.read_text(encoding="utf-8")
    assert preset_menu_items(rebuilt) == list_presets(presets) and "zz-test" in preset_menu_items(rebuilt)
    kind, patch = build.parse_amxd(out.read_bytes())
    assert patch == json.loads(rebuilt)
    assert build.main(argv + ["--check"]) == 0
    # Nothing but the menu changed: taking the preset out again gives the original text back.
    (presets / "zz-test.json").unlink()
    assert build.main(argv) == 0
    assert source.read_text(encoding="utf-8") == original
    assert out.read_bytes() == AMXD.read_bytes()


# --- what real Live and Max do (issue 14) ---

def test_buttons_are_hidden_parameters_so_a_set_reopens_with_nothing_running(boxes):
    # parameter_invisible 2 = Hidden: neither stored with the set nor automated (Jam does not reopen lit).
    for box in of_class(boxes, "live.text"):
        assert box["saved_attribute_attributes"]["valueof"]["parameter_invisible"] == 2, box["text"]


def test_prompt_is_stored_with_the_set(patcher, boxes):
    (store,) = objects(boxes, "pattr")
    values = store["saved_attribute_attributes"]["valueof"]
    assert store["saved_object_attributes"]["parameter_enable"] == 1
    assert values["parameter_type"] == 3 and values["parameter_invisible"] == 1  # blob, stored only
    (js,) = objects(boxes, "js")
    cords = {(l["patchline"]["source"][0], l["patchline"]["destination"][0]) for l in patcher["lines"]}
    (restore,) = [b for b in objects(boxes, "prepend") if b["text"] == "prepend storedprompt"]
    assert (store["id"], restore["id"]) in cords and (restore["id"], js["id"]) in cords


def test_top_k_is_a_float_parameter_shown_as_an_integer(boxes):
    # Live's Int parameters stop at 255; the bridge accepts up to 2048 (the js rounds).
    (top_k,) = [b for b in of_class(boxes, "live.numbox") if b["varname"] == "Top K"]
    values = top_k["saved_attribute_attributes"]["valueof"]
    assert values["parameter_type"] == 0 and values["parameter_unitstyle"] == 0 and values["parameter_mmax"] > 255


def test_audio_file_paths_are_slash_style(boxes):
    # `native` gives HFS colon paths on macOS, which Python cannot open.
    (conform,) = objects(boxes, "conformpath")
    assert conform["text"].split()[1:] == ["slash", "boot"]


def test_buffers_are_not_preallocated_at_a_minute(boxes):
    for box in objects(boxes, "buffer~"):
        words = box["text"].split()
        assert len(words) == 2 or float(words[2]) <= 1000, box["text"]


def test_sample_rate_reaches_the_js(patcher, boxes):
    (dsp,) = objects(boxes, "dspstate~")
    (prep,) = [b for b in objects(boxes, "prepend") if b["text"] == "prepend samplerate"]
    cords = {(l["patchline"]["source"][0], l["patchline"]["source"][1], l["patchline"]["destination"][0])
             for l in patcher["lines"]}
    assert (dsp["id"], 1, prep["id"]) in cords  # outlet 1: the sampling rate


def test_scripts_are_uniquely_named_dependencies_with_the_protocol_built_in(patcher):
    build = load_build_script()
    listed = [d["name"] for d in patcher["dependency_cache"]]
    assert listed == build.script_dependencies({"patcher": patcher})
    assert "protocol.json" not in listed and "mgb_protocol_data.js" in listed
    assert all(n == "musicgen_bridge.js" or n.startswith("mgb_") for n in listed)
    wrapper = (DEVICE / "musicgen_bridge.js").read_text(encoding="utf-8")
    assert "new File(" not in wrapper, "nothing is read through the search path at init"
    module = (DEVICE / "mgb_protocol_data.js").read_text(encoding="utf-8")
    assert module == build.protocol_module((DEVICE / "protocol.json").read_text(encoding="utf-8"))
    assert module.isascii()


def test_int_parameters_stay_in_lives_int_range(boxes):
    # Live's Int parameters (parameter_type 1) are limited to 0..255: a wider range must be a Float parameter.
    for box in boxes.values():
        values = box.get("saved_attribute_attributes", {}).get("valueof", {})
        if box.get("parameter_enable") and values.get("parameter_type") == 1:
            assert 0 <= values.get("parameter_mmin", 0) <= values.get("parameter_mmax", 127) <= 255, box["id"]

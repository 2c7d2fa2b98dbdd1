"use strict";

// Runs musicgen_bridge.js the way Max's js object would: as a script with Max's globals (outlet, post, LiveAPI,
// Task, require, messagename, arrayfromargs), here all faked. There is no File: the device reads nothing by name
// (a frozen device or a copy in another folder has no protocol.json next to it).

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const os = require("node:os");
const vm = require("node:vm");
const { FakeLive } = require("../test_support/fake_live.js");

const DIR = path.join(__dirname, "..");

// dir: the folder Max's require() searches (a frozen-like copy in one test).
function loadDevice(live, dir = DIR) {
  const outlets = [];
  const tasks = [];
  const factory = live.factory();
  const context = {
    outlets: 0,
    inlets: 0,
    autowatch: 0,
    max: { os: "macintosh" },
    post: () => {},
    outlet: (n, list) => outlets.push([n, ...list]),
    arrayfromargs: (args) => Array.prototype.slice.call(args),
    require: (name) => require(path.join(dir, `${name}.js`)),
    LiveAPI: function (a, b) {
      return typeof a === "function" ? factory(b, a) : factory(a);
    },
    Task: function (fn) {
      this.fn = fn;
      this.schedule = () => tasks.push(this);
      this.repeat = () => tasks.push(this);
      this.cancel = () => {};
    },
  };
  vm.createContext(context);
  vm.runInContext(fs.readFileSync(path.join(dir, "musicgen_bridge.js"), "utf8"), context);
  // Max sets `messagename` before calling anything().
  const osc = (address, ...args) => {
    context.messagename = address;
    context.anything(...args);
  };
  return { context, outlets, tasks, osc };
}

test("the Max wrapper declares its inlets and outlets and starts on init", () => {
  const live = new FakeLive();
  const { context, outlets } = loadDevice(live);
  assert.equal(context.inlets, 1);
  assert.equal(context.outlets, 2);
  assert.equal(outlets.length, 0, "nothing before live.thisdevice says Live is ready");
  context.init();
  const sent = outlets.filter((o) => o[0] === 0).map((o) => o[1]);
  assert.deepEqual(sent, ["/ping", "/status", "/tempo", "/transport", "/set"]); // /set key: Live 12
});

test("UI messages become OSC on outlet 0, patch commands on outlet 1", () => {
  const live = new FakeLive();
  const { context, outlets, osc } = loadDevice(live);
  context.init();
  outlets.length = 0;
  context.prompt("dusty", "boom", "bap");
  context.bars(2);
  context.param("temperature", 0.9);
  context.generate(1);
  context.generate(0); // a release, not a press
  assert.deepEqual(outlets.filter((o) => o[0] === 0).map((o) => o.slice(1)), [
    ["/set", "temperature", 0.9],
    ["/generate", 2, "dusty boom bap", 4],
  ]);
  osc("/done", 2, "/out/x.wav", 8.0, 4.0);
  assert.deepEqual(outlets.find((o) => o[1] === "viewbuf"), [1, "viewbuf", "replace", "/out/x.wav"]);
  assert.equal(live.slots[0].file, "/out/x.wav");
});

test("the watchdog task shows 'engine lost' when heartbeats stop", () => {
  const live = new FakeLive();
  const { context, outlets, tasks, osc } = loadDevice(live);
  let now = 1_000_000;
  // The wrapper reads the clock with `new Date().getTime()`; give its context a clock we control.
  context.Date = class {
    getTime() {
      return now;
    }
  };
  context.init();
  const watchdog = tasks[0];
  osc("/heartbeat", 0);
  now += 1000;
  watchdog.fn();
  assert.equal(outlets.filter((o) => o[1] === "engine" && /lost/.test(o[2])).length, 0);
  now += 3000;
  watchdog.fn();
  assert.ok(outlets.some((o) => o[1] === "engine" && /engine lost/.test(o[2])));
});

test("parameter values restored while loading are applied once Live is ready, quietly", () => {
  const live = new FakeLive();
  const { context, outlets } = loadDevice(live);
  context.param("top_k", 100);
  context.bars(4);
  context.melody(3); // audio file: must not open a dialog while the set loads
  context.preset("lofi-keys"); // the bridge keeps its own preset
  assert.equal(outlets.length, 0);
  context.init();
  const sent = outlets.filter((o) => o[0] === 0).map((o) => o.slice(1));
  assert.deepEqual(sent.filter((m) => m[0] === "/set"), [["/set", "key", ""], ["/set", "top_k", 100]]);
  assert.equal(sent.filter((m) => m[0] === "/preset").length, 0);
  assert.equal(outlets.filter((o) => o[1] === "pickfile").length, 0);
  outlets.length = 0;
  context.generate(1);
  // 16 bars were restored; the audio-file melody has no file yet, so generation is refused with a reason.
  assert.equal(outlets.filter((o) => o[1] === "/generate").length, 0);
  assert.ok(outlets.some((o) => o[1] === "error" && /audio file/.test(o[2])));
  assert.equal(outlets.filter((o) => o[1] === "/melody/record/start").length, 0);
  context.melody(0);
  context.generate(1);
  assert.deepEqual(outlets.find((o) => o[1] === "/generate").slice(3), ["", 16]);
});

test("the prompt is stored with the set and restored; an empty prompt (a bare bang) is empty", () => {
  const live = new FakeLive();
  const { context, outlets } = loadDevice(live);
  context.storedprompt("dusty", "tape", "loop"); // Live restores the pattr while the device loads
  assert.deepEqual(outlets, [[1, "promptview", "set", "dusty tape loop"]], "shown in the textedit");
  context.init();
  outlets.length = 0;
  context.generate(1);
  assert.deepEqual(outlets.find((o) => o[1] === "/generate").slice(3), ["dusty tape loop", 4]);
  context.prompt("bang"); // route text -> prepend prompt, for an empty textedit
  assert.deepEqual(outlets.filter((o) => o[1] === "promptstore").at(-1), [1, "promptstore", "set", ""]);
  context.generate(1);
  assert.deepEqual(outlets.filter((o) => o[1] === "/generate").at(-1).slice(3), ["", 4]);
});

test("a Task is kept referenced until it fires", () => {
  const live = new FakeLive();
  const { context, tasks, osc } = loadDevice(live);
  context.init();
  osc("/heartbeat", 0);
  live.setSong("is_playing", 1);
  context.param("chunk_bars", 1);
  context.melody(2);
  context.samplerate(48000);
  context.capture(1); // the hum: bar-line jobs, then Tasks for the record~ tail and the file's settling
  for (let t = 0.5; t <= 20; t += 0.5) {
    live.song.current_song_time = t;
    context.beat();
  }
  const pending = tasks.filter((t) => t !== tasks[0]); // tasks[0]: the watchdog
  assert.equal(pending.length, 1);
  assert.equal(vm.runInContext("tasks.length", context), 1, "the wrapper holds the Task");
  pending[0].fn();
  assert.equal(vm.runInContext("tasks.length", context), 1, "the next one (write settle) is held in turn");
  tasks.at(-1).fn();
  assert.equal(vm.runInContext("tasks.length", context), 0, "released once fired");
});

test("frozen-like: the device works from a folder holding only the files its patch lists as dependencies", () => {
  const patch = JSON.parse(fs.readFileSync(path.join(DIR, "MusicGenBridge.maxpat"), "utf8")).patcher;
  const listed = patch.dependency_cache.map((d) => d.name);
  assert.ok(!listed.includes("protocol.json"), "nothing is read through the search path");
  const frozen = fs.mkdtempSync(path.join(os.tmpdir(), "mgb-frozen-"));
  try {
    for (const name of listed) fs.copyFileSync(path.join(DIR, name), path.join(frozen, name));
    const live = new FakeLive();
    const { context, outlets } = loadDevice(live, frozen);
    context.init();
    assert.deepEqual(outlets.filter((o) => o[0] === 0).map((o) => o[1]).slice(0, 2), ["/ping", "/status"]);
    for (const name of listed) assert.match(name, /^(musicgen_bridge|mgb_\w+)\.js$/, "unique names only");
  } finally {
    fs.rmSync(frozen, { recursive: true, force: true });
  }
});

"use strict";

// Runs musicgen_bridge.js the way Max's js object would: as a script with Max's globals (outlet, post, LiveAPI,
// Task, File, require, messagename, arrayfromargs), here all faked.

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");
const { FakeLive } = require("../test_support/fake_live.js");

const DIR = path.join(__dirname, "..");

function loadDevice(live) {
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
    require: (name) => require(path.join(DIR, `${name}.js`)),
    LiveAPI: function (a, b) {
      return typeof a === "function" ? factory(b, a) : factory(a);
    },
    Task: function (fn) {
      this.fn = fn;
      this.schedule = () => tasks.push(this);
      this.repeat = () => tasks.push(this);
      this.cancel = () => {};
    },
    File: function (name) {
      this.isopen = true;
      this.text = fs.readFileSync(path.join(DIR, name), "utf8");
      this.position = 0;
      this.eof = this.text.length;
      this.readstring = (count) => {
        const piece = this.text.slice(this.position, this.position + count);
        this.position += piece.length;
        return piece;
      };
      this.close = () => {};
    },
  };
  vm.createContext(context);
  vm.runInContext(fs.readFileSync(path.join(DIR, "musicgen_bridge.js"), "utf8"), context);
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
  assert.deepEqual(sent, ["/ping", "/status", "/tempo", "/transport"]);
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
  assert.deepEqual(sent.filter((m) => m[0] === "/set"), [["/set", "top_k", 100]]);
  assert.equal(sent.filter((m) => m[0] === "/preset").length, 0);
  assert.equal(outlets.filter((o) => o[1] === "pickfile").length, 0);
  outlets.length = 0;
  context.generate(1);
  // 16 bars were restored; the audio-file melody has no file yet, so generation is refused with a reason.
  assert.equal(outlets.filter((o) => o[1] === "/generate").length, 0);
  assert.ok(outlets.some((o) => o[1] === "error" && /audio file/.test(o[2])));
  context.melody(0);
  context.generate(1);
  assert.deepEqual(outlets.find((o) => o[1] === "/generate").slice(3), ["", 16]);
});

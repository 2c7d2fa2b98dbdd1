// Max wrapper for the `js musicgen_bridge.js` object in MusicGenBridge.maxpat: it turns Max messages into calls
// on mgb_bridge_core.js and the core's output into outlet messages. All logic lives in mgb_bridge_core.js.
//
// Freeze-safe: everything it needs comes through require() of uniquely named modules that the patch lists as
// dependencies (mgb_bridge_core, mgb_protocol, mgb_protocol_data with the protocol table built in), so a frozen
// .amxd or a copy in another folder finds them; nothing is read from disk by name.
//
// Inlet 0: OSC from `udpreceive` (messages named by their address, e.g. "/done 7 /tmp/x.wav 8. 4."), UI messages
//          (prompt, storedprompt, preset, bars, takes, melody, capture, melodyfile, param, generate,
//          continue_track, jam, stop), the metro's "beat", "samplerate" from dspstate~, and "init" from
//          live.thisdevice.
// Outlet 0: OSC messages for `udpsend`.  Outlet 1: patch commands for the `route` below the js object.

autowatch = 1;
inlets = 1;
outlets = 2;

var core = require("mgb_bridge_core");
var Protocol = require("mgb_protocol").Protocol;
var TABLE = require("mgb_protocol_data").TABLE;

var bridge = null;
var watchdog = null;
var TICK_MS = 250;
// Live parameters report their saved values while the device loads, before Live's API is ready: keep them.
var early = [];
// Tasks waiting to fire. Max may collect a Task nothing refers to before it fires: keep each until it has run.
var tasks = [];

function whenReady(fn) {
  if (bridge) fn();
  else early.push(fn);
}

function out(name) {
  var args = arrayfromargs(arguments);
  outlet(name.charAt(0) === "/" ? 0 : 1, args);
}

function makeLiveApi(path, callback) {
  return callback ? new LiveAPI(callback, path) : new LiveAPI(path);
}

function later(fn, ms) {
  var task = new Task(function () {
    for (var i = 0; i < tasks.length; i++) {
      if (tasks[i] === task) {
        tasks.splice(i, 1);
        break;
      }
    }
    fn();
  }, this);
  tasks.push(task);
  task.schedule(ms);
}

function tempDir() {
  return max.os === "windows" ? "C:/Users/Public" : "/tmp";
}

// Words from Max as one text. An empty textedit (or an empty stored prompt) arrives as a bare `bang`.
function textOf(args) {
  if (args.length === 1 && String(args[0]) === "bang") return "";
  return args.join(" ");
}

// live.thisdevice bangs once Live's API can be used; LiveAPI objects made earlier would not work.
function init() {
  if (bridge) return;
  bridge = core.createBridge({
    protocol: new Protocol(TABLE),
    liveApi: makeLiveApi,
    out: out,
    now: function () { return new Date().getTime(); },
    later: later,
    log: function (text) { post("musicgen-bridge: " + text + "\n"); },
    recordDir: tempDir(),
    os: max.os
  });
  bridge.start();
  for (var i = 0; i < early.length; i++) early[i]();
  early = [];
  watchdog = new Task(function () { bridge.tick(); }, this);
  watchdog.interval = TICK_MS;
  watchdog.repeat();
}

// OSC from the bridge arrives as messages named by their address.
function anything() {
  if (!bridge || messagename.charAt(0) !== "/") return;
  bridge.receive(messagename, arrayfromargs(arguments));
}

// A live.text button sends 1 when pressed; ignore anything that is not a press. The buttons are hidden
// parameters (not stored), so none of them fires while a set or a device preset loads.
function pressed(args) {
  return args.length === 0 || Number(args[0]) !== 0;
}

function generate() {
  if (bridge && pressed(arrayfromargs(arguments))) bridge.generate();
}

function continue_track() {
  if (bridge && pressed(arrayfromargs(arguments))) bridge.continueTrack();
}

function stop() {
  if (bridge && pressed(arrayfromargs(arguments))) bridge.stop();
}

// Rec/Open: record the hum, open the file dialog or start/stop the bridge's microphone (by the Melody menu).
function capture() {
  if (bridge && pressed(arrayfromargs(arguments))) bridge.capture();
}

function jam(on) {
  if (bridge) bridge.jam(Number(on) !== 0);
}

// Typed into the textedit: use it and store it with the set (the pattr below is a hidden blob parameter).
function prompt() {
  var text = textOf(arrayfromargs(arguments));
  out("promptstore", "set", text);
  whenReady(function () { bridge.setPrompt(text); });
}

// The stored prompt, restored by Live with the set or a device preset: show it and use it.
function storedprompt() {
  var text = textOf(arrayfromargs(arguments));
  out("promptview", "set", text);
  whenReady(function () { bridge.setPrompt(text); });
}

// Only a choice made after loading: the bridge keeps its own preset across device reloads.
function preset(name) {
  if (bridge) bridge.setPreset(String(name));
}

function bars(index) {
  whenReady(function () { bridge.setBars(index); });
}

// The Takes menu's index: 0 = 1 take ... 3 = 4 takes.
function takes(index) {
  whenReady(function () { bridge.setTakes(Number(index) + 1); });
}

// Choosing a source never starts a recording or opens a dialog (Rec/Open does), so restoring it is safe.
function melody(index) {
  whenReady(function () { bridge.setMelody(index); });
}

function melodyfile() {
  if (bridge) bridge.setMelodyFile(textOf(arrayfromargs(arguments)));
}

function param(name, value) {
  whenReady(function () { bridge.setParam(String(name), value); });
}

function beat() {
  if (bridge) bridge.beat();
}

// dspstate~'s sample rate: recordings are sized in samples at Live's rate.
function samplerate(rate) {
  whenReady(function () { bridge.setSampleRate(rate); });
}

// Where recordings for Continue and the hum are written (default /tmp, C:/Users/Public on Windows).
function recdir() {
  if (bridge) bridge.recordDir = textOf(arrayfromargs(arguments));
}

// Helpers are not messages: `local` hides them from Max.
out.local = 1;
makeLiveApi.local = 1;
later.local = 1;
tempDir.local = 1;
whenReady.local = 1;
pressed.local = 1;
textOf.local = 1;

function notifydeleted() {
  if (watchdog) watchdog.cancel();
  for (var i = 0; i < tasks.length; i++) tasks[i].cancel();
  tasks = [];
}

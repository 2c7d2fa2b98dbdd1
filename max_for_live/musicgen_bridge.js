// Max wrapper for the `js musicgen_bridge.js` object in MusicGenBridge.maxpat: it turns Max messages into calls
// on bridge_core.js and the core's output into outlet messages. All logic lives in bridge_core.js.
//
// Inlet 0: OSC from `udpreceive` (messages named by their address, e.g. "/done 7 /tmp/x.wav 8. 4."), UI messages
//          (prompt, preset, bars, melody, melodyfile, param, generate, continue_track, jam, stop), the metro's
//          "beat", and "init" from live.thisdevice.
// Outlet 0: OSC messages for `udpsend`.  Outlet 1: patch commands for the `route` below the js object.

autowatch = 1;
inlets = 1;
outlets = 2;

var core = require("bridge_core");
var Protocol = require("protocol_table").Protocol;

var bridge = null;
var watchdog = null;
var TICK_MS = 250;
// Live parameters report their saved values while the device loads, before Live's API is ready: keep them.
var early = [];

function whenReady(fn) {
  if (bridge) fn();
  else early.push(fn);
}

function readProtocol() {
  var f = new File("protocol.json", "read");
  if (!f.isopen) throw new Error("protocol.json not found next to the device");
  var text = "";
  while (f.position < f.eof) text += f.readstring(4096);
  f.close();
  return JSON.parse(text);
}

function out(name) {
  var args = arrayfromargs(arguments);
  outlet(name.charAt(0) === "/" ? 0 : 1, args);
}

function makeLiveApi(path, callback) {
  return callback ? new LiveAPI(callback, path) : new LiveAPI(path);
}

function later(fn, ms) {
  var task = new Task(fn, this);
  task.schedule(ms);
}

function tempDir() {
  return max.os === "windows" ? "C:/Users/Public" : "/tmp";
}

// live.thisdevice bangs once Live's API can be used; LiveAPI objects made earlier would not work.
function init() {
  if (bridge) return;
  bridge = core.createBridge({
    protocol: new Protocol(readProtocol()),
    liveApi: makeLiveApi,
    out: out,
    now: function () { return new Date().getTime(); },
    later: later,
    log: function (text) { post("musicgen-bridge: " + text + "\n"); },
    recordDir: tempDir()
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

// A live.text button sends 1 when pressed; ignore anything that is not a press.
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

function jam(on) {
  if (bridge) bridge.jam(Number(on) !== 0);
}

function prompt() {
  var text = arrayfromargs(arguments).join(" ");
  whenReady(function () { bridge.setPrompt(text); });
}

// Only a choice made after loading: the bridge keeps its own preset across device reloads.
function preset(name) {
  if (bridge) bridge.setPreset(String(name));
}

function bars(index) {
  whenReady(function () { bridge.setBars(index); });
}

// A saved choice is restored quietly: no microphone recording or file dialog while the set loads.
function melody(index) {
  if (bridge) bridge.setMelody(index);
  else early.push(function () { bridge.setMelody(index, true); });
}

function melodyfile() {
  if (bridge) bridge.setMelodyFile(arrayfromargs(arguments).join(" "));
}

function param(name, value) {
  whenReady(function () { bridge.setParam(String(name), value); });
}

function beat() {
  if (bridge) bridge.beat();
}

// Where recordings for Continue are written (default /tmp, C:/Users/Public on Windows).
function recdir() {
  if (bridge) bridge.recordDir = arrayfromargs(arguments).join(" ");
}

// Helpers are not messages: `local` hides them from Max.
readProtocol.local = 1;
out.local = 1;
makeLiveApi.local = 1;
later.local = 1;
tempDir.local = 1;
whenReady.local = 1;
pressed.local = 1;

function notifydeleted() {
  if (watchdog) watchdog.cancel();
}

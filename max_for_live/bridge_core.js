// The device's logic, free of Max: it runs inside Max's `js` object (through musicgen_bridge.js) and under node
// for tests. Written in ES5 because Max's legacy `js` engine is ES5, and exported through `exports.x = ...`
// because Max's require() only supports that form.
//
// createBridge(env) takes:
//   env.protocol  a Protocol (protocol_table.js) made from protocol.json
//   env.liveApi   function (path, callback?) -> a LiveAPI-like object (get, set, call, property, id)
//   env.out       function (name, ...args): names starting with "/" are OSC messages for udpsend; other names
//                 are commands for the patch (status lines, buffers, players, recorder), listed in README.md
//   env.now       function () -> milliseconds (Date.now in both worlds; tests pass a fake clock)
//   env.later     function (fn, ms) (Max: a Task; node: setTimeout); optional, defaults to calling fn at once
//   env.log       function (text), optional
//   env.recordDir folder for the WAV files the device writes (default /tmp)

var BARS_CHOICES = [1, 2, 4, 8, 16];
var MELODY_SOURCES = ["none", "clip", "hum", "file"];
var EPS = 1e-6;
// Wait this long after buffer~ writes a WAV before naming it to the bridge: Max writes files on its low-priority
// thread, so the file may not be complete when the write message returns.
var WRITE_SETTLE_MS = 250;

// --- small helpers ------------------------------------------------------------------------------------------

function first(value) {
  // LiveAPI.get returns arrays; fakes may return plain values.
  return value instanceof Array ? value[0] : value;
}

// LiveAPI lists children as ["id", 3, "id", 4]; return [3, 4].
function idsOf(list) {
  var ids = [];
  if (!(list instanceof Array)) return ids;
  for (var i = 0; i + 1 < list.length; i += 2) {
    if (list[i] === "id" && Number(list[i + 1]) > 0) ids.push(Number(list[i + 1]));
  }
  return ids;
}

// get_notes_extended returns a JSON string in Live 11+; accept the parsed object or a one-string array too.
function parseNotes(result) {
  if (result instanceof Array) result = result.length === 1 ? result[0] : result.join(" ");
  if (typeof result === "string") result = JSON.parse(result);
  return result && result.notes ? result.notes : [];
}

// What the device remembers about a request it waits for.
function newPending(kind) {
  return { kind: kind, anchor: null, shift: 0, chunks: [] };
}

function clamp(v, lo, hi) {
  return Math.max(lo, Math.min(hi, v));
}

// Max accepts forward slashes on every platform; backslashes would be read as escapes.
function maxPath(path) {
  return String(path).replace(/\\/g, "/");
}

// --- the bridge ---------------------------------------------------------------------------------------------

// Every address this file sends or handles, checked against protocol.json when the device starts.
var SENDS = ["/ping", "/status", "/tempo", "/transport", "/set", "/preset", "/generate", "/continue", "/jam/start",
  "/jam/stop", "/cancel", "/melody/notes", "/melody/audio", "/melody/record/start", "/melody/record/stop",
  "/melody/clear"];

function Bridge(env) {
  this.env = env;
  this.protocol = env.protocol;
  for (var i = 0; i < SENDS.length; i++) this.protocol.message(SENDS[i], "in");
  for (var address in HANDLERS) this.protocol.message(address, "out");
  this.timing = env.protocol.table.timing;
  this.now = env.now || function () { return new Date().getTime(); };
  this.later = env.later || function (fn) { fn(); };
  this.log = env.log || function () {};
  this.recordDir = env.recordDir || "/tmp";

  this.settings = { prompt: "", bars: 4, melody: "none" };
  this.params = {}; // /set values chosen in the UI, resent when the engine (re)appears
  this.nextId = 1;
  // req -> { kind, anchor, shift, chunks: [{ beat, beats }] }: see onChunk for anchor and shift.
  this.pending = {};
  this.jamReq = null;
  this.humRecording = false;
  this.melodyFilePath = null;
  this.presetAsked = null; // the preset name sent last, until the bridge acknowledges it

  this.transport = { playing: 0, bpm: 120, num: 4, den: 4 };
  this.songBeats = 0;
  this.scheduled = []; // [{ beat, run }] in song beats
  this.recording = null;
  this.epoch = 0; // bumped by Stop, so that work already under way knows it was cancelled

  this.started = false;
  this.lastHeartbeat = null;
  this.lastSeq = -1;
  this.engineLost = false;
  this.liveMajor = null;
}

// Called once Live's API is available (live.thisdevice has banged).
Bridge.prototype.start = function () {
  var self = this;
  var song = this.env.liveApi("live_set");
  this.song = song;
  this.transport.bpm = Number(first(song.get("tempo"))) || 120;
  this.transport.num = Number(first(song.get("signature_numerator"))) || 4;
  this.transport.den = Number(first(song.get("signature_denominator"))) || 4;
  this.transport.playing = Number(first(song.get("is_playing"))) ? 1 : 0;
  this.songBeats = Number(first(song.get("current_song_time"))) || 0;

  // One LiveAPI object per observed property: that is how LiveAPI observation works.
  this.observers = [];
  var props = ["tempo", "signature_numerator", "signature_denominator", "is_playing", "current_song_time"];
  for (var i = 0; i < props.length; i++) {
    var api = this.env.liveApi("live_set", function (args) { self.onSongChange(args); });
    api.property = props[i];
    this.observers.push(api);
  }
  this.started = true;
  this.lastHeartbeat = this.now();
  this.ui("engine", "waiting for the bridge on port " + this.protocol.table.defaults.port + " ...");
  this.send("/ping", [this.nextReq()]);
  this.send("/status", []);
  this.sendTempo();
  this.sendTransport();
};

Bridge.prototype.nextReq = function () {
  return this.nextId++;
};

// Send an OSC message if it fits protocol.json; otherwise show why (e.g. a prompt that is too long) and
// return false.
Bridge.prototype.send = function (address, args) {
  var types = this.protocol.types(address, "in", args);
  if (typeof types === "string") {
    this.showError(types);
    return false;
  }
  this.env.out.apply(null, [address].concat(args));
  return true;
};

Bridge.prototype.ui = function (name) {
  this.env.out.apply(null, Array.prototype.slice.call(arguments));
};

Bridge.prototype.status = function (text) {
  this.ui("status", text);
};

Bridge.prototype.showError = function (text) {
  this.ui("error", text);
  this.log("error: " + text);
};

Bridge.prototype.beatsPerBar = function () {
  return this.transport.num * 4 / this.transport.den;
};

// --- Live observers -----------------------------------------------------------------------------------------

Bridge.prototype.onSongChange = function (args) {
  if (!args || args.length < 2) return;
  var name = args[0];
  var value = Number(args[1]);
  if (name === "tempo" || name === "signature_numerator" || name === "signature_denominator") {
    var key = name === "tempo" ? "bpm" : (name === "signature_numerator" ? "num" : "den");
    if (this.transport[key] === value) return;
    this.transport[key] = value;
    this.sendTempo();
  } else if (name === "is_playing") {
    var playing = value ? 1 : 0;
    if (playing === this.transport.playing) return;
    this.transport.playing = playing;
    if (!playing) this.onTransportStopped();
    this.sendTransport();
  } else if (name === "current_song_time") {
    var previous = this.songBeats;
    this.songBeats = value;
    // A jump (rewind, loop wrap, click in the timeline): keep what is scheduled at the same distance from now.
    if (value < previous - 0.05 || value > previous + 2) {
      this.shiftSchedule(value - previous);
      this.sendTransport();
    }
  }
};

Bridge.prototype.sendTempo = function () {
  this.send("/tempo", [this.transport.bpm, this.transport.num, this.transport.den]);
};

Bridge.prototype.sendTransport = function () {
  var t = this.transport;
  this.send("/transport", [t.playing, t.bpm, t.num, t.den, Math.max(0, this.songBeats)]);
};

// --- bar-line scheduling ------------------------------------------------------------------------------------

Bridge.prototype.currentBeats = function () {
  if (this.song) {
    var v = Number(first(this.song.get("current_song_time")));
    if (isFinite(v)) this.songBeats = v;
  }
  return this.songBeats;
};

// The first bar line strictly after `beats` (the current one has already passed by the time we act).
Bridge.prototype.nextBarLine = function (beats) {
  var bpb = this.beatsPerBar();
  return Math.ceil((beats + 0.01) / bpb) * bpb;
};

// Run `fn` at song position `beat`, or at once when Live is stopped (nothing would ever reach it).
Bridge.prototype.at = function (beat, fn) {
  if (!this.transport.playing) {
    fn();
    return;
  }
  this.scheduled.push({ beat: beat, run: fn });
  this.scheduled.sort(function (a, b) { return a.beat - b.beat; });
};

Bridge.prototype.shiftSchedule = function (delta) {
  for (var i = 0; i < this.scheduled.length; i++) this.scheduled[i].beat += delta;
  for (var req in this.pending) this.pending[req].shift += delta;
};

// The patch calls this on every eighth note (metro 8n @quantize 8n): run what is due, report bar lines.
Bridge.prototype.beat = function () {
  var now = this.currentBeats();
  var grid = Math.round(now * 2) / 2; // the metro ticks on eighths; the reading lags a little
  var due = [];
  while (this.scheduled.length && this.scheduled[0].beat <= grid + EPS) due.push(this.scheduled.shift());
  for (var i = 0; i < due.length; i++) due[i].run();
  var bars = grid / this.beatsPerBar();
  if (this.transport.playing && Math.abs(bars - Math.round(bars)) < EPS) this.sendTransport();
};

// --- UI actions ---------------------------------------------------------------------------------------------

Bridge.prototype.setPrompt = function (text) {
  this.settings.prompt = String(text).replace(/^\s+|\s+$/g, "");
};

Bridge.prototype.setBars = function (index) {
  this.settings.bars = BARS_CHOICES[clamp(Math.round(index), 0, BARS_CHOICES.length - 1)];
};

Bridge.prototype.setParam = function (name, value) {
  this.params[name] = value;
  this.send("/set", [name, value]);
};

// The menu's items are the bridge's preset names (presets/*.json; scripts/build_amxd.py writes them into the
// patch). The bridge answers /ack -1 /preset, or /error -1 not_found for a name it does not have.
Bridge.prototype.setPreset = function (name) {
  if (!name) return;
  if (this.send("/preset", [String(name)])) this.presetAsked = String(name);
};

// quiet: only remember the choice (restoring a saved set must not start the microphone or open a dialog).
Bridge.prototype.setMelody = function (index, quiet) {
  var source = MELODY_SOURCES[clamp(Math.round(index), 0, MELODY_SOURCES.length - 1)];
  if (quiet) {
    this.settings.melody = source;
    return;
  }
  if (this.humRecording && source !== "hum") {
    this.send("/melody/record/stop", []);
    this.humRecording = false;
  }
  this.settings.melody = source;
  if (source === "none") {
    this.send("/melody/clear", []);
  } else if (source === "hum") {
    this.send("/melody/record/start", []);
    this.humRecording = true;
    this.status("recording your humming on the bridge's microphone; press Generate when done");
  } else if (source === "file") {
    this.ui("pickfile");
  } else {
    this.status("melody: the selected MIDI clip is read when you press Generate");
  }
};

Bridge.prototype.setMelodyFile = function (path) {
  if (!path) return;
  this.melodyFilePath = maxPath(path);
  this.send("/melody/audio", [this.melodyFilePath, 0]);
  this.status("melody: " + this.melodyFilePath);
};

// Hand the bridge the melody chosen in the menu; false when it cannot (the reason is shown).
Bridge.prototype.prepareMelody = function () {
  var source = this.settings.melody;
  if (source === "clip") return this.sendSelectedClipNotes();
  if (source === "hum" && this.humRecording) {
    this.send("/melody/record/stop", []);
    this.humRecording = false;
  }
  if (source === "file" && !this.melodyFilePath) {
    this.showError("choose an audio file for the melody first");
    return false;
  }
  return true;
};

// Read the selected MIDI clip and send it as /melody/notes packets of at most notes_per_packet notes.
Bridge.prototype.sendSelectedClipNotes = function () {
  var clip = this.env.liveApi("live_set view detail_clip");
  if (!clip || Number(clip.id) === 0) {
    this.showError("select a MIDI clip to use as the melody");
    return false;
  }
  if (!Number(first(clip.get("is_midi_clip")))) {
    this.showError("the selected clip is an audio clip; select a MIDI clip");
    return false;
  }
  var length = Number(first(clip.get("length")));
  var raw = parseNotes(clip.call("get_notes_extended", 0, 128, 0, length));
  var notes = [];
  for (var i = 0; i < raw.length; i++) {
    var n = raw[i];
    if (n.mute) continue;
    notes.push([Math.round(n.pitch), Math.max(0, Number(n.start_time)), Number(n.duration),
      clamp(Math.round(n.velocity), 1, 127)]);
  }
  if (!notes.length) {
    this.showError("the selected clip has no notes");
    return false;
  }
  notes.sort(function (a, b) { return a[1] - b[1] || a[0] - b[0]; });
  var req = this.nextReq();
  var per = this.timing.notes_per_packet;
  for (var start = 0; start < notes.length; start += per) {
    var args = [req, length];
    var part = notes.slice(start, start + per);
    for (var k = 0; k < part.length; k++) args = args.concat(part[k]);
    this.send("/melody/notes", args);
  }
  return true;
};

Bridge.prototype.generate = function () {
  if (!this.prepareMelody()) return null;
  var req = this.nextReq();
  if (!this.send("/generate", [req, this.settings.prompt, this.settings.bars])) return null;
  this.pending[req] = newPending("generate");
  this.status("#" + req + " generating " + this.settings.bars + " bars ...");
  return req;
};

// Record this track for `bars` bars from the next bar line, then ask the bridge to continue it.
Bridge.prototype.continueTrack = function () {
  if (this.recording) {
    this.status("already recording the track");
    return null;
  }
  if (!this.transport.playing) {
    this.showError("start Live's transport: Continue records this track from the next bar line");
    return null;
  }
  var self = this;
  var req = this.nextReq();
  var bars = this.settings.bars;
  var beats = bars * this.beatsPerBar();
  var path = this.recordDir + "/musicgen_bridge_rec_" + req + ".wav";
  var startBeat = this.nextBarLine(this.currentBeats());
  // Size the buffer to exactly the bars wanted: record~ stops by itself when it is full.
  this.ui("recbuf", "size", beats * 60000 / this.transport.bpm);
  var epoch = this.epoch;
  this.recording = { req: req, path: path };
  this.status("#" + req + " recording " + bars + " bars of this track from the next bar line ...");
  this.at(startBeat, function () { self.ui("rec", 1); });
  this.at(startBeat + beats, function () {
    self.ui("rec", 0);
    self.ui("recbuf", "writewave", path);
    self.recording = null;
    self.later(function () {
      if (self.epoch !== epoch) return; // Stop was pressed meanwhile
      if (!self.send("/continue", [req, path, bars, bars])) return;
      self.pending[req] = newPending("continue");
      self.status("#" + req + " continuing the recording by " + bars + " bars ...");
    }, WRITE_SETTLE_MS);
  });
  return req;
};

Bridge.prototype.jam = function (on) {
  if (on && this.jamReq === null) {
    if (!this.prepareMelody()) {
      this.ui("jamstate", 0);
      return null;
    }
    var req = this.nextReq();
    if (!this.send("/jam/start", [req, this.settings.prompt])) {
      this.ui("jamstate", 0);
      return null;
    }
    this.jamReq = req;
    this.pending[req] = newPending("jam");
    this.status("#" + req + " jamming ...");
    return req;
  }
  if (!on && this.jamReq !== null) {
    this.send("/jam/stop", [this.jamReq]);
    delete this.pending[this.jamReq];
    this.jamReq = null;
    this.status("jam stopped");
  }
  return null;
};

// Stop everything: requests, the jam, the recorder and playback.
Bridge.prototype.stop = function () {
  for (var key in this.pending) {
    var req = Number(key);
    if (req === this.jamReq) this.send("/jam/stop", [req]);
    else this.send("/cancel", [req]);
  }
  this.pending = {};
  if (this.jamReq !== null) this.ui("jamstate", 0);
  this.jamReq = null;
  if (this.recording) this.ui("rec", 0);
  this.recording = null;
  this.scheduled = [];
  this.epoch++;
  this.stopPlayback();
  this.status("stopped");
};

// Bar-line plans made while playing mean nothing once Live stops; a half-made recording is dropped.
Bridge.prototype.onTransportStopped = function () {
  this.scheduled = [];
  if (this.recording) {
    this.ui("rec", 0);
    this.showError("#" + this.recording.req + " recording stopped with the transport; press Continue again");
    this.recording = null;
  }
  this.stopPlayback();
};

Bridge.prototype.stopPlayback = function () {
  this.ui("speed0", 0);
  this.ui("speed1", 0);
};

// --- messages from the bridge -------------------------------------------------------------------------------

Bridge.prototype.receive = function (address, args) {
  var types;
  try {
    types = this.protocol.types(address, "out", args);
  } catch (e) {
    this.log("ignoring unknown message " + address);
    return;
  }
  if (typeof types === "string") {
    this.log("ignoring malformed message: " + types);
    return;
  }
  var handler = HANDLERS[address];
  if (handler) handler.call(this, args);
};

var HANDLERS = {
  "/pong": function (args) {
    this.alive();
    this.ui("engine", "bridge " + args[1] + " connected");
  },
  "/heartbeat": function (args) {
    var seq = args[0];
    // A lower sequence number means the bridge restarted: it has forgotten our settings.
    if (seq < this.lastSeq) this.resendSettings();
    this.lastSeq = seq;
    this.alive();
  },
  "/status": function (args) {
    this.alive();
    var text = "engine " + args[0] + (args[1] ? " · " + args[1] : "") + " · " +
      Number(args[2]).toFixed(1) + " steps/s · " + args[3] + " queued";
    if (args[6] > 0) text += " · " + args[6] + " underruns";
    this.ui("engine", text);
  },
  "/ack": function (args) {
    if (this.pending[args[0]]) this.status("#" + args[0] + " accepted (" + args[1] + ")");
    else if (args[0] === -1 && args[1] === "/preset" && this.presetAsked) {
      this.status("preset " + this.presetAsked + " loaded");
      this.presetAsked = null;
    }
  },
  "/progress": function (args) {
    if (this.pending[args[0]]) this.status("#" + args[0] + " " + Math.round(args[1] * 100) + "%");
  },
  "/chunk": function (args) {
    // args[5], song_beat, is optional: the bridge sends it once it has had /transport.
    this.onChunk(args[0], args[1], maxPath(args[2]), args[3], args[4], args[5]);
  },
  "/done": function (args) {
    this.onDone(args[0], maxPath(args[1]), args[2], args[3]);
  },
  "/error": function (args) {
    var req = args[0];
    if (req !== -1 && !this.pending[req] && req !== this.jamReq) {
      this.log("error for an old request #" + req + ": " + args[2]);
      return;
    }
    delete this.pending[req];
    if (req === this.jamReq) {
      this.jamReq = null;
      this.ui("jamstate", 0);
    }
    if (args[1] === "cancelled") {
      this.status("#" + req + " cancelled");
      return;
    }
    this.showError((req === -1 ? "" : "#" + req + " ") + args[1] + ": " + args[2]);
  }
};

Bridge.prototype.alive = function () {
  this.lastHeartbeat = this.now();
  if (this.engineLost) {
    this.engineLost = false;
    this.ui("engine", "engine back");
    this.resendSettings();
  }
};

Bridge.prototype.resendSettings = function () {
  for (var name in this.params) this.send("/set", [name, this.params[name]]);
  this.sendTempo();
  this.sendTransport();
};

// The patch calls this a few times a second: notice a silent bridge.
Bridge.prototype.tick = function () {
  if (!this.started || this.engineLost) return;
  var limit = this.timing.heartbeat_misses_lost * this.timing.heartbeat_seconds * 1000;
  if (this.now() - this.lastHeartbeat > limit) {
    this.engineLost = true;
    this.ui("engine", "engine lost: is `musicgen-bridge serve` running?");
  }
};

// Streamed pieces play back to back, alternating between two players so that loading one never disturbs the
// other. Each chunk has a place in the song:
// - song_beat, when the bridge sends it: the bridge knows the transport (it had /transport) and says which song
//   beat the chunk belongs on, so the device and the bridge's own audio output (--audio-device) agree;
// - otherwise start_beat from an anchor: the first bar line after the first chunk arrives.
// `shift` is what the device added since: jumps of the playhead (shiftSchedule) and late chunks.
Bridge.prototype.onChunk = function (req, index, path, startBeat, beats, songBeat) {
  var p = this.pending[req];
  if (!p) return; // cancelled or stopped: drop it
  if (!this.transport.playing) {
    // Nothing to keep time with: the whole result plays when /done arrives.
    this.status("#" + req + " chunk " + (index + 1) + " received; start Live's transport to hear it streamed");
    return;
  }
  var self = this;
  var now = this.currentBeats();
  var beat;
  if (songBeat !== undefined) {
    beat = songBeat;
  } else {
    if (p.anchor === null) p.anchor = this.nextBarLine(now) - p.shift;
    beat = p.anchor + startBeat;
  }
  var when = beat + p.shift;
  if (when < now) {
    // Late: start at the next bar line and move the whole stream along with it so later chunks stay in order.
    var delay = this.nextBarLine(now) - when;
    p.shift += delay;
    when += delay;
    this.status("#" + req + " chunk " + index + " arrived late; playback moved by " + delay + " beats");
  }
  p.chunks[index] = { beat: beat, beats: beats };
  var slot = index % 2;
  var previous = p.chunks[index - 1];
  // This player is free once chunk index-2 has finished, i.e. when chunk index-1 starts.
  var loadAt = index >= 2 && previous ? previous.beat + p.shift : -Infinity;
  var load = function () { self.ui("buf" + slot, "replace", path); };
  if (loadAt > now) this.at(loadAt, load);
  else load();
  this.at(when, function () { self.play(slot, 0); });
  if (p.kind !== "jam") this.status("#" + req + " chunk " + (index + 1) + " (" + beats + " beats)");
};

Bridge.prototype.onDone = function (req, path, seconds, bars) {
  var p = this.pending[req];
  if (!p) return;
  delete this.pending[req];
  var self = this;
  this.ui("viewbuf", "replace", path);
  if (!p.chunks.length) {
    // Not streamed: loop the whole result from the next bar line.
    this.ui("buf0", "replace", path);
    this.at(this.nextBarLine(this.currentBeats()), function () { self.play(0, 1); });
  }
  var clip = this.createClip(path);
  this.status("#" + req + " done: " + Number(bars).toFixed(2) + " bars, " + Number(seconds).toFixed(2) + " s" +
    (clip ? "; new clip in slot " + clip : "; " + path));
};

Bridge.prototype.play = function (slot, loop) {
  this.ui("play" + slot, "loop", loop);
  this.ui("play" + slot, "startloop");
  this.ui("speed" + slot, 1);
  if (!loop) this.ui("speed" + (1 - slot), 0);
};

// --- clips --------------------------------------------------------------------------------------------------

Bridge.prototype.liveVersion = function () {
  if (this.liveMajor === null) {
    var app = this.env.liveApi("live_app");
    this.liveMajor = Number(first(app.call("get_major_version"))) || 0;
  }
  return this.liveMajor;
};

// Put the result in the first empty clip slot of this track (ClipSlot.create_audio_clip, Live 12).
// Returns the 1-based slot number, or 0 when that is not possible (the reason goes to the status line).
Bridge.prototype.createClip = function (path) {
  if (this.liveVersion() < 12) {
    this.log("Live " + this.liveMajor + " cannot create audio clips; the result plays from the device");
    return 0;
  }
  try {
    var track = this.env.liveApi("this_device canonical_parent");
    var slots = idsOf(track.get("clip_slots"));
    for (var i = 0; i < slots.length; i++) {
      var slot = this.env.liveApi("id " + slots[i]);
      if (Number(first(slot.get("has_clip")))) continue;
      slot.call("create_audio_clip", path);
      if (Number(first(slot.get("has_clip")))) return i + 1;
      this.log("create_audio_clip did nothing (needs Live 12.0.5 or later?)");
      return 0;
    }
    this.log("no empty clip slot on this track; the result plays from the device");
  } catch (e) {
    this.log("could not create a clip: " + e);
  }
  return 0;
};

exports.createBridge = function (env) {
  return new Bridge(env);
};
exports.BARS_CHOICES = BARS_CHOICES;
exports.MELODY_SOURCES = MELODY_SOURCES;
exports.WRITE_SETTLE_MS = WRITE_SETTLE_MS;

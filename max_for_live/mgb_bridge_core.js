// The device's logic, free of Max: it runs inside Max's `js` object (through musicgen_bridge.js) and under node
// for tests. Written in ES5 because Max's legacy `js` engine is ES5 (test/es5.test.js parses it with acorn at
// ecmaVersion 5), ASCII only (non-ASCII characters are written as \u escapes), and exported through
// `exports.x = ...` because Max's require() only supports that form. The file name is unique (mgb_ prefix):
// Max's require() searches the whole search path, so a generic name could load another device's file.
//
// createBridge(env) takes:
//   env.protocol  a Protocol (mgb_protocol.js) made from the embedded table (mgb_protocol_data.js)
//   env.liveApi   function (path, callback?) -> a LiveAPI-like object (get, set, call, property, id, type)
//   env.out       function (name, ...args): names starting with "/" are OSC messages for udpsend; other names
//                 are commands for the patch (status lines, buffers, players, recorder), listed in README.md
//   env.now       function () -> milliseconds (Date.now in both worlds; tests pass a fake clock)
//   env.later     function (fn, ms) (Max: a Task; node: setTimeout); optional, defaults to calling fn at once
//   env.log       function (text), optional
//   env.recordDir folder for the WAV files the device writes (default /tmp)

var BARS_CHOICES = [1, 2, 4, 8, 16];
// The Melody menu's items, in menu order. "mic" (the bridge's own microphone, `serve --input-device`) comes last
// so that sets saved with the first four items keep their choice.
var MELODY_SOURCES = ["none", "clip", "hum", "file", "mic"];
var TAKES_MAX = 4;
var NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
var EPS = 1e-6;
var DOT = " \u00b7 ";
// A bar-line job runs at the first metro tick whose song-time reading is at least its beat minus this much
// (reading jitter; js runs a tick after the scheduler has moved on, so readings are late, not early). A late tick
// runs what is due late; no tick runs a job an eighth early, as rounding the reading to the grid did.
var TICK_TOLERANCE = 1 / 64;
// A position read more than this far behind the last one is a jump (rewind, loop wrap); forward, more than
// JUMP_AHEAD beats (two metro ticks and then some) is one.
var JUMP_BACK = 0.05;
var JUMP_AHEAD = 2;
// record~ stops by itself when its buffer is full; give it this long after the last bar line before writing, so
// that a tick handled a little early never cuts the last samples.
var RECORD_TAIL_MS = 150;
// Wait this long after buffer~ writes a WAV before naming it to the bridge: Max writes files on its low-priority
// thread, so the file may not be complete when the write message returns.
var WRITE_SETTLE_MS = 250;
var DEFAULT_SAMPLE_RATE = 44100; // until dspstate~ reports Live's rate

// --- small helpers ------------------------------------------------------------------------------------------

// Array.isArray, not instanceof: arrays made by LiveAPI (or by another script's scope) fail instanceof Array.
function isArray(value) {
  return Object.prototype.toString.call(value) === "[object Array]";
}

function first(value) {
  // LiveAPI.get returns arrays; fakes may return plain values.
  return isArray(value) ? value[0] : value;
}

// LiveAPI lists children as ["id", 3, "id", 4]; return [3, 4].
function idsOf(list) {
  var ids = [];
  if (!isArray(list)) return ids;
  for (var i = 0; i + 1 < list.length; i += 2) {
    if (list[i] === "id" && Number(list[i + 1]) > 0) ids.push(Number(list[i + 1]));
  }
  return ids;
}

// get_notes_extended returns a JSON string in Live 11+; accept the parsed object or a one-string array too.
function parseNotes(result) {
  if (isArray(result)) result = result.length === 1 ? result[0] : result.join(" ");
  if (typeof result === "string") result = JSON.parse(result);
  return result && result.notes ? result.notes : [];
}

// What the device remembers about a request it waits for.
function newPending(kind) {
  return { kind: kind, anchor: null, shift: 0, chunks: [], takes: [] };
}

function clamp(v, lo, hi) {
  return Math.max(lo, Math.min(hi, v));
}

// A path from Max (opendialog through `conformpath slash boot`, or a path the bridge sent) as the operating
// system spells it, for Python to open:
//   macOS, boot volume:   "/Users/me/hum.wav"            (boot pathtype already dropped the volume name)
//   macOS, other volume:  "Data:/takes/hum.wav"          -> "/Volumes/Data/takes/hum.wav"
//   Windows:              "C:/Users/me/hum.wav"          (drive letters stay; backslashes become slashes)
function systemPath(path, os) {
  var p = String(path).replace(/\\/g, "/");
  var volume = /^([^\/:]+):\/?(.*)$/.exec(p);
  if (!volume) return p;
  if (os === "windows" || /^[A-Za-z]$/.test(volume[1])) return volume[1] + ":/" + volume[2];
  return "/Volumes/" + volume[1] + "/" + volume[2];
}

// Max accepts forward slashes on every platform; backslashes would be read as escapes.
function maxPath(path) {
  return String(path).replace(/\\/g, "/");
}

// --- the bridge ---------------------------------------------------------------------------------------------

// Every address this file sends or handles, checked against the protocol table when the device starts.
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
  this.os = env.os || "macintosh";
  this.sampleRate = DEFAULT_SAMPLE_RATE;

  this.settings = { prompt: "", bars: 4, melody: "none", takes: 1 };
  this.params = {}; // /set values chosen in the UI or read from Live, resent when the engine (re)appears
  this.nextId = 1;
  // req -> { kind, anchor, shift, chunks: [{ beat, beats }], takes: [path] }: see onChunk for anchor and shift.
  this.pending = {};
  this.finishedTakes = {}; // req -> true: multi-take requests that are done (a late /take still gets a clip)
  this.jamReq = null;
  this.micRecording = false; // the bridge's microphone (Melody: hum (bridge mic)) is recording
  this.melodyFilePath = null;
  this.presetAsked = null; // the preset name sent last, until the bridge acknowledges it

  this.transport = { playing: 0, bpm: 120, num: 4, den: 4 };
  this.songBeats = 0;
  this.readAt = null; // env.now() of the last song-time reading
  this.lastBar = null; // the bar the last metro tick was in
  this.scheduled = []; // [{ beat, run }] in song beats
  this.recording = null; // { req, kind: "continue" | "hum", path, started, epoch }
  this.epoch = 0; // bumped by Stop, so that work already under way knows it was cancelled

  this.started = false;
  this.lastHeartbeat = null;
  this.lastSeq = -1;
  this.engineLost = false;
  this.liveMajor = null;
  this.key = { root: null, scale: null, mode: null };
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
  // Live 12's song scale (Song.root_note, scale_name, scale_mode); Live 11 has none of them.
  if (this.liveVersion() >= 12) props = props.concat(["root_note", "scale_name", "scale_mode"]);
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
  if (this.liveMajor >= 12) this.sendKey();
};

Bridge.prototype.nextReq = function () {
  return this.nextId++;
};

// Send an OSC message if it fits the protocol table; otherwise show why (e.g. a prompt that is too long) and
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
  var value = args.length > 2 ? args.slice(1).join(" ") : args[1];
  if (name === "tempo" || name === "signature_numerator" || name === "signature_denominator") {
    var key = name === "tempo" ? "bpm" : (name === "signature_numerator" ? "num" : "den");
    value = Number(value);
    if (this.transport[key] === value) return;
    this.transport[key] = value;
    this.sendTempo();
  } else if (name === "is_playing") {
    var playing = Number(value) ? 1 : 0;
    if (playing === this.transport.playing) return;
    this.transport.playing = playing;
    this.lastBar = null;
    if (!playing) this.onTransportStopped();
    this.sendTransport();
  } else if (name === "current_song_time") {
    this.moveTo(Number(value));
  } else if (name === "root_note" || name === "scale_name" || name === "scale_mode") {
    this.key[name === "root_note" ? "root" : (name === "scale_name" ? "scale" : "mode")] = value;
    if (this.started) this.sendKey();
  }
};

// Every reading of the song position goes through here, the observer's (display rate) and the metro tick's:
// with one "last position" for both, a loop wrap seen first by either is still a jump for the other.
Bridge.prototype.moveTo = function (value) {
  if (!isFinite(value)) return;
  var previous = this.songBeats;
  var now = this.now();
  var elapsed = this.readAt === null ? 0 : Math.max(0, now - this.readAt);
  this.songBeats = value;
  this.readAt = now;
  if (!this.transport.playing) return;
  // A jump (rewind, loop wrap, click in the timeline): keep what is scheduled at the same distance from now.
  // The distance is from where the playhead is by now (the last reading plus the time since), not from the last
  // reading itself: a wrap first seen a frame late still runs what was due at the loop's end at its start.
  if (value < previous - JUMP_BACK || value > previous + JUMP_AHEAD) {
    this.shiftSchedule(value - (previous + elapsed * this.transport.bpm / 60000));
    this.lastBar = null;
    this.sendTransport();
  }
};

Bridge.prototype.sendTempo = function () {
  this.send("/tempo", [this.transport.bpm, this.transport.num, this.transport.den]);
};

Bridge.prototype.sendTransport = function () {
  var t = this.transport;
  this.send("/transport", [t.playing, t.bpm, t.num, t.den, Math.max(0, this.songBeats)]);
};

// The song's key as the bridge's `key` setting, e.g. "A minor"; empty while Live's Scale Mode is off, so that the
// preset's key applies. Live 12 only (start() observes nothing of this on Live 11).
Bridge.prototype.keyText = function () {
  var k = this.key;
  if (k.mode !== null && k.mode !== undefined && !Number(k.mode)) return "";
  var root = Number(k.root);
  if (k.root === null || !isFinite(root) || !k.scale) return "";
  return NOTE_NAMES[((Math.round(root) % 12) + 12) % 12] + " " + String(k.scale).toLowerCase();
};

Bridge.prototype.sendKey = function () {
  if (this.key.root === null && this.song) {
    this.key.root = first(this.song.get("root_note"));
    this.key.scale = first(this.song.get("scale_name"));
    this.key.mode = first(this.song.get("scale_mode"));
  }
  var text = this.keyText();
  if (this.params.key === text) return;
  this.params.key = text;
  this.send("/set", ["key", text]);
};

// --- bar-line scheduling ------------------------------------------------------------------------------------

Bridge.prototype.currentBeats = function () {
  if (this.song) this.moveTo(Number(first(this.song.get("current_song_time"))));
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
  var due = [];
  while (this.scheduled.length && this.scheduled[0].beat <= now + TICK_TOLERANCE) due.push(this.scheduled.shift());
  for (var i = 0; i < due.length; i++) due[i].run();
  // A bar line passed since the last tick (however late this tick is): tell the bridge where Live is.
  var bar = Math.floor((now + TICK_TOLERANCE) / this.beatsPerBar());
  if (this.transport.playing && this.lastBar !== null && bar !== this.lastBar) this.sendTransport();
  this.lastBar = this.transport.playing ? bar : null;
};

// --- UI actions ---------------------------------------------------------------------------------------------

Bridge.prototype.setPrompt = function (text) {
  this.settings.prompt = String(text).replace(/^\s+|\s+$/g, "");
};

Bridge.prototype.setBars = function (index) {
  this.settings.bars = BARS_CHOICES[clamp(Math.round(index), 0, BARS_CHOICES.length - 1)];
};

// How many takes /generate asks for (1-4).
Bridge.prototype.setTakes = function (count) {
  var n = Math.round(Number(count));
  this.settings.takes = isFinite(n) ? clamp(n, 1, TAKES_MAX) : 1;
};

// Integer settings are rounded here: Live's Int parameters stop at 255, so Top K is a Float parameter shown as an
// integer, and the bridge refuses 250.4 for an "i" setting.
Bridge.prototype.setParam = function (name, value) {
  var setting = this.protocol.settings[name];
  if (setting && setting.type === "i") value = Math.round(Number(value));
  this.params[name] = value;
  this.send("/set", [name, value]);
};

// The menu's items are the bridge's preset names (presets/*.json; scripts/build_amxd.py writes them into the
// patch). The bridge answers /ack -1 /preset, or /error -1 not_found for a name it does not have.
Bridge.prototype.setPreset = function (name) {
  if (!name) return;
  if (this.send("/preset", [String(name)])) this.presetAsked = String(name);
};

// The Melody menu only chooses where the melody comes from: it is a stored parameter, so a set or a device preset
// that restores it must not start a recording or open a file dialog. The Rec/Open button (capture) does that.
Bridge.prototype.setMelody = function (index) {
  var source = MELODY_SOURCES[clamp(Math.round(index), 0, MELODY_SOURCES.length - 1)];
  if (source === this.settings.melody) return;
  this.stopMic();
  this.settings.melody = source;
  if (source === "none") {
    this.send("/melody/clear", []);
    this.status("melody: none");
  } else if (source === "clip") {
    this.status("melody: the selected MIDI clip is read when you press Generate");
  } else if (source === "hum") {
    this.status("melody: arm or monitor this track, press Rec/Open, hum from the next bar line");
  } else if (source === "mic") {
    this.status("melody: press Rec/Open to hum into the bridge's microphone (serve --input-device)");
  } else {
    this.status("melody: press Rec/Open to choose an audio file");
  }
};

// The Rec/Open button: record the hum, open the file dialog, start or stop the bridge's microphone.
Bridge.prototype.capture = function () {
  var source = this.settings.melody;
  if (source === "hum") return this.recordHum();
  if (source === "file") {
    this.ui("pickfile");
  } else if (source === "mic") {
    if (this.micRecording) {
      this.stopMic();
      this.status("microphone stopped; the bridge is reading the melody ...");
    } else {
      this.send("/melody/record/start", []);
      this.micRecording = true;
      this.status("recording your humming on the bridge's microphone; press Rec/Open or Generate when done");
    }
  } else if (source === "clip") {
    this.status("melody: the selected MIDI clip is read when you press Generate");
  } else {
    this.showError("choose a melody source in the Melody menu first");
  }
  return null;
};

Bridge.prototype.stopMic = function () {
  if (!this.micRecording) return;
  this.send("/melody/record/stop", []);
  this.micRecording = false;
};

Bridge.prototype.setMelodyFile = function (path) {
  if (!path || path === "bang") return;
  this.melodyFilePath = systemPath(path, this.os);
  this.send("/melody/audio", [this.melodyFilePath, 0]);
  this.status("melody: " + this.melodyFilePath + " (the bridge is reading it ...)");
};

// Hand the bridge the melody chosen in the menu; false when it cannot (the reason is shown).
Bridge.prototype.prepareMelody = function () {
  var source = this.settings.melody;
  if (source === "clip") return this.sendSelectedClipNotes();
  if (source === "mic") this.stopMic();
  // Generate during a hum recording ends it there: what was hummed so far is the melody.
  if (source === "hum" && this.recording && this.recording.kind === "hum") this.finishRecording(true);
  if (source === "file" && !this.melodyFilePath) {
    this.showError("choose an audio file for the melody first (Rec/Open)");
    return false;
  }
  return true;
};

// The part of a clip that plays: the loop when it loops, else start to end marker (Clip.looping, loop_start,
// loop_end, start_marker, end_marker). Times are beats from the clip's own zero.
Bridge.prototype.clipRange = function (clip) {
  var looping = first(clip.get("looping"));
  var loops = looping === undefined ? true : !!Number(looping);
  var start = Number(first(clip.get(loops ? "loop_start" : "start_marker")));
  var end = Number(first(clip.get(loops ? "loop_end" : "end_marker")));
  if (!isFinite(start) || !isFinite(end) || end <= start) {
    start = 0;
    end = Number(first(clip.get("length")));
  }
  return { start: start, length: end - start };
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
  var range = this.clipRange(clip);
  var raw = parseNotes(clip.call("get_notes_extended", 0, 128, range.start, range.length));
  var notes = [];
  for (var i = 0; i < raw.length; i++) {
    var n = raw[i];
    if (n.mute) continue;
    var start = Number(n.start_time) - range.start;
    if (start < 0 || start >= range.length) continue;
    notes.push([Math.round(n.pitch), start, Math.min(Number(n.duration), range.length - start),
      clamp(Math.round(n.velocity), 1, 127)]);
  }
  if (!notes.length) {
    this.showError("the selected clip has no notes in its loop");
    return false;
  }
  notes.sort(function (a, b) { return a[1] - b[1] || a[0] - b[0]; });
  var req = this.nextReq();
  var per = this.timing.notes_per_packet;
  for (var at = 0; at < notes.length; at += per) {
    var args = [req, range.length];
    var part = notes.slice(at, at + per);
    for (var k = 0; k < part.length; k++) args = args.concat(part[k]);
    this.send("/melody/notes", args);
  }
  return true;
};

Bridge.prototype.generate = function () {
  if (!this.prepareMelody()) return null;
  var req = this.nextReq();
  var args = [req, this.settings.prompt, this.settings.bars];
  if (this.settings.takes > 1) args.push(this.settings.takes); // the optional 4th argument, only when used
  if (!this.send("/generate", args)) return null;
  this.pending[req] = newPending("generate");
  this.pending[req].takeCount = this.settings.takes;
  this.status("#" + req + " generating " + this.settings.bars + " bars" +
    (this.settings.takes > 1 ? ", " + this.settings.takes + " takes" : "") + " ...");
  return req;
};

// --- recording this track (Continue, and the hum for Melody: hum) -------------------------------------------

// Samples in `beats` beats at Live's tempo and sample rate.
Bridge.prototype.framesFor = function (beats) {
  return Math.round(beats * 60 / this.transport.bpm * this.sampleRate);
};

// Record this track's input (plugin~ into record~) for `bars` bars from the next bar line. The buffer is sized to
// exactly those bars in samples and record~ stops by itself when it is full (a separate `rec 0` at the last
// tick could cut the end short); then the WAV is written and `done(path)` runs once it has settled.
Bridge.prototype.recordBars = function (kind, req, bars, done) {
  var self = this;
  var beats = bars * this.beatsPerBar();
  var path = this.recordDir + "/musicgen_bridge_" + (kind === "hum" ? "hum" : "rec") + "_" + req + ".wav";
  var startBeat = this.nextBarLine(this.currentBeats());
  var rec = { req: req, kind: kind, path: path, started: false, epoch: this.epoch, done: done, finished: false };
  this.recording = rec;
  this.ui("recbuf", "sizeinsamps", this.framesFor(beats));
  this.ui("recbuf", "clear");
  this.at(startBeat, function () {
    if (self.recording !== rec) return;
    rec.started = true;
    self.ui("rec", 1);
  });
  this.at(startBeat + beats, function () {
    if (self.recording !== rec) return;
    self.later(function () { self.finishRecording(false, rec); }, RECORD_TAIL_MS);
  });
  return rec;
};

// Write the recording and hand it on. early: Generate ended a hum before its last bar line.
Bridge.prototype.finishRecording = function (early, rec) {
  var self = this;
  rec = rec || this.recording;
  if (!rec || rec.finished || this.recording !== rec) return;
  rec.finished = true;
  this.recording = null;
  if (!rec.started) {
    this.status("#" + rec.req + " the recording had not started yet; nothing recorded");
    return;
  }
  if (early) this.ui("rec", 0);
  this.ui("recbuf", "writewave", rec.path);
  if (early) {
    rec.done(rec.path); // Generate follows at once: the bridge reads the file in the order messages arrive
    return;
  }
  this.later(function () {
    if (self.epoch !== rec.epoch) return; // Stop was pressed meanwhile
    rec.done(rec.path);
  }, WRITE_SETTLE_MS);
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
  this.recordBars("continue", req, bars, function (path) {
    if (!self.send("/continue", [req, path, bars, bars])) return;
    self.pending[req] = newPending("continue");
    self.status("#" + req + " continuing the recording by " + bars + " bars ...");
  });
  this.status("#" + req + " recording " + bars + " bars of this track from the next bar line ...");
  return req;
};

// Melody: hum. Record what comes into this track (arm it or set it to monitor) for the chosen bars from the next
// bar line, or until Generate, and send it as /melody/audio PATH 1; the bridge answers /melody with what it heard.
Bridge.prototype.recordHum = function () {
  if (this.recording) {
    this.status("already recording the track");
    return null;
  }
  if (!this.transport.playing) {
    this.showError("start Live's transport: the hum is recorded from the next bar line");
    return null;
  }
  var self = this;
  var req = this.nextReq();
  var bars = this.settings.bars;
  this.recordBars("hum", req, bars, function (path) {
    if (self.send("/melody/audio", [path, 1])) self.status("hum recorded; the bridge is reading its melody ...");
  });
  this.status("recording your hum on this track for " + bars + " bars from the next bar line (or until Generate) ...");
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
  this.stopMic();
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
    this.showError("#" + this.recording.req + " recording stopped with the transport; press " +
      (this.recording.kind === "hum" ? "Rec/Open" : "Continue") + " again");
    this.recording = null;
  }
  this.stopPlayback();
};

Bridge.prototype.stopPlayback = function () {
  this.ui("speed0", 0);
  this.ui("speed1", 0);
};

// Live's sample rate (dspstate~), for recordings sized exactly in samples.
Bridge.prototype.setSampleRate = function (rate) {
  var r = Number(rate);
  if (isFinite(r) && r > 0) this.sampleRate = r;
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

// The engine line: state, model and weight format, speed, real-time factor, queue, underruns. Below 1x real time
// a jam cannot keep up: the bridge moves its chunks to later bar lines, so the line says so.
function engineLine(args) {
  var realtime = Number(args[4]);
  var text = "engine " + args[0] + (args[1] ? DOT + args[1] : "") + (args[5] ? " (" + args[5] + ")" : "") + DOT +
    Number(args[2]).toFixed(1) + " steps/s" + (realtime > 0 ? DOT + realtime.toFixed(2) + "x real time" : "") +
    DOT + args[3] + " queued";
  if (args[6] > 0) text += DOT + args[6] + " underruns";
  if (realtime > 0 && realtime < 1) text += DOT + "WARNING slower than real time: jams start later";
  return text;
}

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
    this.ui("engine", engineLine(args));
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
  "/take": function (args) {
    this.onTake(args[0], args[1], maxPath(args[2]));
  },
  "/melody": function (args) {
    this.status("melody" + (args[0] === "/melody/audio" || args[0] === "/melody/record/stop" ? " heard" : "") +
      ": " + (args[1] || "no clear pitches"));
  },
  "/done": function (args) {
    this.onDone(args[0], maxPath(args[1]), args[2], args[3]);
  },
  "/error": function (args) {
    var req = args[0];
    // slow: the engine is behind real time; a jam goes on from a later bar line. Not the end of the request.
    if (args[1] === "slow") {
      this.status((req === -1 ? "" : "#" + req + " ") + "slow: " + args[2]);
      return;
    }
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

// One take of a multi-take /generate. Take 0 is the result /done names; the others become clips in the next
// free slots (Live 12) when /done arrives, in take order, or are listed in the status line.
Bridge.prototype.onTake = function (req, index, path) {
  var p = this.pending[req];
  if (p) {
    p.takes[index] = path;
    var ready = 0;
    for (var i = 0; i < p.takes.length; i++) if (p.takes[i]) ready++;
    this.status("#" + req + " take " + (index + 1) + " ready (" + ready + " of " + (p.takeCount || "?") + ")");
    return;
  }
  if (this.finishedTakes[req] && index > 0) {
    var slot = this.createClip(path);
    this.status("#" + req + " take " + (index + 1) + (slot ? " in clip slot " + slot : ": " + path));
  }
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
  var text = "#" + req + " done: " + Number(bars).toFixed(2) + " bars, " + Number(seconds).toFixed(2) + " s";
  var clip = this.createClip(path);
  text += clip ? "; new clip in slot " + clip : "; " + path;
  if (p.takeCount > 1) {
    this.finishedTakes[req] = true;
    var others = [];
    for (var i = 1; i < p.takes.length; i++) {
      if (!p.takes[i]) continue;
      var slot = clip ? this.createClip(p.takes[i]) : 0;
      others.push(slot ? "take " + (i + 1) + " in slot " + slot : "take " + (i + 1) + ": " + p.takes[i]);
    }
    if (others.length) text += "; " + others.join(", ");
  }
  this.status(text);
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

// The Track the device is on. this_device's parent is the track, or, inside a rack, a Chain: walk up through
// chains and rack devices until a Track.
Bridge.prototype.deviceTrack = function () {
  var api = this.env.liveApi("this_device canonical_parent");
  for (var depth = 0; depth < 16 && api && Number(api.id) !== 0; depth++) {
    if (api.type === "Track") return api;
    var parent = idsOf(api.get("canonical_parent"));
    if (!parent.length) break;
    api = this.env.liveApi("id " + parent[0]);
  }
  return null;
};

// Put a WAV in the first empty clip slot of this track (ClipSlot.create_audio_clip, Live 12).
// Returns the 1-based slot number, or 0 when that is not possible (the reason goes to the log).
Bridge.prototype.createClip = function (path) {
  if (this.liveVersion() < 12) {
    this.log("Live " + this.liveMajor + " cannot create audio clips; the result plays from the device");
    return 0;
  }
  try {
    var track = this.deviceTrack();
    if (!track) {
      this.log("could not find the track this device is on");
      return 0;
    }
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
exports.systemPath = systemPath;
exports.isArray = isArray;
exports.first = first;
exports.idsOf = idsOf;
exports.BARS_CHOICES = BARS_CHOICES;
exports.MELODY_SOURCES = MELODY_SOURCES;
exports.TAKES_MAX = TAKES_MAX;
exports.TICK_TOLERANCE = TICK_TOLERANCE;
exports.RECORD_TAIL_MS = RECORD_TAIL_MS;
exports.WRITE_SETTLE_MS = WRITE_SETTLE_MS;

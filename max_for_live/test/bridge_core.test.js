"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const { makeDevice, PROTOCOL_JSON } = require("../test_support/harness.js");
const { Protocol } = require("../mgb_protocol.js");
const core = require("../mgb_bridge_core.js");

function started(liveOptions) {
  const d = makeDevice(liveOptions);
  d.bridge.start();
  return d;
}

function note(pitch, start, duration, velocity, mute = 0) {
  return { note_id: pitch * 1000 + start, pitch, start_time: start, duration, velocity, mute };
}

test("start pings the bridge and reports tempo and transport", () => {
  const d = makeDevice();
  d.live.song.tempo = 98.5;
  d.live.song.signature_numerator = 7;
  d.live.song.signature_denominator = 8;
  d.bridge.start();
  // Live 12 (the fake's default) also has the song's scale: Scale Mode off sends an empty key (the preset's).
  assert.deepEqual(d.osc().map((m) => m[0]), ["/ping", "/status", "/tempo", "/transport", "/set"]);
  assert.deepEqual(d.osc("/set")[0], ["/set", "key", ""]);
  assert.deepEqual(d.osc("/tempo")[0], ["/tempo", 98.5, 7, 8]);
  assert.deepEqual(d.osc("/transport")[0], ["/transport", 0, 98.5, 7, 8, 0]);
});

test("tempo and time signature changes send /tempo once per change", () => {
  const d = started();
  d.clear();
  d.live.setSong("tempo", 140);
  d.live.setSong("tempo", 140); // unchanged: nothing new
  d.live.setSong("signature_numerator", 3);
  assert.deepEqual(d.osc("/tempo"), [["/tempo", 140, 4, 4], ["/tempo", 140, 3, 4]]);
});

test("play, stop and jumps of the playhead send /transport", () => {
  const d = started();
  d.clear();
  d.live.setSong("is_playing", 1);
  d.live.setSong("current_song_time", 0.2); // ordinary progress: nothing
  d.live.setSong("current_song_time", 32); // jump forward
  d.live.setSong("current_song_time", 4); // rewind
  d.live.setSong("is_playing", 0);
  assert.deepEqual(d.osc("/transport").map((m) => [m[1], m[5]]), [[1, 0], [1, 32], [1, 4], [0, 4]]);
});

test("a bar line while playing reports the transport", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.clear();
  d.tickAt(3.5);
  assert.equal(d.osc("/transport").length, 0);
  d.tickAt(4);
  assert.deepEqual(d.osc("/transport"), [["/transport", 1, 120, 4, 4, 4]]);
});

test("the selected MIDI clip becomes /melody/notes before /generate", () => {
  const d = started();
  d.live.selectClip({
    is_midi_clip: 1,
    length: 8,
    notes: [note(64, 2, 1, 90.6), note(60, 0, 0.5, 100), note(67, 4, 2, 0.2), note(72, 1, 1, 100, 1)],
  });
  d.bridge.setMelody(1);
  d.bridge.setPrompt("  warm rhodes ");
  d.bridge.setBars(3);
  d.clear();
  const req = d.bridge.generate();
  const notes = d.osc("/melody/notes");
  assert.equal(notes.length, 1);
  const [, noteReq, length, ...groups] = notes[0];
  assert.equal(length, 8);
  // Sorted by start, the muted note left out, velocities rounded into 1..127.
  assert.deepEqual(groups, [60, 0, 0.5, 100, 64, 2, 1, 91, 67, 4, 2, 1]);
  assert.deepEqual(d.osc().map((m) => m[0]), ["/melody/notes", "/generate"]);
  assert.deepEqual(d.osc("/generate")[0], ["/generate", req, "warm rhodes", 8]);
  assert.notEqual(noteReq, req);
  const call = d.live.calls.find((c) => c[1] === "get_notes_extended");
  assert.deepEqual(call, ["live_set view detail_clip", "get_notes_extended", 0, 128, 0, 8]);
});

test("big clips are split into packets of notes_per_packet notes with one request id", () => {
  const d = started();
  const per = PROTOCOL_JSON.timing.notes_per_packet;
  const many = [];
  for (let i = 0; i < 2 * per + 5; i++) many.push(note(40 + (i % 40), i * 0.25, 0.25, 80));
  d.live.selectClip({ is_midi_clip: 1, length: 64, notes: many });
  d.bridge.setMelody(1);
  d.clear();
  d.bridge.generate();
  const packets = d.osc("/melody/notes");
  assert.deepEqual(packets.map((p) => (p.length - 3) / 4), [per, per, 5]);
  assert.equal(new Set(packets.map((p) => p[1])).size, 1);
  const starts = packets.flatMap((p) => p.slice(3).filter((_, i) => i % 4 === 1));
  assert.deepEqual(starts, many.map((n) => n.start_time));
});

test("no MIDI clip selected: an error is shown and nothing is generated", () => {
  const d = started();
  d.bridge.setMelody(1);
  d.clear();
  assert.equal(d.bridge.generate(), null);
  assert.equal(d.osc("/generate").length, 0);
  assert.match(d.ui("error")[0][0], /select a MIDI clip/);
  d.live.selectClip({ is_midi_clip: 0, length: 4, notes: [] });
  d.bridge.generate();
  assert.match(d.ui("error")[1][0], /audio clip/);
  assert.equal(d.osc("/generate").length, 0);
});

test("the Melody menu only chooses; Rec/Open opens the file dialog or drives the bridge's microphone", () => {
  const d = started();
  d.clear();
  // Restoring a stored choice (a set, a device preset) goes through setMelody: nothing starts.
  d.bridge.setMelody(3);
  d.bridge.setMelody(4);
  d.bridge.setMelody(2);
  assert.equal(d.osc().length, 0);
  assert.equal(d.ui("pickfile").length, 0);
  d.bridge.setMelody(3);
  d.bridge.capture();
  assert.equal(d.ui("pickfile").length, 1);
  d.bridge.setMelodyFile("C:\\Users\\me\\hum.wav");
  assert.deepEqual(d.osc("/melody/audio"), [["/melody/audio", "C:/Users/me/hum.wav", 0]]);
  d.clear();
  d.bridge.setMelody(4); // hum (bridge mic): the alternative for a microphone Live does not use
  d.bridge.capture();
  d.bridge.generate();
  assert.deepEqual(d.osc().map((m) => m[0]), ["/melody/record/start", "/melody/record/stop", "/generate"]);
  d.bridge.setMelody(0);
  assert.deepEqual(d.osc("/melody/clear"), [["/melody/clear"]]);
  d.bridge.capture();
  assert.match(d.ui("error").at(-1)[0], /choose a melody source/);
});

test("/done loads the buffer, plays from the next bar line and creates a clip on Live 12", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.tickAt(5);
  const req = d.bridge.generate();
  d.clear();
  d.live.song.current_song_time = 5.3;
  d.bridge.receive("/done", [req, "/out/result.wav", 8, 4]);
  assert.deepEqual(d.ui("viewbuf"), [["replace", "/out/result.wav"]]);
  assert.deepEqual(d.ui("buf0"), [["replace", "/out/result.wav"]]);
  assert.equal(d.ui("play0").length, 0, "waits for the bar line");
  d.tickAt(7.5);
  assert.equal(d.ui("play0").length, 0);
  d.tickAt(8);
  assert.deepEqual(d.ui("play0"), [["loop", 1], ["startloop"]]);
  assert.deepEqual(d.ui("speed0"), [[1]]);
  // The first empty slot of the device's track gets the file; the next result the next one.
  assert.equal(d.live.slots[0].file, "/out/result.wav");
  assert.match(d.ui("status").at(-1)[0], /slot 1/);
  const req2 = d.bridge.generate();
  d.bridge.receive("/done", [req2, "/out/second.wav", 8, 4]);
  assert.equal(d.live.slots[0].file, "/out/result.wav");
  assert.equal(d.live.slots[1].file, "/out/second.wav");
  assert.match(d.ui("status").at(-1)[0], /slot 2/);
});

test("/done for a request the device no longer waits for is ignored", () => {
  const d = started();
  d.clear();
  d.bridge.receive("/done", [99, "/out/old.wav", 8, 4]);
  assert.equal(d.ui("buf0").length, 0);
  assert.equal(d.live.calls.filter((c) => c[1] === "create_audio_clip").length, 0);
});

test("before Live 12 no clip is created and the result still plays", () => {
  const d = started({ major: 11 });
  const req = d.bridge.generate();
  d.bridge.receive("/done", [req, "/out/result.wav", 8, 4]);
  assert.equal(d.live.calls.filter((c) => c[1] === "create_audio_clip").length, 0);
  assert.deepEqual(d.ui("play0"), [["loop", 1], ["startloop"]], "transport stopped: plays at once");
  assert.doesNotMatch(d.ui("status").at(-1)[0], /slot/);
  assert.match(d.ui("status").at(-1)[0], /\/out\/result\.wav/, "the path is shown instead");
});

test("a Live 12 without working create_audio_clip falls back gracefully", () => {
  const d = started({ clipCreation: false });
  const req = d.bridge.generate();
  d.bridge.receive("/done", [req, "/out/result.wav", 8, 4]);
  assert.equal(d.live.calls.filter((c) => c[1] === "create_audio_clip").length, 1);
  assert.match(d.ui("status").at(-1)[0], /done/);
  assert.doesNotMatch(d.ui("status").at(-1)[0], /slot/);
});

test("streamed chunks play back to back from the next bar line on alternating players", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.tickAt(1);
  const req = d.bridge.generate();
  d.clear();
  d.bridge.receive("/chunk", [req, 0, "/out/c0.wav", 0, 4]);
  d.bridge.receive("/chunk", [req, 1, "/out/c1.wav", 4, 4]);
  d.bridge.receive("/chunk", [req, 2, "/out/c2.wav", 8, 4]);
  assert.deepEqual(d.ui("buf0"), [["replace", "/out/c0.wav"]], "player 0 is busy until chunk 1 starts");
  assert.deepEqual(d.ui("buf1"), [["replace", "/out/c1.wav"]]);
  d.tickAt(4);
  assert.deepEqual(d.ui("play0"), [["loop", 0], ["startloop"]]);
  d.tickAt(8);
  assert.deepEqual(d.ui("play1"), [["loop", 0], ["startloop"]]);
  assert.deepEqual(d.ui("buf0").at(-1), ["replace", "/out/c2.wav"]);
  d.tickAt(12);
  assert.equal(d.ui("play0").length, 4);
  // The whole result only shows in the waveform: the chunks already played it.
  d.bridge.receive("/done", [req, "/out/all.wav", 6, 3]);
  assert.deepEqual(d.ui("viewbuf"), [["replace", "/out/all.wav"]]);
  assert.equal(d.ui("buf0").length, 2);
});

test("a late chunk moves the stream to the next bar line", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.tickAt(1);
  const req = d.bridge.generate();
  d.bridge.receive("/chunk", [req, 0, "/out/c0.wav", 0, 4]);
  d.tickAt(9); // chunk 1 was due at 8
  d.clear();
  d.bridge.receive("/chunk", [req, 1, "/out/c1.wav", 4, 4]);
  d.tickAt(9.5);
  assert.equal(d.ui("play1").length, 0);
  d.tickAt(12);
  assert.deepEqual(d.ui("play1"), [["loop", 0], ["startloop"]]);
  assert.match(d.ui("status")[0][0], /late/);
});

// The bridge adds song_beat to /chunk once it knows the transport: the song beat the chunk belongs on, which
// need not be the first bar line after the chunk arrives (the bridge picks it when the jam starts).
test("jam chunks with song_beat play on the song beat the bridge names", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.tickAt(1);
  const req = d.bridge.jam(true);
  d.clear();
  d.bridge.receive("/chunk", [req, 0, "/out/j0.wav", 0, 4, 8]);
  d.bridge.receive("/chunk", [req, 1, "/out/j1.wav", 4, 4, 12]);
  d.bridge.receive("/chunk", [req, 2, "/out/j2.wav", 8, 4, 16]);
  assert.deepEqual(d.ui("buf0"), [["replace", "/out/j0.wav"]]);
  assert.deepEqual(d.ui("buf1"), [["replace", "/out/j1.wav"]]);
  d.tickAt(4);
  assert.equal(d.ui("play0").length, 0, "not on the next bar line (4): the bridge said 8");
  d.tickAt(7.5);
  assert.equal(d.ui("play0").length, 0);
  d.tickAt(8);
  assert.deepEqual(d.ui("play0"), [["loop", 0], ["startloop"]]);
  assert.equal(d.ui("buf0").length, 1, "player 0 still plays chunk 0");
  d.tickAt(12);
  assert.deepEqual(d.ui("play1"), [["loop", 0], ["startloop"]]);
  assert.deepEqual(d.ui("buf0").at(-1), ["replace", "/out/j2.wav"], "loaded once chunk 1 has started");
  d.tickAt(16);
  assert.equal(d.ui("play0").length, 4);
});

test("jam chunks without song_beat start on the next bar line after the first arrives", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.tickAt(5);
  const req = d.bridge.jam(true);
  d.clear();
  d.bridge.receive("/chunk", [req, 0, "/out/j0.wav", 0, 4]);
  d.bridge.receive("/chunk", [req, 1, "/out/j1.wav", 4, 4]);
  d.tickAt(8);
  assert.deepEqual(d.ui("play0"), [["loop", 0], ["startloop"]]);
  d.tickAt(11.5);
  assert.equal(d.ui("play1").length, 0);
  d.tickAt(12);
  assert.deepEqual(d.ui("play1"), [["loop", 0], ["startloop"]]);
});

test("a jump of the playhead moves song_beat chunks along with it", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.tickAt(2);
  const req = d.bridge.jam(true);
  d.bridge.receive("/chunk", [req, 0, "/out/j0.wav", 0, 4, 8]);
  d.live.setSong("current_song_time", 0); // rewind by 2 beats: keep the chunk 6 beats from now
  d.clear();
  // The bridge's song_beat was fixed when the jam started; later chunks move by the same 2 beats.
  d.bridge.receive("/chunk", [req, 1, "/out/j1.wav", 4, 4, 12]);
  d.tickAt(5.5);
  assert.equal(d.ui("play0").length, 0);
  d.tickAt(6);
  assert.deepEqual(d.ui("play0"), [["loop", 0], ["startloop"]]);
  d.tickAt(9.5);
  assert.equal(d.ui("play1").length, 0);
  d.tickAt(10);
  assert.deepEqual(d.ui("play1"), [["loop", 0], ["startloop"]]);
});

test("a late song_beat chunk moves the rest of the jam to the next bar line", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.tickAt(9);
  const req = d.bridge.jam(true);
  d.clear();
  d.bridge.receive("/chunk", [req, 0, "/out/j0.wav", 0, 4, 8]); // due at 8, it is 9 already
  assert.match(d.ui("status").at(-1)[0], /late; playback moved by 4 beats/);
  d.bridge.receive("/chunk", [req, 1, "/out/j1.wav", 4, 4, 12]);
  d.tickAt(12);
  assert.deepEqual(d.ui("play0"), [["loop", 0], ["startloop"]]);
  assert.equal(d.ui("play1").length, 0, "chunk 1 keeps its place after chunk 0");
  d.tickAt(16);
  assert.deepEqual(d.ui("play1"), [["loop", 0], ["startloop"]]);
});

test("Continue records the track on bar lines, writes a WAV and sends /continue", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.tickAt(2);
  d.bridge.setBars(1); // 2 bars
  d.clear();
  d.bridge.setSampleRate(48000);
  const req = d.bridge.continueTrack();
  assert.deepEqual(d.ui("recbuf"), [["sizeinsamps", 192000], ["clear"]], "2 bars of 4/4 at 120 bpm at 48 kHz");
  d.tickAt(3.5);
  assert.equal(d.ui("rec").length, 0);
  d.tickAt(4);
  assert.deepEqual(d.ui("rec"), [[1]]);
  d.tickAt(12);
  const wav = `/rec/musicgen_bridge_rec_${req}.wav`;
  // record~ stops by itself when the buffer is full: no `rec 0` that could cut the last samples.
  assert.deepEqual(d.ui("rec"), [[1]]);
  assert.equal(d.ui("recbuf").length, 2, "written only after record~ has had time to fill the buffer");
  assert.deepEqual(d.waiting.map((w) => w[1]), [core.RECORD_TAIL_MS]);
  d.waiting.splice(0).forEach(([fn]) => fn());
  assert.deepEqual(d.ui("recbuf").at(-1), ["writewave", wav]);
  assert.equal(d.osc("/continue").length, 0, "waits for the file to be written");
  d.runLater();
  assert.deepEqual(d.osc("/continue"), [["/continue", req, wav, 2, 2]]);
});

test("Stop while the recording is being written: no /continue follows", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.tickAt(2);
  d.bridge.setBars(0);
  d.bridge.continueTrack();
  d.tickAt(4);
  d.tickAt(8);
  d.bridge.stop();
  d.runLater();
  assert.equal(d.osc("/continue").length, 0);
});

test("Continue needs the transport running", () => {
  const d = started();
  d.clear();
  assert.equal(d.bridge.continueTrack(), null);
  assert.match(d.ui("error")[0][0], /transport/);
  assert.equal(d.ui("rec").length, 0);
});

test("errors are shown with their code; a failed jam releases the Jam button", () => {
  const d = started();
  const req = d.bridge.generate();
  d.bridge.receive("/error", [req, "busy", "the engine is busy"]);
  assert.deepEqual(d.ui("error").at(-1), [`#${req} busy: the engine is busy`]);
  d.bridge.receive("/error", [-1, "internal", "oops"]);
  assert.deepEqual(d.ui("error").at(-1), ["internal: oops"]);
  const jam = d.bridge.jam(true);
  d.bridge.receive("/error", [jam, "no_model", "no model loaded"]);
  assert.deepEqual(d.ui("jamstate").at(-1), [0]);
  assert.match(d.ui("error").at(-1)[0], /no_model: no model loaded/);
  assert.equal(d.bridge.jamReq, null);
});

test("malformed or unknown messages from the bridge are ignored", () => {
  const d = started();
  const req = d.bridge.generate();
  d.clear();
  d.bridge.receive("/done", [req, "/out/x.wav"]); // too few arguments
  d.bridge.receive("/done", [req, 5, 8, 4]); // a number where the path should be
  d.bridge.receive("/nonsense", [1]);
  assert.equal(d.sent.length, 0);
  d.bridge.receive("/done", [req, "/out/x.wav", 8, 4]);
  assert.deepEqual(d.ui("buf0"), [["replace", "/out/x.wav"]]);
});

test("three missed heartbeats show 'engine lost'; the next one restores settings", () => {
  const d = started();
  d.bridge.setParam("temperature", 0.8);
  d.bridge.receive("/heartbeat", [0]);
  d.clock.ms += 2900;
  d.bridge.tick();
  assert.equal(d.ui("engine").filter((e) => /lost/.test(e[0])).length, 0);
  d.clock.ms += 200;
  d.bridge.tick();
  d.bridge.tick();
  assert.equal(d.ui("engine").filter((e) => /engine lost/.test(e[0])).length, 1, "shown once");
  d.clear();
  d.bridge.receive("/heartbeat", [0]);
  assert.match(d.ui("engine")[0][0], /back/);
  assert.deepEqual(d.osc("/set"), [["/set", "key", ""], ["/set", "temperature", 0.8]]);
});

test("a bridge that never answers is reported lost", () => {
  const d = started();
  d.clock.ms += 3500;
  d.bridge.tick();
  assert.match(d.ui("engine").at(-1)[0], /engine lost/);
});

test("a restarted bridge (heartbeat counting from 0 again) gets the settings again", () => {
  const d = started();
  d.bridge.setParam("top_k", 100);
  d.bridge.receive("/heartbeat", [41]);
  d.clear();
  d.bridge.receive("/heartbeat", [42]);
  assert.equal(d.osc("/set").length, 0);
  d.bridge.receive("/heartbeat", [0]);
  assert.deepEqual(d.osc("/set"), [["/set", "key", ""], ["/set", "top_k", 100]]);
});

test("status, progress and ack reach the status lines", () => {
  const d = started();
  const req = d.bridge.generate();
  d.bridge.receive("/ack", [req, "/generate"]);
  assert.match(d.ui("status").at(-1)[0], /accepted/);
  d.bridge.receive("/progress", [req, 0.456]);
  assert.match(d.ui("status").at(-1)[0], /46%/);
  d.bridge.receive("/status", ["ready", "facebook/musicgen-small", 31.25, 0, 0.62, "int8", 2]);
  assert.equal(d.ui("engine").at(-1)[0], "engine ready · facebook/musicgen-small (int8) · 31.3 steps/s · 0.62x real time · " +
    "0 queued · 2 underruns · WARNING slower than real time: jams start later");
  d.bridge.receive("/status", ["busy", "facebook/musicgen-small", 80, 1, 1.9, "bfloat16", 0]);
  assert.equal(d.ui("engine").at(-1)[0], "engine busy · facebook/musicgen-small (bfloat16) · 80.0 steps/s · 1.90x real time · 1 queued");
  d.bridge.receive("/status", ["loading", "", 0, 0, 0, "", 0]); // 0: not measured yet, no warning
  assert.equal(d.ui("engine").at(-1)[0], "engine loading · 0.0 steps/s · 0 queued");
  d.bridge.receive("/pong", [1, "0.1.0"]);
  assert.match(d.ui("engine").at(-1)[0], /0\.1\.0/);
});

test("Stop cancels requests, stops the jam and silences playback", () => {
  const d = started();
  const gen = d.bridge.generate();
  const jam = d.bridge.jam(true);
  d.clear();
  d.bridge.stop();
  assert.deepEqual(d.osc().sort(), [["/cancel", gen], ["/jam/stop", jam]].sort());
  assert.deepEqual(d.ui("speed0"), [[0]]);
  assert.deepEqual(d.ui("speed1"), [[0]]);
  assert.deepEqual(d.ui("jamstate"), [[0]]);
  d.bridge.receive("/error", [gen, "cancelled", "cancelled"]);
  assert.equal(d.ui("error").length, 0, "a cancel we asked for is not an error");
});

test("UI settings go to the bridge as /set and /preset", () => {
  const d = started();
  d.clear();
  d.bridge.setParam("cfg", 4.5);
  d.bridge.setParam("top_k", 200);
  d.bridge.setPreset("lofi-keys");
  assert.deepEqual(d.osc(), [["/set", "cfg", 4.5], ["/set", "top_k", 200], ["/preset", "lofi-keys"]]);
  d.bridge.receive("/ack", [-1, "/preset"]);
  assert.equal(d.ui("status").at(-1)[0], "preset lofi-keys loaded");
  d.clear();
  d.bridge.setParam("cfg", NaN);
  d.bridge.setParam("top_k", 5000);
  assert.equal(d.osc().length, 0, "values the bridge would refuse are not sent");
  assert.deepEqual(d.ui("error").map((e) => e[0]), ["/set: cfg must be a finite number", "/set: top_k must be in 0..2048"]);
  d.bridge.setPrompt("x".repeat(PROTOCOL_JSON.messages.find((m) => m.address === "/generate").args[1].max_len + 1));
  assert.equal(d.bridge.generate(), null);
  assert.match(d.ui("error").at(-1)[0], /prompt is too long/);
  assert.deepEqual(Object.keys(d.bridge.pending), []);
});

test("everything the device sends fits protocol.json", () => {
  const p = new Protocol(PROTOCOL_JSON);
  assert.deepEqual(p.types("/generate", "in", [1, "x", 4]), ["i", "s", "i"]);
  assert.deepEqual(p.types("/set", "in", ["cfg", 2.5]), ["s", "f"]);
  assert.deepEqual(p.types("/melody/notes", "in", [1, 4, 60, 0, 1, 100]), ["i", "f", "i", "f", "f", "i"]);
  assert.match(p.types("/generate", "in", [1, "x"]), /expects i:req s:prompt i:bars/);
  assert.match(p.types("/generate", "in", [1, "x", 4.5]), /whole number/);
  assert.match(p.types("/generate", "in", [1, "x", 100]), /must be in 1..64/);
  assert.match(p.types("/tempo", "in", [120, 4]), /expects/);
  assert.throws(() => p.message("/nope", "in"), /no in message/);
});

test("/set values are checked against the settings table", () => {
  const p = new Protocol(PROTOCOL_JSON);
  assert.deepEqual(p.types("/set", "in", ["temperature", 1]), ["s", "f"]);
  assert.deepEqual(p.types("/set", "in", ["prompt", "techno"]), ["s", "s"]);
  assert.match(p.types("/set", "in", ["top_k", 2.5]), /top_k must be a whole number/);
  assert.match(p.types("/set", "in", ["top_k", 5000]), /top_k must be in 0..2048/);
  assert.match(p.types("/set", "in", ["volume", 1]), /unknown setting volume/);
});

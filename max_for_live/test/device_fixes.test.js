"use strict";

// What real Live and Max do that the first fakes did not (issue 14), the takes, the real-time factor and the
// melody summary (issues 11 and 12), and the hum recorded through the track (issue 17). Each test fails on the
// device's earlier behaviour.

const test = require("node:test");
const assert = require("node:assert/strict");
const { makeDevice } = require("../test_support/harness.js");
const { foreignArray } = require("../test_support/fake_live.js");
const core = require("../mgb_bridge_core.js");

function started(liveOptions, envOptions) {
  const d = makeDevice(liveOptions, envOptions);
  d.bridge.start();
  return d;
}

test("paths from conformpath slash boot become paths Python opens, on macOS and Windows", () => {
  assert.equal(core.systemPath("/Users/me/hum.wav", "macintosh"), "/Users/me/hum.wav");
  assert.equal(core.systemPath("Data:/takes/hum.wav", "macintosh"), "/Volumes/Data/takes/hum.wav");
  assert.equal(core.systemPath("C:/Users/me/hum.wav", "windows"), "C:/Users/me/hum.wav");
  assert.equal(core.systemPath("C:\\Users\\me\\hum.wav", "windows"), "C:/Users/me/hum.wav");
  const d = started({}, { os: "macintosh" });
  d.bridge.setMelody(3);
  d.bridge.setMelodyFile("Data:/takes/hum.wav");
  assert.deepEqual(d.osc("/melody/audio"), [["/melody/audio", "/Volumes/Data/takes/hum.wav", 0]]);
});

test("Top K above 255 reaches the bridge as a whole number (a Float parameter, rounded here)", () => {
  const d = started();
  d.clear();
  d.bridge.setParam("top_k", 1000.4); // what a Float live.numbox shown as Int can send
  d.bridge.setParam("temperature", 0.85);
  assert.deepEqual(d.osc("/set"), [["/set", "top_k", 1000], ["/set", "temperature", 0.85]]);
  assert.equal(d.ui("error").length, 0);
});

test("LiveAPI arrays from another scope are read (Array.isArray, not instanceof)", () => {
  assert.equal(core.first(foreignArray([5])), 5);
  assert.deepEqual(core.idsOf(foreignArray(["id", 3, "id", 0, "id", 4])), [3, 4]);
  assert.ok(!(foreignArray([]) instanceof Array), "the fake's arrays really are foreign");
});

test("a loop wrap seen first by the metro tick still plays what is due at the loop end", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  const req = d.bridge.generate();
  d.live.play(4.25, { onTick: () => d.bridge.beat(), clock: d.clock });
  d.clear();
  d.bridge.receive("/done", [req, "/out/loop.wav", 2, 1]); // plays from the next bar line: beat 8, the loop end
  assert.equal(d.ui("play0").length, 0);
  // Live loops 4..8: observer callbacks at display rate and metro ticks interleaved; the tick at the loop end
  // reads 4 before any observer does.
  d.live.play(4.5, { loop: [4, 8], onTick: () => d.bridge.beat(), clock: d.clock });
  assert.deepEqual(d.ui("play0"), [["loop", 1], ["startloop"]], "started at the wrap");
  const transports = d.osc("/transport").map((m) => m[5]);
  assert.ok(transports.some((b) => b < 4.1), `the wrap was reported: ${transports}`);
});

test("bar-line jobs tolerate a late tick and never run early", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.tickAt(5);
  const req = d.bridge.generate();
  d.bridge.receive("/done", [req, "/out/r.wav", 2, 1]); // due at 8
  d.tickAt(7.5);
  d.live.song.current_song_time = 7.76; // the tick of 7.5 handled late: rounding made this 8
  d.bridge.beat();
  assert.equal(d.ui("play0").length, 0, "not a quarter beat early");
  d.live.song.current_song_time = 8.2; // the tick of 8 handled late
  d.bridge.beat();
  assert.deepEqual(d.ui("play0"), [["loop", 1], ["startloop"]]);
});

test("clip notes are read from the clip's loop, with times from the loop start", () => {
  const d = started();
  const note = (pitch, start) => ({ note_id: pitch, pitch, start_time: start, duration: 1, velocity: 100, mute: 0 });
  d.live.selectClip({ is_midi_clip: 1, length: 16, loop_start: 4, loop_end: 8, notes: [note(60, 1), note(62, 4), note(64, 7.5), note(65, 9)] });
  d.bridge.setMelody(1);
  d.clear();
  d.bridge.generate();
  assert.deepEqual(d.osc("/melody/notes")[0].slice(2), [4, 62, 0, 1, 100, 64, 3.5, 0.5, 100]);
  assert.deepEqual(d.live.calls.find((c) => c[1] === "get_notes_extended").slice(2), [0, 128, 4, 4]);
  // Not looping: start and end markers.
  d.live.selectClip({ is_midi_clip: 1, length: 16, looping: 0, start_marker: 1, end_marker: 5, notes: [note(60, 1), note(62, 4), note(64, 7.5)] });
  d.clear();
  d.bridge.generate();
  assert.deepEqual(d.osc("/melody/notes")[0].slice(2), [4, 60, 0, 1, 100, 62, 3, 1, 100]);
});

test("a device inside a rack finds its track's clip slots", () => {
  const d = started({ inRack: true });
  const req = d.bridge.generate();
  d.bridge.receive("/done", [req, "/out/rack.wav", 2, 1]);
  assert.equal(d.live.slots[0].file, "/out/rack.wav");
  assert.match(d.ui("status").at(-1)[0], /slot 1/);
});

test("Takes: /generate carries the count only above 1; each take gets its own clip slot on Live 12", () => {
  const d = started();
  d.clear();
  d.bridge.generate();
  assert.equal(d.osc("/generate")[0].length, 4, "one take: the 4th argument is left out");
  d.bridge.setTakes(3);
  const req = d.bridge.generate();
  assert.deepEqual(d.osc("/generate")[1], ["/generate", req, "", 4, 3]);
  d.bridge.receive("/take", [req, 2, "/out/t2.wav"]);
  d.bridge.receive("/take", [req, 0, "/out/t0.wav"]);
  d.bridge.receive("/take", [req, 1, "/out/t1.wav"]);
  assert.match(d.ui("status").at(-1)[0], /take 2 ready \(3 of 3\)/);
  assert.equal(d.live.slots[0].file, null, "clips wait for /done, to be in take order");
  d.bridge.receive("/done", [req, "/out/t0.wav", 8, 4]);
  assert.deepEqual(d.live.slots.map((s) => s.file), ["/out/t0.wav", "/out/t1.wav", "/out/t2.wav", null]);
  assert.deepEqual(d.ui("buf0").at(-1), ["replace", "/out/t0.wav"], "take 0 plays, as a single result does");
  assert.match(d.ui("status").at(-1)[0], /slot 1; take 2 in slot 2, take 3 in slot 3$/);
  d.bridge.setTakes(9);
  assert.equal(d.bridge.settings.takes, 4);
});

test("Takes on Live 11: take 0 plays and the take files are listed", () => {
  const d = started({ major: 11 });
  d.bridge.setTakes(2);
  const req = d.bridge.generate();
  d.bridge.receive("/take", [req, 1, "/out/t1.wav"]);
  d.bridge.receive("/done", [req, "/out/t0.wav", 8, 4]);
  assert.deepEqual(d.ui("buf0").at(-1), ["replace", "/out/t0.wav"]);
  assert.match(d.ui("status").at(-1)[0], /\/out\/t0\.wav; take 2: \/out\/t1\.wav$/);
  assert.equal(d.live.calls.filter((c) => c[1] === "create_audio_clip").length, 0);
});

test("/error slow goes to the status line and the jam goes on; /melody shows what the bridge heard", () => {
  const d = started();
  const jam = d.bridge.jam(true);
  d.clear();
  d.bridge.receive("/error", [jam, "slow", "chunk 3 moved to bar 12"]);
  assert.deepEqual(d.ui("status"), [[`#${jam} slow: chunk 3 moved to bar 12`]]);
  assert.equal(d.ui("error").length, 0);
  assert.equal(d.bridge.jamReq, jam, "still jamming");
  assert.deepEqual(d.ui("jamstate"), []);
  d.bridge.receive("/melody", ["/melody/audio", "D 34 %, A 19 %, F 17 %"]);
  assert.equal(d.ui("status").at(-1)[0], "melody heard: D 34 %, A 19 %, F 17 %");
});

test("Live 12's scale becomes /set key while Scale Mode is on; Live 11 sends no key", () => {
  const d = started();
  d.clear();
  d.live.setSong("root_note", 9);
  d.live.setSong("scale_name", "Minor");
  assert.equal(d.osc("/set").length, 0, "Scale Mode off: the preset's key still applies");
  d.live.setSong("scale_mode", 1);
  assert.deepEqual(d.osc("/set"), [["/set", "key", "A minor"]]);
  d.live.setSong("root_note", 2);
  d.live.setSong("scale_name", "Dorian");
  assert.deepEqual(d.osc("/set").slice(1), [["/set", "key", "D minor"], ["/set", "key", "D dorian"]]);
  const old = started({ major: 11 }); // the fake's Live 11 has no root_note: observing it would throw
  assert.equal(old.osc("/set").length, 0);
});

test("Melody hum: Rec/Open records this track from the next bar line for exactly the bars, then /melody/audio 1",
  () => {
    const d = started();
    d.live.setSong("tempo", 97);
    d.live.setSong("signature_numerator", 7);
    d.live.setSong("signature_denominator", 8);
    d.live.setSong("is_playing", 1);
    d.bridge.setSampleRate(48000);
    d.bridge.setMelody(2);
    d.bridge.setBars(1); // 2 bars
    d.tickAt(1);
    d.clear();
    const req = d.bridge.capture();
    // 2 bars of 7/8 at 97 bpm = 7 beats = 7 * 60 / 97 * 48000 samples.
    assert.deepEqual(d.ui("recbuf"), [["sizeinsamps", Math.round((7 * 60 * 48000) / 97)], ["clear"]]);
    d.tickAt(3); // the next bar line of 7/8 is 3.5
    assert.equal(d.ui("rec").length, 0);
    d.tickAt(3.5);
    assert.deepEqual(d.ui("rec"), [[1]]);
    d.tickAt(10.5);
    d.runLater();
    const wav = `/rec/musicgen_bridge_hum_${req}.wav`;
    assert.deepEqual(d.ui("rec"), [[1]], "record~ stops when full");
    assert.deepEqual(d.ui("recbuf").at(-1), ["writewave", wav]);
    assert.deepEqual(d.osc("/melody/audio"), [["/melody/audio", wav, 1]]);
    assert.match(d.ui("status").at(-1)[0], /reading its melody/);
  });

test("Melody hum: Generate during the recording ends it and sends the hum before /generate", () => {
  const d = started();
  d.live.setSong("is_playing", 1);
  d.bridge.setMelody(2);
  d.tickAt(1);
  const hum = d.bridge.capture();
  d.tickAt(6);
  d.clear();
  const req = d.bridge.generate();
  const wav = `/rec/musicgen_bridge_hum_${hum}.wav`;
  assert.deepEqual(d.ui("rec"), [[0]]);
  assert.deepEqual(d.osc(), [["/melody/audio", wav, 1], ["/generate", req, "", 4]]);
  assert.equal(d.bridge.recording, null);
  // Stop during a hum that has not started: nothing is recorded or sent.
  d.bridge.capture();
  d.bridge.stop();
  d.tickAt(12);
  d.runLater();
  assert.equal(d.osc("/melody/audio").length, 1);
});

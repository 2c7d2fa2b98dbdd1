"use strict";

// The device's JavaScript (bridge_core.js) against the REAL bridge: `musicgen-bridge serve --model random-tiny`
// in a subprocess, over real UDP sockets (test_support/udp_device.js stands in for udpsend/udpreceive) with a
// fake Live 12. The fake-bridge tests check the device's side of the protocol; this one checks that the two
// programs, as built, agree: addresses, types, replies, WAV files, bar lengths, presets.
//
// random-tiny is a small random text-only model (noise, not music), so generating takes well under a second.

const test = require("node:test");
const { describe, before, after } = test;
const assert = require("node:assert/strict");
const { spawn } = require("node:child_process");
const dgram = require("node:dgram");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { FakeLive } = require("../test_support/fake_live.js");
const { startUdpDevice } = require("../test_support/udp_device.js");
const { FakeMax, wavInfo } = require("../test_support/fake_max.js");

const DEVICE_DIR = path.join(__dirname, "..");
const SAMPLE_RATE = 32000; // MusicGen's (and random-tiny's) rate
const LIVE_RATE = 48000; // Live's sample rate in the fake: the device's own recordings are at this rate
const D4 = 293.66; // Hz: the hummed note
const READY_MS = 90000; // importing torch and building the model on two busy cores
const REQUEST_MS = 60000;

// $MUSICGEN_BRIDGE, else the project's venv (../.venv relative to max_for_live/), else the PATH.
function findBridge() {
  if (process.env.MUSICGEN_BRIDGE) {
    if (!fs.existsSync(process.env.MUSICGEN_BRIDGE)) {
      throw new Error(`MUSICGEN_BRIDGE=${process.env.MUSICGEN_BRIDGE} does not exist`);
    }
    return process.env.MUSICGEN_BRIDGE;
  }
  const names = process.platform === "win32" ? ["musicgen-bridge.exe", "musicgen-bridge"] : ["musicgen-bridge"];
  const venv = path.join(DEVICE_DIR, "..", ".venv", process.platform === "win32" ? "Scripts" : "bin");
  for (const dir of [venv, ...(process.env.PATH || "").split(path.delimiter).filter(Boolean)]) {
    for (const name of names) {
      const candidate = path.join(dir, name);
      try {
        fs.accessSync(candidate, fs.constants.X_OK);
        if (fs.statSync(candidate).isFile()) return candidate;
      } catch (e) {
        // not here: keep looking
      }
    }
  }
  // Not skipped: without the bridge this test cannot check anything, and a silent skip would hide that.
  throw new Error("musicgen-bridge not found (no $MUSICGEN_BRIDGE, no ../.venv/bin/musicgen-bridge, nothing on " +
    "PATH): run `bash scripts/test.sh` from the project root, which sets up the venv, or set MUSICGEN_BRIDGE");
}

// A UDP port that was free a moment ago (the bridge fails loudly if someone took it meanwhile).
function freePort() {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket("udp4");
    s.on("error", reject);
    s.bind(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const children = []; // bridges started by this file

function startServer(exe, port, replyPort, outDir) {
  const child = spawn(exe, ["serve", "--model", "random-tiny", "--host", "127.0.0.1", "--port", String(port),
    "--reply-port", String(replyPort), "--out-dir", outDir], {
    env: { ...process.env, OMP_NUM_THREADS: "1", MKL_NUM_THREADS: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  const server = { child, log: "", exited: null };
  const keep = (data) => {
    server.log = (server.log + data.toString()).slice(-6000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  child.on("exit", (code, signal) => {
    server.exited = signal || code;
  });
  child.on("error", (err) => {
    server.exited = String(err);
  });
  return server;
}

function stopServer(server) {
  return new Promise((resolve) => {
    if (!server || server.exited !== null) return resolve();
    const hard = setTimeout(() => server.child.kill("SIGKILL"), 5000);
    server.child.on("exit", () => {
      clearTimeout(hard);
      resolve();
    });
    server.child.kill("SIGTERM");
  });
}

// The samples in a WAV file, read from its header: { rate, channels, bits, frames }.
function readWavHeader(file) {
  const buf = fs.readFileSync(file);
  assert.equal(buf.toString("ascii", 0, 4), "RIFF", `${file} is not a RIFF file`);
  assert.equal(buf.toString("ascii", 8, 12), "WAVE", `${file} is not a WAVE file`);
  let fmt = null;
  for (let at = 12; at + 8 <= buf.length;) {
    const id = buf.toString("ascii", at, at + 4);
    const size = buf.readUInt32LE(at + 4);
    if (id === "fmt ") {
      fmt = {
        format: buf.readUInt16LE(at + 8),
        channels: buf.readUInt16LE(at + 10),
        rate: buf.readUInt32LE(at + 12),
        blockAlign: buf.readUInt16LE(at + 20),
        bits: buf.readUInt16LE(at + 22),
      };
    } else if (id === "data") {
      assert.ok(fmt, "fmt chunk before data");
      assert.ok(at + 8 + size <= buf.length, "data chunk runs past the end of the file");
      return { rate: fmt.rate, channels: fmt.channels, bits: fmt.bits, frames: size / fmt.blockAlign };
    }
    at += 8 + size + (size % 2); // chunks are padded to an even length
  }
  throw new Error(`${file} has no data chunk`);
}

// round(bars × 60/bpm × beats_per_bar × rate) with beats_per_bar = num × 4 / den, in integers (bpm whole).
function barSamples(bars, bpm, num, den) {
  return Math.round((bars * 60 * num * 4 * SAMPLE_RATE) / (bpm * den));
}

function presetMenuItems() {
  const patch = JSON.parse(fs.readFileSync(path.join(DEVICE_DIR, "MusicGenBridge.maxpat"), "utf8")).patcher;
  const menu = patch.boxes.map((b) => b.box).find((b) => b.maxclass === "live.menu" && b.varname === "Preset");
  return menu.saved_attribute_attributes.valueof.parameter_enum;
}

// Found before the tests are declared, so that a missing bridge is one plain failure with the way out in its
// message (inside a hook it would show as four cancelled tests).
let bridgeExe = null;
let notFound = null;
try {
  bridgeExe = findBridge();
} catch (err) {
  notFound = err;
}

if (notFound) {
  test("musicgen-bridge is installed, to test the device against it", () => {
    throw notFound;
  });
} else describe("the device against the real bridge (musicgen-bridge serve --model random-tiny)", () => {
  let server = null;
  let dev = null;
  let outDir = null;
  const live = new FakeLive({ major: 12 });
  // The track's input while the device records it: someone humming a steady D.
  const max = new FakeMax({ sampleRate: LIVE_RATE, input: (i) => 0.4 * Math.sin((2 * Math.PI * D4 * i) / LIVE_RATE) });

  // Resolves once check() returns something truthy (and returns it); fails after `ms`, or at once when the
  // bridge has exited, with the end of the bridge's log.
  function waitFor(check, what, ms = REQUEST_MS, poke = null) {
    const deadline = Date.now() + ms;
    let nextPoke = 0;
    return new Promise((resolve, reject) => {
      const poll = () => {
        let found;
        try {
          found = check();
        } catch (err) {
          return reject(err);
        }
        if (found) return resolve(found);
        if (server && server.exited !== null) {
          return reject(new Error(`the bridge exited (${server.exited}) while waiting for ${what}:\n${server.log}`));
        }
        if (Date.now() > deadline) {
          return reject(new Error(`timed out after ${ms} ms waiting for ${what}; bridge log:\n${server && server.log}`));
        }
        if (poke && Date.now() >= nextPoke) {
          poke();
          nextPoke = Date.now() + 250;
        }
        setTimeout(poll, 10);
      };
      poll();
    });
  }

  // Live plays on to song beat `to`: the metro ticks on every eighth on the way (a leap of several beats with no
  // tick in between would be a jump of the playhead, which the device follows).
  function walk(to) {
    for (let t = Math.floor(live.song.current_song_time * 2 + 1e-9) / 2 + 0.5; t <= to + 1e-9; t += 0.5) {
      live.song.current_song_time = t;
      dev.bridge.beat();
    }
    live.song.current_song_time = to;
    dev.bridge.beat();
  }

  const reply = (address, req) => dev.received.find((m) => m.address === address && m.args[0] === req);
  const errorsShown = () => dev.patch.filter((p) => p[0] === "error");

  // The reply that ends request `req`: /done, or a failure with the bridge's /error.
  async function finished(req) {
    const end = await waitFor(() => reply("/done", req) || reply("/error", req), `/done ${req}`);
    if (end.address === "/error") assert.fail(`#${req} failed on the bridge: ${end.args.join(" ")}`);
    return end;
  }

  before(async () => {
    outDir = fs.mkdtempSync(path.join(os.tmpdir(), "mgb-real-"));
    const port = await freePort();
    // The device's socket first: its port is the bridge's --reply-port, and nothing the bridge sends is missed.
    dev = await startUdpDevice({ port, replyPort: 0, live, max });
    server = startServer(bridgeExe, port, dev.replyPort, outDir);
    // What the device does when it loads: /ping, /status, /tempo, /transport (the bridge may not listen yet).
    dev.bridge.start();
    dev.bridge.setSampleRate(LIVE_RATE); // what dspstate~ reports
    const ready = () => dev.received.find((m) => m.address === "/status" && m.args[0] === "ready");
    const noModel = () => dev.received.find((m) => m.address === "/error" && m.args[1] === "no_model");
    await waitFor(() => {
      if (noModel()) throw new Error(`the bridge could not load random-tiny: ${noModel().args[2]}\n${server.log}`);
      return ready();
    }, "/status ready", READY_MS, () => dev.bridge.send("/status", []));
    assert.ok(dev.patch.some((p) => p[0] === "engine" && /^engine ready · random-tiny/.test(p[1])),
      "the engine line shows the ready bridge");
  }, { timeout: READY_MS + 10000 });

  after(async () => {
    await stopServer(server);
    if (dev) await dev.close();
    if (outDir) fs.rmSync(outDir, { recursive: true, force: true });
  }, { timeout: 15000 });

  test("Generate gives a WAV of exactly the bars at Live's tempo, loaded into the player and a new clip",
    { timeout: REQUEST_MS + 5000 }, async () => {
      // Live changes tempo and meter, then starts: the device's observers send /tempo and /transport.
      live.setSong("tempo", 97);
      live.setSong("signature_numerator", 7);
      live.setSong("signature_denominator", 8);
      live.setSong("is_playing", 1);
      assert.deepEqual(dev.sent.filter((m) => m.address === "/tempo").at(-1).args, [97, 7, 8]);
      assert.deepEqual(dev.sent.filter((m) => m.address === "/transport").at(-1).args, [1, 97, 7, 8, 0]);

      dev.bridge.setPrompt("real bridge test");
      dev.bridge.setBars(1); // the Bars menu's second item: 2 bars
      const req = dev.bridge.generate(); // what the Generate button calls (through musicgen_bridge.js)
      assert.ok(req, "the device sent /generate");
      assert.deepEqual(dev.sent.at(-1).args, [req, "real bridge test", 2]);
      const done = await finished(req);
      assert.ok(reply("/ack", req), "the bridge acknowledged the request");

      const [, wav, seconds, bars] = done.args;
      assert.ok(path.isAbsolute(wav) && fs.existsSync(wav), `the WAV ${wav} exists`);
      assert.equal(path.dirname(wav), fs.realpathSync(outDir), "written into --out-dir");
      const header = readWavHeader(wav);
      const expected = barSamples(2, 97, 7, 8); // 2 bars of 7/8 at 97 bpm = 138557 samples
      assert.equal(header.rate, SAMPLE_RATE);
      assert.equal(header.frames, expected, "exactly 2 bars at 97 bpm in 7/8");
      assert.equal(bars, 2);
      assert.ok(Math.abs(seconds - expected / SAMPLE_RATE) < 1e-4, `/done says ${seconds} s`);

      // The fake Max side: the player's buffer and the waveform got the file; the fake Live 12 a new clip.
      await waitFor(() => dev.patch.some((p) => p[0] === "buf0"), "the buffer load");
      assert.deepEqual(dev.patch.filter((p) => p[0] === "buf0"), [["buf0", "replace", wav]]);
      assert.deepEqual(dev.patch.filter((p) => p[0] === "viewbuf"), [["viewbuf", "replace", wav]]);
      assert.deepEqual(live.calls.filter((c) => c[1] === "create_audio_clip"), [["id 100", "create_audio_clip", wav]]);
      assert.equal(live.slots[0].file, wav);
      // random-tiny is mono, like musicgen-small/medium/large/melody: the file is stereo, so that buffer~ replace
      // (which takes the file's channel count) feeds both of groove~ 2's outlets.
      assert.equal(header.channels, 2);
      assert.deepEqual(max.outputs(0), [true, true], "the result plays on both sides");
      assert.match(dev.patch.filter((p) => p[0] === "status").at(-1)[1], new RegExp(`^#${req} done: 2\\.00 bars.*slot 1`));
      // It loops from the next bar line of 7/8 (3.5 beats) while Live plays.
      walk(3);
      assert.equal(dev.patch.filter((p) => p[0] === "play0").length, 0);
      walk(3.5);
      assert.deepEqual(dev.patch.filter((p) => p[0] === "play0"), [["play0", "loop", 1], ["play0", "startloop"]]);
      assert.equal(errorsShown().length, 0, JSON.stringify(errorsShown()));
    });

  test("a selected MIDI clip goes to the bridge as /melody/notes; a text model refuses the melody with bad_args",
    { timeout: REQUEST_MS + 5000 }, async () => {
      live.selectClip({
        is_midi_clip: 1,
        length: 4,
        notes: [0, 1, 2, 3].map((i) => ({ note_id: i, pitch: 60 + 2 * i, start_time: i, duration: 1, velocity: 100, mute: 0 })),
      });
      dev.bridge.setMelody(1); // "selected MIDI clip": read when Generate is pressed
      const req = dev.bridge.generate();
      assert.ok(req);
      const notes = dev.sent.filter((m) => m.address === "/melody/notes");
      assert.equal(notes.length, 1);
      const notesReq = notes[0].args[0];
      assert.deepEqual(notes[0].args.slice(1), [4, 60, 0, 1, 100, 62, 1, 1, 100, 64, 2, 1, 100, 66, 3, 1, 100]);
      const ack = await waitFor(() => reply("/ack", notesReq), "/ack for /melody/notes");
      assert.equal(ack.args[1], "/melody/notes");

      const end = await waitFor(() => reply("/done", req) || reply("/error", req), `the end of #${req}`);
      assert.equal(end.address, "/error", "random-tiny has no melody conditioning");
      assert.equal(end.args[1], "bad_args");
      // Shown on the device's error line, with the request and the code.
      const shown = errorsShown().at(-1);
      assert.ok(shown, "an error is shown");
      assert.match(shown[1], new RegExp(`^#${req} bad_args: .*melody`));
      assert.equal(dev.bridge.pending[req], undefined, "the device no longer waits for it");

      // Back to text alone for what follows.
      dev.bridge.setMelody(0);
      await waitFor(() => dev.received.find((m) => m.address === "/ack" && m.args[1] === "/melody/clear"),
        "/ack for /melody/clear");
    });

  test("a jam's chunks carry song_beat, bar-exact WAVs, and the device plays them on that beat",
    { timeout: REQUEST_MS + 5000 }, async () => {
      const errorsBefore = errorsShown().length;
      // A jump of the playhead: the device sends /transport with the new position (still 97 bpm, 7/8, playing).
      live.setSong("current_song_time", 8.5);
      assert.deepEqual(dev.sent.filter((m) => m.address === "/transport").at(-1).args, [1, 97, 7, 8, 8.5]);
      const req = dev.bridge.jam(true);
      assert.ok(req);
      // Live plays on while the bridge works (1.7 beats: no jump, so no /transport). With the transport in step
      // the device's own next-bar rule would also give 10.5; bridge_core.test.js checks that song_beat wins
      // where they differ. Here: the real bridge sends song_beat, and the chunk waits for that beat.
      live.setSong("current_song_time", 10.2);
      const chunk = await waitFor(() => reply("/chunk", req) || reply("/error", req), `/chunk 0 of #${req}`);
      assert.equal(chunk.address, "/chunk", `the jam failed: ${chunk.args.join(" ")}`);
      const [, index, wav, startBeat, beats, songBeat] = chunk.args;
      assert.equal(index, 0);
      assert.equal(startBeat, 0);
      assert.equal(beats, 3.5, "chunk_bars 1: one bar of 7/8");
      assert.equal(readWavHeader(wav).frames, barSamples(1, 97, 7, 8));
      // The bridge had /transport: it names the song beat, a bar line (3.5 beats apart) after 8.5.
      assert.equal(chunk.args.length, 6, "song_beat is sent");
      assert.ok(songBeat >= 10.5 && Math.abs(songBeat / 3.5 - Math.round(songBeat / 3.5)) < 1e-6, `song_beat ${songBeat}`);

      await waitFor(() => dev.patch.some((p) => p[0] === "buf0" && p[2] === wav), "chunk 0 in player 0");
      const plays = () => dev.patch.filter((p) => p[0] === "play0").length;
      const before = plays();
      dev.bridge.beat(); // the metro's tick at 10.2
      assert.equal(plays(), before, "not before the song beat the bridge named");
      walk(songBeat - 0.5);
      assert.equal(plays(), before, "not before the song beat the bridge named");
      walk(songBeat);
      assert.deepEqual(dev.patch.filter((p) => p[0] === "play0").slice(before), [["play0", "loop", 0], ["play0", "startloop"]]);

      dev.bridge.jam(false);
      assert.equal(dev.sent.at(-1).address, "/jam/stop");
      await waitFor(() => dev.received.find((m) => m.address === "/ack" && m.args[0] === req && m.args[1] === "/jam/stop"),
        "/ack for /jam/stop");
      await finished(req); // the whole jam as one WAV
      assert.equal(errorsShown().length, errorsBefore, JSON.stringify(errorsShown()));
    });

  test("every item of the device's Preset menu is a preset the bridge loads", { timeout: REQUEST_MS }, async () => {
    const items = presetMenuItems();
    assert.ok(items.length > 0);
    const errorsBefore = errorsShown().length;
    for (const name of items) {
      dev.bridge.setPreset(name); // what choosing it in the menu does
      await waitFor(() => dev.patch.some((p) => p[0] === "status" && p[1] === `preset ${name} loaded`),
        `/ack for /preset ${name}`, 10000);
      assert.equal(errorsShown().length, errorsBefore, JSON.stringify(errorsShown()));
    }
    // A name the bridge does not have is refused, and the device shows why.
    dev.bridge.setPreset("no-such-preset");
    await waitFor(() => errorsShown().length > errorsBefore, "/error for an unknown preset", 10000);
    assert.match(errorsShown().at(-1)[1], /^not_found: no preset named 'no-such-preset'/);
  });

  // Issue 17: the hum comes in through the track (Live owns the audio interface), not the bridge's microphone.
  test("Melody hum: the device records the track for exactly the bars, the bridge hears the melody",
    { timeout: REQUEST_MS + 5000 }, async () => {
      const errorsBefore = errorsShown().length;
      // Still 97 bpm in 7/8, playing. Move to a bar line, then walk the metro ticks as Live plays.
      live.setSong("current_song_time", 35);
      dev.bridge.setMelody(2); // hum
      dev.bridge.setBars(0); // 1 bar
      const hum = dev.bridge.capture(); // the Rec/Open button
      assert.ok(hum, "recording armed");
      walk(38.5); // the next bar line of 7/8 after 35 is 38.5 (3.5 beats a bar)
      assert.deepEqual(dev.patch.filter((p) => p[0] === "rec"), [["rec", 1]]);
      walk(42); // one bar later: record~ is full
      const audio = await waitFor(() => dev.sent.find((m) => m.address === "/melody/audio" && m.args[1] === 1),
        "/melody/audio with hum=1", 5000);
      const file = audio.args[0];
      assert.deepEqual(max.written, [file]);
      const info = wavInfo(file);
      assert.equal(info.rate, LIVE_RATE);
      assert.equal(info.frames, Math.round((1 * 60 * 7 * 4 * LIVE_RATE) / (97 * 8)), "exactly one bar of 7/8 at 97 bpm");
      assert.equal(dev.patch.filter((p) => p[0] === "rec" && p[1] === 0).length, 0, "record~ stopped by itself");

      await waitFor(() => dev.received.find((m) => m.address === "/ack" && m.args[1] === "/melody/audio"),
        "/ack for /melody/audio");
      const heard = await waitFor(() => dev.received.find((m) => m.address === "/melody"), "/melody");
      assert.equal(heard.args[0], "/melody/audio");
      assert.match(heard.args[1], /^D \d+ %/, `the bridge heard a D: ${heard.args[1]}`);
      await waitFor(() => dev.patch.some((p) => p[0] === "status" && p[1] === `melody heard: ${heard.args[1]}`),
        "the summary in the status line", 1000);
      assert.equal(errorsShown().length, errorsBefore, JSON.stringify(errorsShown()));
      fs.rmSync(file, { force: true });
      dev.bridge.setMelody(0);
    });
});

// A test process that ends without the after hook (an uncaught error, --test-timeout) must not leave the bridge
// running: kill it on the way out.
process.on("exit", () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
});

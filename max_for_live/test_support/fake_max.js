// The patch objects under the js's route, as far as the tests need them, behaving as Max's do:
// - `buffer~ replace PATH` takes the file's length AND channel count; `groove~ NAME 2` is silent on a channel
//   the buffer lacks (a mono file plays on the left only);
// - `buffer~ sizeinsamps N` / `clear` size and zero the recorder's 2-channel buffer; `record~` (rec 1) fills it
//   from the track's input and stops by itself when it is full; `writewave PATH` writes the whole buffer.
"use strict";

const fs = require("node:fs");

// { channels, rate, frames } from a WAV file's header.
function wavInfo(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString("ascii", 0, 4) !== "RIFF" || buf.toString("ascii", 8, 12) !== "WAVE") throw new Error(`${file}: not a WAV`);
  let fmt = null;
  for (let at = 12; at + 8 <= buf.length;) {
    const id = buf.toString("ascii", at, at + 4);
    const size = buf.readUInt32LE(at + 4);
    if (id === "fmt ") fmt = { channels: buf.readUInt16LE(at + 10), rate: buf.readUInt32LE(at + 12), align: buf.readUInt16LE(at + 20) };
    if (id === "data") return { channels: fmt.channels, rate: fmt.rate, frames: size / fmt.align };
    at += 8 + size + (size % 2);
  }
  throw new Error(`${file}: no data chunk`);
}

// 16-bit PCM WAV of `frames` frames, sample(i, channel) in -1..1.
function writeWav(file, { rate, channels, frames }, sample) {
  const data = Buffer.alloc(frames * channels * 2);
  for (let i = 0; i < frames; i++) {
    for (let c = 0; c < channels; c++) data.writeInt16LE(Math.round(Math.max(-1, Math.min(1, sample(i, c))) * 32767), (i * channels + c) * 2);
  }
  const head = Buffer.alloc(44);
  head.write("RIFF", 0, "ascii");
  head.writeUInt32LE(36 + data.length, 4);
  head.write("WAVEfmt ", 8, "ascii");
  head.writeUInt32LE(16, 16);
  head.writeUInt16LE(1, 20);
  head.writeUInt16LE(channels, 22);
  head.writeUInt32LE(rate, 24);
  head.writeUInt32LE(rate * channels * 2, 28);
  head.writeUInt16LE(channels * 2, 32);
  head.writeUInt16LE(16, 34);
  head.write("data", 36, "ascii");
  head.writeUInt32LE(data.length, 40);
  fs.writeFileSync(file, Buffer.concat([head, data]));
}

class FakeMax {
  // input(i, channel): what reaches the track's input (plugin~) at sample i of a recording.
  constructor({ sampleRate = 48000, input = () => 0 } = {}) {
    this.sampleRate = sampleRate;
    this.input = input;
    this.buffers = {}; // buf0, buf1, viewbuf: { channels, frames, path }
    this.rec = { channels: 2, frames: 0, filled: 0 };
    this.written = []; // paths writewave wrote
  }

  // One patch command from the js (outlet 1, through the route).
  command(name, ...args) {
    if (/^(buf[01]|viewbuf)$/.test(name) && args[0] === "replace") {
      const info = wavInfo(args[1]);
      this.buffers[name] = { channels: info.channels, frames: info.frames, path: args[1] };
    } else if (name === "recbuf") {
      if (args[0] === "sizeinsamps") this.rec.frames = Number(args[1]);
      else if (args[0] === "clear") this.rec.filled = 0;
      else if (args[0] === "writewave") {
        const filled = this.rec.filled;
        writeWav(args[1], { rate: this.sampleRate, channels: this.rec.channels, frames: this.rec.frames },
          (i, c) => (i < filled ? this.input(i, c) : 0));
        this.written.push(args[1]);
      }
    } else if (name === "rec" && Number(args[0]) === 1) {
      this.rec.filled = this.rec.frames; // record~ runs until the buffer is full, then stops by itself
    }
  }

  // Which of groove~ 2's outlets carry sound for player `slot`: [left, right].
  outputs(slot) {
    const b = this.buffers[`buf${slot}`];
    return b ? [b.channels >= 1, b.channels >= 2] : [false, false];
  }
}

module.exports = { FakeMax, wavInfo, writeWav };

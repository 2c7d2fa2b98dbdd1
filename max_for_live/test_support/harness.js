// Builds a mgb_bridge_core instance against FakeLive, a fake clock and a recorder of everything it sends.
"use strict";

const core = require("../mgb_bridge_core.js");
const { Protocol } = require("../mgb_protocol.js");
const { TABLE } = require("../mgb_protocol_data.js");
const { FakeLive } = require("./fake_live.js");

const PROTOCOL_JSON = TABLE; // the table the device carries (test/protocol_data.test.js: equal to protocol.json)

function makeDevice(liveOptions, envOptions = {}) {
  const live = new FakeLive(liveOptions);
  const clock = { ms: 1000 };
  const sent = []; // every out(name, ...args), in order
  const waiting = []; // [fn, ms] handed to env.later
  const bridge = core.createBridge({
    protocol: new Protocol(PROTOCOL_JSON),
    liveApi: live.factory(),
    out: (...args) => sent.push(args),
    now: () => clock.ms,
    later: (fn, ms) => waiting.push([fn, ms]),
    recordDir: "/rec",
    ...envOptions,
  });
  return {
    live,
    clock,
    sent,
    bridge,
    waiting,
    // OSC messages sent to the bridge, optionally only one address, as [address, ...args].
    osc: (address) => sent.filter((m) => m[0].startsWith("/") && (!address || m[0] === address)),
    // Patch commands of one name, as their argument lists.
    ui: (name) => sent.filter((m) => m[0] === name).map((m) => m.slice(1)),
    clear: () => sent.splice(0),
    // Run what was handed to env.later, including what those functions hand on in turn.
    runLater() {
      while (waiting.length) waiting.splice(0).forEach(([fn]) => fn());
    },
    // Move Live's playhead forward to `beats` as playing does: the metro ticks on every eighth note on the way,
    // then at `beats`. Backwards (or when stopped) it is a jump: one tick at `beats`.
    tickAt(beats) {
      let at = live.song.current_song_time;
      if (live.song.is_playing && beats > at) {
        for (let t = Math.floor(at * 2 + 1e-9) / 2 + 0.5; t < beats - 1e-9; t += 0.5) {
          live.song.current_song_time = t;
          bridge.beat();
        }
      }
      live.song.current_song_time = beats;
      bridge.beat();
    },
  };
}

module.exports = { makeDevice, PROTOCOL_JSON };

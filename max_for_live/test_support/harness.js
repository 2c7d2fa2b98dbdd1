// Builds a bridge_core instance against FakeLive, a fake clock and a recorder of everything it sends.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const core = require("../bridge_core.js");
const { Protocol } = require("../protocol_table.js");
const { FakeLive } = require("./fake_live.js");

const PROTOCOL_JSON = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "protocol.json"), "utf8"));

function makeDevice(liveOptions) {
  const live = new FakeLive(liveOptions);
  const clock = { ms: 1000 };
  const sent = []; // every out(name, ...args), in order
  const waiting = []; // functions handed to env.later
  const bridge = core.createBridge({
    protocol: new Protocol(PROTOCOL_JSON),
    liveApi: live.factory(),
    out: (...args) => sent.push(args),
    now: () => clock.ms,
    later: (fn) => waiting.push(fn),
    recordDir: "/rec",
  });
  return {
    live,
    clock,
    sent,
    bridge,
    // OSC messages sent to the bridge, optionally only one address, as [address, ...args].
    osc: (address) => sent.filter((m) => m[0].startsWith("/") && (!address || m[0] === address)),
    // Patch commands of one name, as their argument lists.
    ui: (name) => sent.filter((m) => m[0] === name).map((m) => m.slice(1)),
    clear: () => sent.splice(0),
    runLater: () => waiting.splice(0).forEach((fn) => fn()),
    // Move Live's playhead to `beats` and deliver the metro tick the patch would send there.
    tickAt(beats) {
      live.song.current_song_time = beats;
      bridge.beat();
    },
  };
}

module.exports = { makeDevice, PROTOCOL_JSON };

// The device's logic on real UDP sockets instead of Max's udpsend/udpreceive, against a FakeLive: for tests
// that talk to a bridge (a fake one here; the real `musicgen-bridge serve` in integration tests).
//
//   const dev = await startUdpDevice({ port: 9000, replyPort: 0 });  // replyPort 0: any free port
//   dev.bridge.generate(); ... dev.patch (patch commands received), dev.sent / dev.received (OSC out / in),
//   dev.live (FakeLive); await dev.close();
"use strict";

const dgram = require("node:dgram");
const core = require("../mgb_bridge_core.js");
const { Protocol } = require("../mgb_protocol.js");
const { FakeLive } = require("./fake_live.js");
const { PROTOCOL_JSON } = require("./harness.js");
const osc = require("./osc.js");

// max: a FakeMax that also gets the patch commands (players, recorder), as the objects under the route would.
function startUdpDevice({ host, port, replyPort, live, max } = {}) {
  const defaults = PROTOCOL_JSON.defaults;
  host = host || defaults.host;
  port = port || defaults.port;
  const protocol = new Protocol(PROTOCOL_JSON);
  const socket = dgram.createSocket("udp4");
  const patch = []; // patch commands (non-OSC outputs), as [name, ...args]
  const received = []; // OSC messages from the bridge, decoded
  const sent = []; // OSC messages to the bridge, as { address, types, args }
  live = live || new FakeLive();
  const bridge = core.createBridge({
    protocol,
    liveApi: live.factory(),
    out: (name, ...args) => {
      if (name.charAt(0) !== "/") {
        patch.push([name, ...args]);
        if (max) max.command(name, ...args);
        return;
      }
      // Max decides int or float by the value; here the table decides, as the bridge expects.
      const types = protocol.types(name, "in", args);
      sent.push({ address: name, types, args });
      socket.send(osc.encode(name, types, args), port, host);
    },
    later: (fn, ms) => setTimeout(fn, ms),
    recordDir: require("node:os").tmpdir(),
  });
  socket.on("message", (buf) => {
    const msg = osc.decode(buf);
    received.push(msg);
    bridge.receive(msg.address, msg.args);
  });
  return new Promise((resolve) => {
    socket.bind(replyPort === undefined ? defaults.reply_port : replyPort, host, () => {
      resolve({
        bridge,
        live,
        patch,
        received,
        sent,
        replyPort: socket.address().port,
        close: () => new Promise((done) => socket.close(done)),
      });
    });
  });
}

module.exports = { startUdpDevice };

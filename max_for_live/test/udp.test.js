"use strict";

// The device logic over real UDP sockets, against a fake bridge that speaks OSC: what udpsend/udpreceive do in
// Max. The same helper drives the real bridge in integration tests.

const test = require("node:test");
const assert = require("node:assert/strict");
const dgram = require("node:dgram");
const osc = require("../test_support/osc.js");
const { startUdpDevice } = require("../test_support/udp_device.js");

function fakeBridge() {
  const socket = dgram.createSocket("udp4");
  const inbox = [];
  const waiters = [];
  socket.on("message", (buf) => {
    inbox.push(osc.decode(buf));
    waiters.splice(0).forEach((w) => w());
  });
  return new Promise((resolve) => {
    socket.bind(0, "127.0.0.1", () => {
      resolve({
        port: socket.address().port,
        inbox,
        // Resolves with the first message to `address`, waiting for it if needed.
        async next(address) {
          for (;;) {
            const found = inbox.find((m) => m.address === address);
            if (found) return found;
            await new Promise((r) => waiters.push(r));
          }
        },
        reply: (to, address, types, args) => socket.send(osc.encode(address, types, args), to, "127.0.0.1"),
        close: () => new Promise((done) => socket.close(done)),
      });
    });
  });
}

function until(check) {
  return new Promise((resolve) => {
    const poll = () => (check() ? resolve() : setTimeout(poll, 5));
    poll();
  });
}

test("device and bridge talk OSC over UDP with the declared types", async () => {
  const bridge = await fakeBridge();
  const dev = await startUdpDevice({ port: bridge.port, replyPort: 0 });
  try {
    dev.bridge.start();
    const ping = await bridge.next("/ping");
    assert.deepEqual(ping.types, ["i"]);
    const tempo = await bridge.next("/tempo");
    assert.deepEqual(tempo.types, ["f", "i", "i"], "bpm goes as a float even when it is a whole number");
    assert.deepEqual(tempo.args, [120, 4, 4]);

    dev.bridge.setPrompt("glitchy ambient");
    const req = dev.bridge.generate();
    const gen = await bridge.next("/generate");
    assert.deepEqual(gen.types, ["i", "s", "i"]);
    assert.deepEqual(gen.args, [req, "glitchy ambient", 4]);

    bridge.reply(dev.replyPort, "/pong", ["i", "s"], [ping.args[0], "9.9.9"]);
    bridge.reply(dev.replyPort, "/done", ["i", "s", "f", "f"], [req, "/tmp/result.wav", 8, 4]);
    await until(() => dev.patch.some((p) => p[0] === "viewbuf"));
    assert.ok(dev.patch.some((p) => p[0] === "engine" && /9\.9\.9/.test(p[1])));
    assert.deepEqual(dev.patch.find((p) => p[0] === "viewbuf"), ["viewbuf", "replace", "/tmp/result.wav"]);
    assert.equal(dev.live.slots[0].file, "/tmp/result.wav");
  } finally {
    await dev.close();
    await bridge.close();
  }
});

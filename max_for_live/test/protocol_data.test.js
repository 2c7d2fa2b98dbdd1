"use strict";

// The protocol table the device carries (mgb_protocol_data.js, built by scripts/build_amxd.py) is the one the
// bridge writes (protocol.json, from bridge/protocol.py). A protocol change without a device rebuild fails here.

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { TABLE } = require("../mgb_protocol_data.js");

test("the embedded protocol table equals protocol.json (else run: python scripts/build_amxd.py)", () => {
  const json = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "protocol.json"), "utf8"));
  assert.deepEqual(TABLE, json);
});

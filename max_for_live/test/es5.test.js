"use strict";

// Max's legacy `js` object runs ES5. Node would happily run newer syntax, so parse the files Max loads with a
// real parser at ES5 (acorn, ecmaVersion 5): let, const, arrows, template literals, classes, spread and the like
// are syntax errors there. The files must also be ASCII (Max's js reads them in the system encoding: non-ASCII
// characters are written as \u escapes) and fill `exports` (Max's require() knows nothing of module.exports).

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const acorn = require("acorn");

const DIR = path.join(__dirname, "..");
// The js object's script and what it requires: the patch's dependency list (scripts/build_amxd.py keeps it).
const MAX_FILES = JSON.parse(fs.readFileSync(path.join(DIR, "MusicGenBridge.maxpat"), "utf8"))
  .patcher.dependency_cache.map((d) => d.name);

test("the patch lists the scripts Max loads", () => {
  assert.deepEqual(MAX_FILES, ["musicgen_bridge.js", "mgb_bridge_core.js", "mgb_protocol.js", "mgb_protocol_data.js"]);
});

for (const name of MAX_FILES) {
  test(`${name} is ES5, ASCII and fills exports`, () => {
    const source = fs.readFileSync(path.join(DIR, name), "utf8");
    assert.doesNotThrow(() => acorn.parse(source, { ecmaVersion: 5, sourceType: "script" }), `${name} is not ES5`);
    const nonAscii = source.split("\n").findIndex((line) => /[^\x00-\x7f]/.test(line));
    assert.equal(nonAscii, -1, `${name} line ${nonAscii + 1} has a non-ASCII character`);
    assert.doesNotMatch(source, /module\.exports/, `${name} uses module.exports`);
  });
}

test("the parser rejects what Max's js cannot run (negative control)", () => {
  for (const code of ["let x = 1;", "const y = 2;", "var f = (a) => a;", "var s = `t`;", "class A {}", "f(...xs);"]) {
    assert.throws(() => acorn.parse(code, { ecmaVersion: 5, sourceType: "script" }), code);
  }
});

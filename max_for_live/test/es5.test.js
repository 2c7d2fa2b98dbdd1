"use strict";

// Max's legacy `js` object runs ES5. Node would happily run newer syntax, so look for it in the files Max loads.

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");

const MAX_FILES = ["musicgen_bridge.js", "bridge_core.js", "protocol_table.js"];

// Drop comments and string/regex contents so that only code is checked.
function codeOnly(source) {
  return source
    .replace(/\/\/[^\n]*/g, "")
    .replace(/"(?:[^"\\\n]|\\.)*"/g, '""')
    .replace(/'(?:[^'\\\n]|\\.)*'/g, "''")
    .replace(/\/\*[\s\S]*?\*\//g, "");
}

for (const name of MAX_FILES) {
  test(`${name} is ES5`, () => {
    const code = codeOnly(fs.readFileSync(path.join(__dirname, "..", name), "utf8"));
    for (const [pattern, what] of [
      [/\blet\s/, "let"],
      [/\bconst\s/, "const"],
      [/=>/, "arrow function"],
      [/`/, "template literal"],
      [/\bclass\s/, "class"],
      [/\.\.\.\w/, "spread"],
      [/module\.exports/, "module.exports (Max's require only fills `exports`)"],
    ]) {
      assert.doesNotMatch(code, pattern, `${name} uses ${what}`);
    }
  });
}

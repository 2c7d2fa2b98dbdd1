// Just enough OSC 1.0 for tests: messages with int32 (i), float32 (f) and string (s) arguments.
"use strict";

function pad4(n) {
  return (n + 4) & ~3; // strings end with a NUL and are padded to a multiple of 4 bytes
}

function encodeString(s) {
  const bytes = Buffer.from(s, "utf8");
  const out = Buffer.alloc(pad4(bytes.length));
  bytes.copy(out);
  return out;
}

function encode(address, types, args) {
  const parts = [encodeString(address), encodeString("," + types.join(""))];
  types.forEach((t, i) => {
    if (t === "s") {
      parts.push(encodeString(args[i]));
    } else {
      const b = Buffer.alloc(4);
      if (t === "i") b.writeInt32BE(args[i]);
      else b.writeFloatBE(args[i]);
      parts.push(b);
    }
  });
  return Buffer.concat(parts);
}

function readString(buf, offset) {
  const end = buf.indexOf(0, offset);
  return [buf.toString("utf8", offset, end), pad4(end - offset) + offset];
}

function decode(buf) {
  let [address, offset] = readString(buf, 0);
  let tags;
  [tags, offset] = readString(buf, offset);
  const args = [];
  for (const t of tags.slice(1)) {
    if (t === "s") {
      let s;
      [s, offset] = readString(buf, offset);
      args.push(s);
    } else if (t === "i") {
      args.push(buf.readInt32BE(offset));
      offset += 4;
    } else if (t === "f") {
      args.push(buf.readFloatBE(offset));
      offset += 4;
    } else {
      throw new Error(`unsupported OSC type ${t}`);
    }
  }
  return { address, types: [...tags.slice(1)], args };
}

module.exports = { encode, decode };

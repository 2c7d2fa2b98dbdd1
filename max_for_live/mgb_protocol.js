// The protocol table (bridge/protocol.py, built into the device as mgb_protocol_data.js) as the device uses it:
// look up an address and check a message's arguments against it before it is sent or handled. ES5, `exports.x`
// form, for Max's js.

function Protocol(table) {
  this.table = table;
  this.byKey = {};
  for (var i = 0; i < table.messages.length; i++) {
    var m = table.messages[i];
    this.byKey[m.direction + " " + m.address] = m;
  }
  this.settings = {};
  for (var j = 0; j < table.settings.length; j++) this.settings[table.settings[j].name] = table.settings[j];
}

// The table entry for an address; throws when the device uses an address the bridge does not know.
Protocol.prototype.message = function (address, direction) {
  var m = this.byKey[direction + " " + address];
  if (!m) throw new Error("protocol.json has no " + direction + " message " + address);
  return m;
};

// The OSC type of each argument in `args`, or a string saying what is wrong with them. The value of /set is
// checked against the settings table, as the bridge does.
Protocol.prototype.types = function (address, direction, args) {
  var m = this.message(address, direction);
  var expected = m.args.slice();
  var n = args.length;
  if (m.optional.length && n === expected.length + m.optional.length) {
    expected = expected.concat(m.optional);
  } else if (m.repeat.length && n > expected.length && (n - expected.length) % m.repeat.length === 0) {
    for (var r = 0; r < (n - m.args.length) / m.repeat.length; r++) expected = expected.concat(m.repeat);
  }
  if (expected.length !== n) return address + " expects " + m.signature + "; got " + n + " arguments";
  if (address === "/set" && direction === "in") {
    var setting = this.settings[args[0]];
    if (!setting) return "/set: unknown setting " + args[0];
    expected = [expected[0], setting];
  }
  var types = [];
  for (var i = 0; i < n; i++) {
    var problem = checkValue(expected[i], args[i]);
    if (problem) return address + ": " + expected[i].name + " " + problem;
    types.push(expected[i].type);
  }
  return types;
};

// What is wrong with `v` as a value of `arg`, or "" when nothing is.
function checkValue(arg, v) {
  if (arg.type === "s") {
    if (typeof v !== "string") return "must be a string";
    if (!v.length && !arg.allow_empty) return "must not be empty";
    return v.length > arg.max_len ? "is too long" : "";
  }
  if (arg.type === "any") return typeof v === "string" || (typeof v === "number" && isFinite(v)) ? "" : "is bad";
  if (typeof v !== "number" || !isFinite(v)) return "must be a finite number";
  if (arg.type === "i" && Math.floor(v) !== v) return "must be a whole number";
  if ((arg.min !== undefined && v < arg.min) || (arg.max !== undefined && v > arg.max)) {
    return "must be in " + (arg.min === undefined ? "" : arg.min) + ".." + (arg.max === undefined ? "" : arg.max);
  }
  return "";
}

exports.Protocol = Protocol;

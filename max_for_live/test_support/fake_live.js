// A stand-in for Live's API as seen through Max's LiveAPI object: a song, a selected clip, the device's track
// (directly, or inside a rack) with clip slots, and the application version. Only what mgb_bridge_core.js uses,
// but where real Live differs from a naive fake, this behaves like Live:
// - LiveAPI returns arrays made outside the script's scope (instanceof Array is false for them);
// - Live 12's song scale (root_note, scale_name, scale_mode) exists only when major >= 12;
// - observer callbacks arrive at display rate, interleaved with the patch's metro ticks (play());
// - a device in a rack has a Chain as canonical_parent, not the Track.
"use strict";

const vm = require("node:vm");

// Arrays from another realm, as LiveAPI's are from the script's point of view.
const foreignArray = vm.runInNewContext("(function (items) { var a = []; for (var i = 0; i < items.length; i++) a.push(items[i]); return a; })");

const TRACK_ID = 10;
const CHAIN_ID = 20;
const RACK_ID = 30;
const DEVICE_ID = 40;
const CLIP_ID = 7;
const DISPLAY_HZ = 60; // how often Live reports an observed property at most

class FakeLive {
  constructor({ major = 12, slots = 4, clipCreation = true, inRack = false } = {}) {
    this.song = { tempo: 120, signature_numerator: 4, signature_denominator: 4, is_playing: 0, current_song_time: 0 };
    if (major >= 12) Object.assign(this.song, { root_note: 0, scale_name: "Major", scale_mode: 0 });
    this.clip = null; // { is_midi_clip, length, notes: [...], looping, loop_start, loop_end, start_marker, end_marker }
    this.major = major;
    this.clipCreation = clipCreation; // false: create_audio_clip exists but does nothing (early Live 12)
    this.inRack = inRack;
    this.slots = [];
    for (let i = 0; i < slots; i++) this.slots.push({ id: 100 + i, has_clip: 0, file: null });
    this.observers = [];
    this.calls = []; // [path, function, ...args] for every call()
  }

  // The factory mgb_bridge_core.js takes as env.liveApi.
  factory() {
    return (path, callback) => new FakeApi(this, path, callback);
  }

  // Change a song property the way Live would, notifying observers.
  setSong(name, value) {
    if (!(name in this.song)) throw new Error(`fake Live ${this.major}: the song has no ${name}`);
    this.song[name] = value;
    for (const api of this.observers) if (api._property === name) api._callback(foreignArray([name, value]));
  }

  selectClip(clip) {
    this.clip = clip && { looping: 1, loop_start: 0, loop_end: clip.length, start_marker: 0, end_marker: clip.length, ...clip };
  }

  slot(id) {
    return this.slots.find((s) => s.id === id);
  }

  // Play from the current position for `beats` beats as Live and the patch do together: the song time moves on
  // in display frames (observer callbacks) and the metro ticks on every eighth note, in time order, the observer
  // first when both fall in the same frame. `loop: [start, end]` wraps the playhead like Live's loop brace.
  // `onTick(beat)` runs at each metro tick (the patch's `beat` message); `clock.ms` moves on with the music.
  play(beats, { loop = null, onTick, clock = null }) {
    const bpm = this.song.tempo;
    const frame = bpm / 60 / DISPLAY_HZ; // beats per display frame
    let pos = this.song.current_song_time;
    let travelled = 0;
    let nextTick = Math.floor(pos * 2 + 1e-9) / 2 + 0.5;
    const step = (d) => {
      pos += d;
      travelled += d;
      if (clock) clock.ms += (d * 60000) / bpm;
      if (loop && pos >= loop[1] - 1e-9) {
        const over = pos - loop[1];
        nextTick -= loop[1] - loop[0];
        pos = loop[0] + over;
      }
    };
    while (travelled < beats - 1e-9) {
      const toTick = nextTick - pos;
      if (toTick <= frame + 1e-9) {
        step(toTick);
        this.song.current_song_time = pos;
        onTick(pos);
        nextTick += 0.5;
      } else {
        step(frame);
        this.setSong("current_song_time", pos);
      }
    }
  }
}

class FakeApi {
  constructor(live, path, callback) {
    this.live = live;
    this.path = path;
    this._callback = callback;
    this._property = null;
    this.target = this.resolve(path);
  }

  // What a path names: { kind, id }.
  resolve(path) {
    const live = this.live;
    if (path === "live_set") return { kind: "Song", id: 1 };
    if (path === "live_app") return { kind: "Application", id: 2 };
    if (path === "live_set view detail_clip") return { kind: "Clip", id: live.clip ? CLIP_ID : 0 };
    if (path === "this_device canonical_parent") return this.resolve(`id ${live.inRack ? CHAIN_ID : TRACK_ID}`);
    if (path.startsWith("id ")) {
      const id = Number(path.slice(3));
      if (id === TRACK_ID) return { kind: "Track", id };
      if (id === CHAIN_ID && live.inRack) return { kind: "Chain", id };
      if (id === RACK_ID && live.inRack) return { kind: "RackDevice", id };
      if (live.slot(id)) return { kind: "ClipSlot", id };
    }
    throw new Error(`fake LiveAPI: no object at ${path}`);
  }

  get id() {
    return this.target.id;
  }

  get type() {
    return this.target.kind;
  }

  // Like LiveAPI: setting `property` starts observing and reports the current value at once.
  set property(name) {
    if (!(name in this.live.song)) throw new Error(`fake Live ${this.live.major}: no property ${name} to observe`);
    this._property = name;
    this.live.observers.push(this);
    if (this._callback) this._callback(foreignArray([name, this.live.song[name]]));
  }

  get property() {
    return this._property;
  }

  get(name) {
    const live = this.live;
    const { kind, id } = this.target;
    const wrap = (v) => foreignArray(Array.isArray(v) ? v : [v]);
    if (kind === "Song" && name in live.song) return wrap(live.song[name]);
    if (kind === "Clip" && live.clip && name in live.clip) return wrap(live.clip[name]);
    if (kind === "Track" && name === "clip_slots") return wrap(live.slots.flatMap((s) => ["id", s.id]));
    if (kind === "Chain" && name === "canonical_parent") return wrap(["id", RACK_ID]);
    if (kind === "RackDevice" && name === "canonical_parent") return wrap(["id", TRACK_ID]);
    if (kind === "ClipSlot" && name in live.slot(id)) return wrap(live.slot(id)[name]);
    throw new Error(`fake LiveAPI: no ${name} at ${this.path} (a ${kind})`);
  }

  call(fn, ...args) {
    const live = this.live;
    live.calls.push([this.path, fn, ...args]);
    if (this.target.kind === "Application" && fn === "get_major_version") return live.major;
    if (this.target.kind === "Clip" && fn === "get_notes_extended") {
      // Live returns a JSON string; note times are in beats from the clip's zero.
      const [, , from, span] = args;
      const notes = live.clip.notes.filter((n) => n.start_time >= from && n.start_time < from + span);
      return JSON.stringify({ notes });
    }
    if (this.target.kind === "ClipSlot" && fn === "create_audio_clip") {
      const slot = live.slot(this.target.id);
      if (live.major >= 12 && live.clipCreation) {
        slot.has_clip = 1;
        slot.file = args[0];
      }
      return undefined;
    }
    throw new Error(`fake LiveAPI: no function ${fn} at ${this.path}`);
  }
}

module.exports = { FakeLive, foreignArray };

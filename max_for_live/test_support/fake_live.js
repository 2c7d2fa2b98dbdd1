// A stand-in for Live's API as seen through Max's LiveAPI object: a song, a selected clip, the device's track
// with clip slots, and the application version. Only what bridge_core.js uses.
"use strict";

class FakeLive {
  constructor({ major = 12, slots = 4, clipCreation = true } = {}) {
    this.song = { tempo: 120, signature_numerator: 4, signature_denominator: 4, is_playing: 0, current_song_time: 0 };
    this.clip = null; // { is_midi_clip, length, notes: [...] }
    this.major = major;
    this.clipCreation = clipCreation; // false: create_audio_clip exists but does nothing (early Live 12)
    this.slots = [];
    for (let i = 0; i < slots; i++) this.slots.push({ id: 100 + i, has_clip: 0, file: null });
    this.observers = [];
    this.calls = []; // [path, function, ...args] for every call()
  }

  // The factory bridge_core.js takes as env.liveApi.
  factory() {
    return (path, callback) => new FakeApi(this, path, callback);
  }

  // Change a song property the way Live would, notifying observers.
  setSong(name, value) {
    this.song[name] = value;
    for (const api of this.observers) if (api._property === name) api._callback([name, value]);
  }

  selectClip(clip) {
    this.clip = clip;
  }

  slot(id) {
    return this.slots.find((s) => s.id === id);
  }
}

class FakeApi {
  constructor(live, path, callback) {
    this.live = live;
    this.path = path;
    this._callback = callback;
    this._property = null;
  }

  get id() {
    if (this.path === "live_set view detail_clip") return this.live.clip ? 7 : 0;
    return 1;
  }

  // Like LiveAPI: setting `property` starts observing and reports the current value at once.
  set property(name) {
    this._property = name;
    this.live.observers.push(this);
    if (this._callback) this._callback([name, this.live.song[name]]);
  }

  get property() {
    return this._property;
  }

  get(name) {
    const live = this.live;
    if (this.path === "live_set") return [live.song[name]];
    if (this.path === "live_set view detail_clip") return [live.clip[name]];
    if (this.path === "this_device canonical_parent" && name === "clip_slots") {
      return live.slots.flatMap((s) => ["id", s.id]);
    }
    const slot = this.path.startsWith("id ") && live.slot(Number(this.path.slice(3)));
    if (slot) return [slot[name]];
    throw new Error(`fake LiveAPI: no ${name} at ${this.path}`);
  }

  call(fn, ...args) {
    const live = this.live;
    live.calls.push([this.path, fn, ...args]);
    if (this.path === "live_app" && fn === "get_major_version") return live.major;
    if (fn === "get_notes_extended") {
      // Live returns a JSON string; note times are in beats.
      const notes = live.clip.notes.filter((n) => n.start_time >= args[2] && n.start_time < args[2] + args[3]);
      return JSON.stringify({ notes });
    }
    if (fn === "create_audio_clip") {
      const slot = live.slot(Number(this.path.slice(3)));
      if (live.major >= 12 && live.clipCreation) {
        slot.has_clip = 1;
        slot.file = args[0];
      }
      return undefined;
    }
    throw new Error(`fake LiveAPI: no function ${fn} at ${this.path}`);
  }
}

module.exports = { FakeLive };

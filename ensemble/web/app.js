// ensemble in a browser: join and play (keyboard, XY pad or gesture buttons), hear the
// answers (WebAudio, Web MIDI where there is one), watch everyone on a piano roll, steer.
// Plain script, no build step, no CDN: the server serves this file itself.
// The WebSocket speaks the OSC contract as JSON: {"address": "/ensemble/note", "args": [...]}.
"use strict";

const $ = (id) => document.getElementById(id);
const ROLL_SECONDS = 10;        // what the piano roll shows
const LATENCY_WINDOW = 60000;   // ms of round trips behind the median and p99
const S = {
  ws: null, welcome: null, me: null, joining: null, selected: null, octave: 0,
  performers: {},               // id -> the latest row from the server's watch table
  notes: [], open: {},          // piano roll: {performer, dir, pitch, start, end}; open notes by key
  counts: { in: 0, out: 0, mine: 0, answers: 0 },
  sent: [],                     // performance.now() of my note-ons waiting for their duet answer
  latencies: [],                // [when, ms]
  events: [],                   // page times of recent events (events/s)
  offset: null,                 // page clock - server clock (ms), smallest seen
  audio: null, voices: {}, midi: null, pointers: {}, errors: 0,
  rows: new Map(),              // performer id -> its <tr> in the performers table
};

// ------------------------------------------------------------------ the socket

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  S.ws = ws;
  $("conn").dataset.state = "connecting";
  ws.onopen = () => {
    $("conn").dataset.state = "open";
    send("/ensemble/watch", ...(S.selected ? [S.selected] : []));
    if (S.me) hello(S.me, $("mode").value || undefined);  // the server let us go when the socket closed
  };
  ws.onmessage = (e) => receive(JSON.parse(e.data));
  ws.onclose = () => {
    $("conn").dataset.state = "closed";
    setTimeout(connect, 1000);
  };
}

function send(address, ...args) {
  if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify({ address, args }));
}

function receive(m) {
  switch (m.address) {
    case "/ensemble/welcome": return welcome(m.args[0]);
    case "/ensemble/note": return answerNote(m.args);
    case "/ensemble/touch": return answerTouch(m.args);
    case "/ensemble/gesture": return flashGesture(m.args[1]);
    case "/ensemble/error": return showError(m.args[0], m.args[1]);
    case "/ensemble/status": return status(m.args[0]);
    case "/ensemble/watch": return watch(m);
    case "/ensemble/cells": return m.args[0] === S.selected ? drawCells(m.args[1]) : undefined;
  }
}

function welcome(w) {
  S.welcome = w;
  $("server").textContent = `${w.model} (${w.codec} codec)${w.admin ? " · admin" : ""}`;
  $("panic-all").hidden = !w.admin;
  for (const id of ["join-mode", "mode"]) {
    const sel = $(id);
    sel.innerHTML = "";
    for (const mode of w.modes) sel.add(new Option(mode, mode, false, mode === w.default_mode));
  }
}

// ------------------------------------------------------------------ joining

function hello(name, mode) {
  S.joining = name;
  send("/ensemble/hello", name, ...(mode ? [mode] : []));
  send("/ensemble/status", name);  // the answer says we are in (or an error says why not)
}

$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  startAudio();
  hello($("name").value.trim(), $("join-mode").value);
});

function status(st) {
  const mine = (st.performers || []).find((p) => p.id === S.joining);
  if (!mine) return;
  S.me = mine.id;
  S.joining = null;
  $("me").textContent = S.me;
  $("join").hidden = true;
  $("play").hidden = false;
  const kind = S.welcome ? S.welcome.kind : "note";
  $("keyboard").hidden = kind !== "note";
  $("octave-down").hidden = $("octave-up").hidden = kind !== "note";
  $("pad").hidden = kind !== "touch";
  $("gestures").hidden = kind !== "gesture";
  if (kind === "note") buildKeyboard();
  if (kind === "gesture") buildGestures();
  select(S.me);
  showSettings(mine);
}

// ------------------------------------------------------------------ sound: WebAudio and Web MIDI

function startAudio() {
  if (!S.audio && window.AudioContext) S.audio = new AudioContext();
  if (S.audio && S.audio.state === "suspended") S.audio.resume();
  if (navigator.requestMIDIAccess && !S.midiAsked) {
    S.midiAsked = true;
    navigator.requestMIDIAccess().then((access) => {
      S.midi = access;
      const sel = $("midi-out");
      for (const out of access.outputs.values()) sel.add(new Option(out.name, out.id));
      $("midi-label").hidden = sel.options.length < 2;
    }).catch(() => {});
  }
}

function sound(who, pitch, velocity) {
  const key = `${who}:${pitch}`;
  const now = S.audio ? S.audio.currentTime : 0;
  const old = S.voices[key];
  if (old) {  // a note-off, or the same pitch again: release what sounds
    old.gain.gain.cancelScheduledValues(now);
    old.gain.gain.setTargetAtTime(0, now, 0.05);
    old.osc.stop(now + 0.3);
    delete S.voices[key];
  }
  if (who === "machine") midiOut(pitch, velocity);
  if (!velocity || !S.audio || !$("sound").checked || Object.keys(S.voices).length > 24) return;
  const osc = S.audio.createOscillator(), gain = S.audio.createGain();
  osc.type = who === "machine" ? "sine" : "triangle";
  osc.frequency.value = 440 * Math.pow(2, (pitch - 69) / 12);
  const peak = 0.25 * (velocity / 127);
  gain.gain.setValueAtTime(0, now);
  gain.gain.linearRampToValueAtTime(peak, now + 0.01);
  gain.gain.setTargetAtTime(peak * 0.5, now + 0.01, 0.3);
  osc.connect(gain).connect(S.audio.destination);
  osc.start(now);
  S.voices[key] = { osc, gain };
}

function midiOut(pitch, velocity) {
  const id = $("midi-out").value;
  const out = id && S.midi ? S.midi.outputs.get(id) : null;
  if (out) out.send([velocity ? 0x90 : 0x80, pitch & 127, velocity & 127]);
}

// ------------------------------------------------------------------ playing: keyboard

const BLACK = new Set([1, 3, 6, 8, 10]);

function keyRange() {
  const w = S.welcome || { low_pitch: 36, high_pitch: 96 };
  const narrow = window.innerWidth < 700;
  let low = 60 + 12 * S.octave - (narrow ? 0 : 12);
  let high = low + (narrow ? 12 : 36) - 1;
  low = Math.max(low, w.low_pitch); high = Math.min(high, w.high_pitch);
  return [low, high];
}

function buildKeyboard() {
  const kb = $("keyboard");
  kb.innerHTML = "";
  const [low, high] = keyRange();
  const whites = [];
  for (let p = low; p <= high; p++) if (!BLACK.has(p % 12)) whites.push(p);
  const w = 100 / whites.length;
  let i = 0;
  for (let p = low; p <= high; p++) {
    const el = document.createElement("div");
    el.dataset.pitch = p;
    if (BLACK.has(p % 12)) {
      el.className = "key black";
      el.style.left = `${i * w - w * 0.3}%`;
      el.style.width = `${w * 0.6}%`;
    } else {
      el.className = "key white";
      el.style.left = `${i * w}%`;
      el.style.width = `${w}%`;
      if (p % 12 === 0) el.innerHTML = `<span>C${p / 12 - 1}</span>`;
      i++;
    }
    kb.appendChild(el);
  }
}

function velocityOf(e, el) {
  // pressure where the device measures it (pens, force touch); else how far down the key you hit
  if (e.pressure && e.pressure !== 0.5 && e.pointerType !== "mouse") return Math.round(20 + 107 * e.pressure);
  const r = el.getBoundingClientRect();
  const depth = Math.min(1, Math.max(0, (e.clientY - r.top) / r.height));
  return Math.max(1, Math.min(127, Math.round(30 + 97 * depth)));
}

function keyAt(e) {
  const el = document.elementFromPoint(e.clientX, e.clientY);
  return el && el.closest ? el.closest(".key") : null;
}

function noteOn(pitch, velocity) {
  S.sent.push(performance.now());
  if (S.sent.length > 64) S.sent.shift();
  send("/ensemble/note", S.me, pitch, velocity);
  sound("me", pitch, velocity);
}

function noteOff(pitch) {
  send("/ensemble/note", S.me, pitch, 0);
  sound("me", pitch, 0);
}

function press(e, el) {
  const pitch = +el.dataset.pitch;
  S.pointers[e.pointerId] = { pitch, el };
  el.classList.add("down");
  noteOn(pitch, velocityOf(e, el));
}

function release(id) {
  const held = S.pointers[id];
  if (!held) return;
  delete S.pointers[id];
  held.el.classList.remove("down");
  noteOff(held.pitch);
}

const kb = $("keyboard");
kb.addEventListener("pointerdown", (e) => {
  const el = keyAt(e);
  if (!el) return;
  e.preventDefault();
  startAudio();
  release(e.pointerId);
  press(e, el);
});
kb.addEventListener("pointermove", (e) => {  // a glissando: sliding onto another key plays it
  const held = S.pointers[e.pointerId];
  if (!held) return;
  const el = keyAt(e);
  if (el && el !== held.el) { release(e.pointerId); press(e, el); }
});
for (const type of ["pointerup", "pointercancel", "pointerleave"]) kb.addEventListener(type, (e) => release(e.pointerId));
kb.addEventListener("contextmenu", (e) => e.preventDefault());
$("octave-down").onclick = () => { S.octave = Math.max(-3, S.octave - 1); buildKeyboard(); };
$("octave-up").onclick = () => { S.octave = Math.min(3, S.octave + 1); buildKeyboard(); };

// ------------------------------------------------------------------ playing: XY pad and gestures

const pad = $("pad");
let padDown = false, padLast = 0;
function padSend(e, first) {
  const now = performance.now();
  if (!first && now - padLast < 33) return;  // a drag sends at most 30 touches a second
  padLast = now;
  const r = pad.getBoundingClientRect();
  const x = Math.min(1, Math.max(0, (e.clientX - r.left) / r.width));
  const y = Math.min(1, Math.max(0, 1 - (e.clientY - r.top) / r.height));
  send("/ensemble/touch", S.me, x, y);
  pad.dataset.sent = +(pad.dataset.sent || 0) + 1;
  drawDot(x, y, "#f0b429");
}
pad.addEventListener("pointerdown", (e) => {
  padDown = true;
  try { pad.setPointerCapture(e.pointerId); } catch (err) { /* a synthetic pointer has nothing to capture */ }
  startAudio();
  padSend(e, true);
});
pad.addEventListener("pointermove", (e) => { if (padDown) padSend(e); });
pad.addEventListener("pointerup", () => { padDown = false; });

function drawDot(x, y, color) {
  const g = pad.getContext("2d");
  g.fillStyle = "rgba(13,15,19,0.08)";
  g.fillRect(0, 0, pad.width, pad.height);
  g.fillStyle = color;
  g.beginPath();
  g.arc(x * pad.width, (1 - y) * pad.height, 8, 0, 2 * Math.PI);
  g.fill();
}

function answerTouch(args) {
  if (args[0] !== S.me) return;
  pad.dataset.answers = +(pad.dataset.answers || 0) + 1;
  drawDot(args[1], args[2], "#4aa3ff");
}

function buildGestures() {
  const box = $("gestures");
  box.innerHTML = "";
  for (let g = 0; g < 9; g++) {
    const b = document.createElement("button");
    b.textContent = g;
    b.onclick = () => send("/ensemble/gesture", S.me, g);
    box.appendChild(b);
  }
}

function flashGesture(g) {
  const b = $("gestures").children[g];
  if (b) { b.style.background = "#4aa3ff"; setTimeout(() => { b.style.background = ""; }, 200); }
}

// ------------------------------------------------------------------ answers to me

function answerNote(args) {
  const [performer, pitch, velocity] = args;
  if (performer !== S.me) return;
  if (velocity > 0) {
    S.counts.answers++;
    $("roll").dataset.answers = S.counts.answers;
    if (S.sent.length && S.performers[S.me] && S.performers[S.me].mode === "duet") {
      const t = S.sent.shift();
      const now = performance.now();
      S.latencies.push([now, now - t]);
    }
  }
  sound("machine", pitch, velocity);
  const key = document.querySelector(`.key[data-pitch="${pitch}"]`);
  if (key) key.classList.toggle("answer", velocity > 0);
}

function showLatency() {
  const now = performance.now();
  while (S.latencies.length && now - S.latencies[0][0] > LATENCY_WINDOW) S.latencies.shift();
  const el = $("latency");
  el.dataset.count = S.latencies.length;
  if (!S.latencies.length) { el.textContent = "– (duet mode)"; return; }
  const ms = S.latencies.map((x) => x[1]).sort((a, b) => a - b);
  const at = (q) => ms[Math.min(ms.length - 1, Math.floor(q * ms.length))];
  el.dataset.median = at(0.5).toFixed(2);
  el.textContent = `median ${at(0.5).toFixed(1)} ms · p99 ${at(0.99).toFixed(1)} ms (${ms.length} in the last minute)`;
}

// ------------------------------------------------------------------ watching

function watch(m) {
  const pageNow = performance.now();
  const offset = pageNow - m.now;
  if (S.offset === null || offset < S.offset) S.offset = offset;  // the least delayed batch is the truest
  for (const [t, dir, performer, kind, values] of m.events) {
    const at = t + S.offset;
    S.events.push(pageNow);
    if (kind !== "note") continue;
    const [pitch, velocity] = values;
    const key = `${dir}:${performer}:${pitch}`;
    const open = S.open[key];
    if (open) { open.end = at; delete S.open[key]; }
    if (velocity > 0) {
      const note = { performer, dir, pitch, velocity, start: at, end: null };
      S.notes.push(note);
      S.open[key] = note;
      S.counts[dir]++;
      if (dir === "in" && performer === S.me) S.counts.mine++;
    }
  }
  const roll = $("roll");
  roll.dataset.in = S.counts.in; roll.dataset.out = S.counts.out; roll.dataset.mine = S.counts.mine;
  if (m.dropped) $("dropped").textContent = `${m.dropped} events not shown (too many)`;
  if (m.performers) table(m.performers);
  if (typeof m.cpu === "number") $("cpu").textContent = m.cpu.toFixed(0);
}

const COLORS = {};
function color(id) {  // one colour per performer, computed once
  let c = COLORS[id];
  if (c === undefined) {
    let h = 0;
    for (const ch of id) h = (h * 31 + ch.charCodeAt(0)) % 360;
    c = COLORS[id] = `hsl(${h}, 70%, 60%)`;
  }
  return c;
}

// The roll scrolls: each frame shifts what is drawn left by whole pixels and repaints only
// the newest REPAINT_MS at the right (the notes still sounding or just arrived: events come
// in batches at most ~50 ms late), so a frame costs the same with 1 performer or 16 and
// the page's main thread stays free for the answers. A new size or range repaints it all.
const REPAINT_MS = 400;
const ROLL_FRAME_MS = 32;  // ~30 frames a second: smooth enough to watch, half the drawing of 60
const ROLL = { key: "", edge: 0, pxPerMs: 0, pruned: 0, painted: 0 };

function paintRoll(g, W, H, lo, span, from, to) {
  // clear and repaint the strip of times [from, to]; ROLL.edge (time) is the right edge
  const xOf = (t) => W - (ROLL.edge - t) * ROLL.pxPerMs;
  const x = Math.max(0, Math.floor(xOf(from))), row = H / span;
  g.clearRect(x, 0, W - x, H);
  g.save();
  g.beginPath(); g.rect(x, 0, W - x, H); g.clip();
  g.fillStyle = "#171a20";
  for (let p = lo; p < lo + span; p++) if (BLACK.has(p % 12)) g.fillRect(x, H - (p - lo + 1) * row, W - x, row);
  for (const n of S.notes) {
    if (n.end !== null && n.end < from) continue;
    // a long note's left edge stays outside the strip (its outline was drawn when it began)
    const x0 = xOf(Math.max(n.start, from - 4 / ROLL.pxPerMs)), x1 = xOf(n.end === null ? to : n.end);
    const y = H - (n.pitch - lo + 1) * row, w = Math.max(2, x1 - x0), h = Math.max(2, row - 1);
    g.fillStyle = color(n.performer);
    g.globalAlpha = n.dir === "in" ? 0.35 + 0.65 * (n.velocity / 127) : 0.25;
    g.fillRect(x0, y, w, h);
    if (n.dir === "out") {  // the machine's answers: outlined
      g.globalAlpha = 1; g.strokeStyle = g.fillStyle; g.lineWidth = 1.5;
      g.strokeRect(x0, y, w, h);
    }
  }
  g.restore();
}

function drawRoll() {
  requestAnimationFrame(drawRoll);
  const now = performance.now();
  if (now - ROLL.painted < ROLL_FRAME_MS - 4) return;
  ROLL.painted = now;
  const c = $("roll");
  if (c.width !== c.clientWidth * devicePixelRatio) { c.width = c.clientWidth * devicePixelRatio; c.height = c.clientHeight * devicePixelRatio; }
  const g = c.getContext("2d"), W = c.width, H = c.height;
  const w = S.welcome || { low_pitch: 36, high_pitch: 96 };
  const lo = w.low_pitch, span = w.high_pitch - w.low_pitch + 1;
  const key = `${W}x${H}:${lo}:${span}`;
  if (now - ROLL.pruned > 1000) {  // forget notes that have scrolled out of sight
    const from = now - ROLL_SECONDS * 1000;
    S.notes = S.notes.filter((n) => n.end === null || n.end > from);
    ROLL.pruned = now;
  }
  if (key !== ROLL.key || now - ROLL.edge > REPAINT_MS / 2) {  // first frame, new size or range, or a long pause (hidden tab): everything
    ROLL.key = key; ROLL.edge = now; ROLL.pxPerMs = W / (ROLL_SECONDS * 1000);
    paintRoll(g, W, H, lo, span, now - ROLL_SECONDS * 1000, now);
    return;
  }
  const dx = Math.floor((now - ROLL.edge) * ROLL.pxPerMs);  // whole pixels: no blur, no drift
  if (dx > 0) {
    ROLL.edge += dx / ROLL.pxPerMs;
    g.globalCompositeOperation = "copy";
    g.drawImage(c, -dx, 0);
    g.globalCompositeOperation = "source-over";
  }
  paintRoll(g, W, H, lo, span, ROLL.edge - REPAINT_MS, ROLL.edge);
}

function table(rows) {
  const now = performance.now();
  const body = $("performers").tBodies[0];
  const seen = {};
  for (const p of rows) {
    const before = S.performers[p.id];
    const total = p.events_in + p.events_out;
    p.rate = before && now > before.at ? (1000 * (total - before.total)) / (now - before.at) : 0;
    p.at = now; p.total = total;
    S.performers[p.id] = p;
    seen[p.id] = true;
  }
  for (const id of Object.keys(S.performers)) if (!seen[id]) delete S.performers[id];
  // update the rows in place (a cell's text only where it changed): rebuilding the table
  // twice a second re-laid the page out under a busy band
  for (const [id, tr] of S.rows) if (!seen[id]) { tr.remove(); S.rows.delete(id); }
  for (const p of Object.values(S.performers)) {
    let tr = S.rows.get(p.id);
    if (!tr) {
      tr = body.insertRow();
      tr.dataset.performer = p.id;
      for (let i = 0; i < 9; i++) tr.insertCell().appendChild(document.createTextNode(""));
      const s = document.createElement("span"); s.className = "swatch"; s.style.background = color(p.id);
      tr.cells[0].insertBefore(s, tr.cells[0].firstChild);
      tr.onclick = () => select(p.id);
      S.rows.set(p.id, tr);
    }
    if (tr.dataset.mode !== p.mode) tr.dataset.mode = p.mode;
    const cls = p.id === S.selected ? "selected" : "";
    if (tr.className !== cls) tr.className = cls;
    const cells = [p.id, p.transport, p.mode + (p.silenced_by_panic ? " (panic)" : ""), p.temperature.toFixed(2),
      p.top_p.toFixed(2), p.threshold.toFixed(1), p.events_in, p.events_out, p.rate.toFixed(1)];
    cells.forEach((v, i) => {
      const text = tr.cells[i].lastChild, value = String(v);
      if (text.data !== value) text.data = value;
    });
  }
  if (S.selected && S.performers[S.selected] && !(document.activeElement && document.activeElement.closest("#steer"))) showSettings(S.performers[S.selected]);
}

function showRate() {
  const now = performance.now();
  while (S.events.length && now - S.events[0] > 5000) S.events.shift();
  $("rate").textContent = (S.events.length / 5).toFixed(1);
}

function drawCells(cells) {
  const c = $("cells"), g = c.getContext("2d");
  g.globalCompositeOperation = "copy";  // scroll left (replacing, not blending); the newest column on the right
  g.drawImage(c, -2, 0);
  g.globalCompositeOperation = "source-over";
  if (!cells) return;
  const h = c.height / cells.length;
  cells.forEach((v, i) => {
    const a = Math.tanh(v);
    g.fillStyle = a >= 0 ? `rgba(240,100,60,${a})` : `rgba(70,150,255,${-a})`;
    g.clearRect(c.width - 2, i * h, 2, h);
    g.fillRect(c.width - 2, i * h, 2, h);
  });
}

// ------------------------------------------------------------------ steering

function select(id) {
  S.selected = id;
  for (const [rid, tr] of S.rows) tr.className = rid === id ? "selected" : "";
  $("selected").textContent = id;
  $("cells-label").textContent = `LSTM cells of ${id} (top layer)`;
  send("/ensemble/watch", id);
  if (S.performers[id]) showSettings(S.performers[id]);
}

// the style steering of notes models (ensemble/server/style.py), as /ensemble/set takes it
const STYLE = ["low", "high", "scale", "tonal", "vel_low", "vel_high", "density", "rest", "overlap", "follow"];

function showSettings(p) {
  $("mode").value = p.mode;
  for (const name of ["temperature", "top_p", "threshold"]) {
    $(name).value = p[name];
    $(name).nextElementSibling.textContent = (+p[name]).toFixed(2);
  }
  $("style-row").hidden = !p.style;
  if (!p.style) return;
  for (const name of STYLE) {
    const el = $(name);
    if (el.type === "checkbox") el.checked = !!p.style[name];
    else el.value = p.style[name];
    if (el.type === "range") el.nextElementSibling.textContent = (+p.style[name]).toFixed(2);
  }
}

$("mode").onchange = () => {
  if (!S.selected) return;
  S.sent = [];
  send("/ensemble/mode", S.selected, $("mode").value);
  if (S.performers[S.selected]) S.performers[S.selected].mode = $("mode").value;
};
for (const name of ["temperature", "top_p", "threshold"]) {
  $(name).oninput = () => { $(name).nextElementSibling.textContent = (+$(name).value).toFixed(2); };
  $(name).onchange = () => { if (S.selected) send("/ensemble/set", S.selected, name, +$(name).value); };
}
for (const name of STYLE) {
  const el = $(name);
  if (el.type === "range") el.oninput = () => { el.nextElementSibling.textContent = (+el.value).toFixed(2); };
  el.onchange = () => {
    if (!S.selected) return;
    const value = el.type === "checkbox" ? (el.checked ? 1 : 0) : name === "scale" ? el.value : +el.value;
    send("/ensemble/set", S.selected, name, value);  // a value the server refuses comes back as an error
  };
}
$("reset").onclick = () => { if (S.selected) send("/ensemble/reset", S.selected); };
$("panic").onclick = () => { if (S.selected) send("/ensemble/panic", S.selected); silenceAll(); };
$("panic-all").onclick = () => { send("/ensemble/panic"); silenceAll(); };

function silenceAll() {
  for (const key of Object.keys(S.voices)) { const [who, pitch] = key.split(":"); sound(who, +pitch, 0); }
  document.querySelectorAll(".key.answer").forEach((k) => k.classList.remove("answer"));
}

function showError(address, reason) {
  S.errors++;
  const list = $("errors");
  list.dataset.count = S.errors;
  const li = document.createElement("li");
  li.textContent = `${address}: ${reason}`;
  list.prepend(li);
  while (list.children.length > 5) list.lastChild.remove();
  if (address === "/ensemble/hello") S.joining = null;
}

setInterval(() => { showLatency(); showRate(); }, 500);
requestAnimationFrame(drawRoll);
connect();

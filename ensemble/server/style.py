"""Following a performer's style live: tempo, pulse, dynamics, and steering masks.

The shipped `notes` model was trained on folk tunes played at 120 quarter notes a minute,
all at velocity 80, and its 12 time bins are ~1.75x wide. Fed raw seconds and decoded to
each bin's log-centre, it answers off the player's tempo (an eighth at 120 bpm comes
back 30 % long), off their pulse, and always at mf. This module fixes that on the live
path, without retraining and without changing the codec (so every model keeps loading):

- **Tempo, in and out.** A per-performer tracker keeps the median of the player's recent
  inter-onset intervals (IOIs) and turns it into a scale, player seconds per model
  second, so that their median IOI becomes the training data's commonest one (an
  eighth at 120 qpm; read as a dotted or triplet value when that fits their IOIs
  better). Gaps go into the model as ``dt / scale``, snapped to the nearest plain note
  value when within 12 % (so human jitter does not push an eighth across the bin edge
  at 0.2457 s), and come out as ``model value x scale``: the model is tempo-invariant.
- **A bin decodes to a note value, not its log-centre.** A sampled time bin decodes to
  the player's commonest recent (model-time) gap that fell in that bin, else to the
  plainest note value in the bin (an eighth before a dotted eighth), else the
  codec's centre. 2:1 figures stay 2:1, and sums of note values stay on the grid.
- **Pulse.** The player's pulse is their median IOI, phased at the circular mean of
  their recent onsets. After a silence (respond) the machine's first note goes on the
  next beat of it; every machine onset is put on that grid (on the pulse after a long
  gap, on half a pulse after a short one), so one off-grid value moves one note only.
- **Dynamics.** Velocities come from the player: the running mean of their velocities at
  the same sixteenth of the beat (so their accents come back), else of all their recent
  ones. The model has never heard dynamics, so its velocity bin is not used.
- **Steering** (`/ensemble/set`, or the `[style]` table of the server config): pitch
  range, scale (a named scale or ``auto``: the pitch classes of the player's last 32
  notes), velocity range, density (notes per second at most, or ``rest``: the chance
  that a note is left out) and overlap. Pitch,
  scale and overlap become ONE boolean mask over the packed vocabulary, built when a
  setting (or the auto scale's pitch-class set) changes and passed to the sampler as
  it is: nothing is added per event. Velocity range and density are exact too, applied
  where the event is placed. ``tonal`` is a soft pull towards the player's key
  (`Style.steer`), the one option that costs per draw (~13 us), so it is off by default.

``follow = 0`` turns tempo, pulse and dynamics following off: the server then behaves
exactly as before this module (the baseline of ``ensemble eval style --baseline``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# The commonest inter-onset interval of the training data (eighths at 120 qpm; measured
# on the folk corpus, 0.25 s is the median IOI of most tunes): a player's median IOI is
# mapped onto it.
REFERENCE_IOI = 0.25
# plain note values in model seconds (a beat = a quarter = 0.5 s), plainest first: a bin
# with no gap of the player's own decodes to the first of these that lies in it
NOTE_VALUES = (0.25, 0.5, 0.125, 1.0, 2.0, 0.375, 0.75, 1.5, 3.0, 4.0, 1 / 6, 1 / 3, 0.0625, 0.1875, 2 / 3)
# how a player's median IOI may be read (as an eighth first), and the values it is judged by
READINGS = np.array([1.0, 1.5, 0.75, 4 / 3, 2 / 3])
LOG_PLAIN = np.log([0.0625, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0])
READING_MARGIN = 0.05
ARTICULATION = 0.07    # model seconds: a shorter gap between an off and an on is articulation
SNAP = 1.12            # a gap within 12 % of a note value is that note value
SIXTEENTH = 0.125      # model seconds
SLOTS = 4              # sixteenths per beat: where in the beat an onset falls
IOI_WINDOW = 16        # onsets the tempo follows
GAP_WINDOW = 64        # gaps the bins' values follow
READ_EVERY = 16        # onsets between readings of a steady median (a reading costs ~20 us)
SETTLE = 4             # IOIs heard before onsets are counted in the beat
VELOCITY_DECAY = 0.25  # weight of the newest velocity in the running means
MIN_IOI, MAX_IOI = 0.04, 2.5  # seconds: shorter is a spread chord, longer a pause

NOTE_NAMES = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11), "ionian": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10), "aeolian": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10), "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11), "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "locrian": (0, 1, 3, 5, 6, 8, 10),
    "harmonic": (0, 2, 3, 5, 7, 8, 11), "melodic": (0, 2, 3, 5, 7, 9, 11),
    "pentatonic": (0, 2, 4, 7, 9), "minor-pentatonic": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10), "chromatic": tuple(range(12)),
}
KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
# the 24 key profiles (0..11 major tonics, 12..23 minor), rows; their log weights
_PROFILES = np.array([np.roll(KK_MAJOR, k) for k in range(12)] + [np.roll(KK_MINOR, k) for k in range(12)])
_PROFILES_Z = (_PROFILES - _PROFILES.mean(axis=1, keepdims=True)) / _PROFILES.std(axis=1, keepdims=True)
LOG_KK = np.log(_PROFILES / _PROFILES.sum(axis=1, keepdims=True))


def kk_key(pc_counts) -> int | None:
    """Krumhansl-Kessler key of a pitch-class histogram: 0..11 major tonic, 12..23 minor;
    None when it says nothing (fewer than 4 notes, or flat)."""
    if sum(pc_counts) < 4:
        return None
    h = np.asarray(pc_counts, dtype=np.float64)
    h -= h.mean()
    if not h.any():
        return None
    return int(np.argmax(_PROFILES_Z @ h))  # Pearson r up to a positive factor per histogram


AUTO_WINDOW = 32       # notes the auto scale follows
AUTO_MIN_CLASSES = 5   # before the player has used this many pitch classes, auto allows all


def parse_scale(text: str) -> tuple[int, ...] | None:
    """'D dorian', 'F# minor', 'Bb', 'auto', 'off' -> allowed pitch classes (None: no constraint,
    'auto' is the caller's). ValueError with what is accepted otherwise."""
    words = text.strip().lower().replace("_", " ").split()
    if not words or words in (["off"], ["none"], ["chromatic"]):
        return None
    if len(words) > 2 or words[0][:1] not in NOTE_NAMES:
        raise ValueError(f"scale must be 'TONIC MODE' (e.g. 'D dorian'), 'auto' or 'off', got {text!r}")
    tonic = NOTE_NAMES[words[0][0]]
    for accidental in words[0][1:]:
        if accidental in "#s":
            tonic += 1
        elif accidental == "b":
            tonic -= 1
        else:
            raise ValueError(f"unknown tonic {words[0]!r} in scale {text!r}")
    mode = words[1] if len(words) == 2 else "major"
    if mode not in SCALES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(SCALES)}")
    return tuple(sorted((tonic + step) % 12 for step in SCALES[mode]))


def _number(low, high, integer=False):
    def parse(value):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"expected a number, got {value!r}")
        if integer and not float(value).is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"{value!r} is out of range {low}..{high}")
        return int(value) if integer else float(value)
    return parse


def _scale(value):
    if not isinstance(value, str):
        raise ValueError(f"scale takes a string such as 'D dorian', 'auto' or 'off', got {value!r}")
    value = " ".join(value.split())
    if value.lower() != "auto":
        parse_scale(value)
    return value


# name -> parser (raises ValueError); the defaults are StyleSettings'
SETTINGS = {
    "low": _number(0, 127, integer=True),        # lowest pitch the machine may play
    "high": _number(0, 127, integer=True),       # highest
    "scale": _scale,                             # 'D dorian', 'auto', 'off'
    "vel_low": _number(1, 127, integer=True),    # softest velocity it may play
    "vel_high": _number(1, 127, integer=True),   # loudest
    "density": _number(0, 1000),                 # notes per second at most (0: no limit)
    "rest": _number(0, 1),                       # chance that a note the machine would play is a rest
    "overlap": _number(0, 1, integer=True),      # 0: one note at a time
    "follow": _number(0, 1, integer=True),       # 0: no tempo/pulse/dynamics following
    "tonal": _number(0, 8),                      # pull towards the player's key (0: off)
}


@dataclass
class StyleSettings:
    low: int = 0
    high: int = 127
    scale: str = "off"
    vel_low: int = 1
    vel_high: int = 127
    density: float = 0.0
    rest: float = 0.0
    overlap: int = 1
    follow: int = 1
    tonal: float = 0.0

    def update(self, name: str, value) -> None:
        """Set one setting, checked; ValueError (nothing changed) says why."""
        parse = SETTINGS.get(name)
        if parse is None:
            raise ValueError(f"unknown style setting {name!r}; known: {', '.join(SETTINGS)}")
        try:
            value = parse(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        low, high = (value, self.high) if name == "low" else (self.low, value) if name == "high" else (self.low, self.high)
        if low > high:
            raise ValueError(f"{name}: pitch range {low}..{high} is empty")
        vl = value if name == "vel_low" else self.vel_low
        vh = value if name == "vel_high" else self.vel_high
        if vl > vh:
            raise ValueError(f"{name}: velocity range {vl}..{vh} is empty")
        setattr(self, name, value)

    @classmethod
    def from_dict(cls, values: dict | None) -> "StyleSettings":
        s = cls()
        for name, value in (values or {}).items():
            s.update(name, value)
        return s

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in SETTINGS}


class Placed(NamedTuple):
    """A machine event placed in time: when (loop seconds), and the event as sent (it
    reads like `ensemble.server.events.OutEvent`)."""

    when: float
    kind: str
    dt: float
    values: tuple  # (pitch, velocity)


def bin_note_values(times) -> list[float]:
    """Each time bin's default model-time value: the plainest note value inside it."""
    edges = [0.0] + list(times.edges) + [math.inf]
    out = []
    for b in range(times.count):
        lo, hi = edges[b], edges[b + 1]
        if b == 0:
            out.append(times.values[0])
            continue
        inside = [v for v in NOTE_VALUES if lo <= v < hi]
        out.append(inside[0] if inside else times.values[b])
    return out


class StyleTables:
    """What every performer of one codec shares: token -> (bin, pitch, velocity bin), and
    the static masks. Built once per conductor."""

    def __init__(self, codec):
        self.codec = codec
        n_time, n_pitch, n_vel = codec.packing.radices
        tokens = np.arange(codec.vocab_size)
        self.time_bin = tokens // (n_pitch * n_vel)
        self.pitch = codec.low_pitch + (tokens // n_vel) % n_pitch
        self.vel_bin = tokens % n_vel
        self.is_on = self.vel_bin > 0
        self.note_off = ~self.is_on
        self.defaults = bin_note_values(codec.times)
        self.edges = list(codec.times.edges)
        self.max_dt = codec.max_dt
        self.last_bin = codec.times.count - 1
        self.shape = (n_time, n_pitch, n_vel)
        self.on_float = self.is_on.astype(np.float32)
        self.pitch_class = self.pitch % 12
        # (vocab, 12): 1 where a note-on token has that pitch class; e @ on_class sums by class
        self.on_class = ((self.pitch[:, None] % 12 == np.arange(12)[None, :]) & self.is_on[:, None]).astype(np.float32)
        self.bin_of = self.time_bin.tolist()  # plain ints for the per-event path (no numpy scalars)


class Style:
    """One performer's style follower and steering. Plain Python per event, no allocation
    beyond small tuples; the mask is rebuilt only when what it depends on changes."""

    def __init__(self, tables: StyleTables, settings: dict | StyleSettings | None = None, base_mask=None):
        self.t = tables
        self.codec = tables.codec
        self.settings = settings if isinstance(settings, StyleSettings) else StyleSettings.from_dict(settings)
        self.base_mask = base_mask          # the codec's own forbidden tokens (or None)
        self.duet_base = tables.note_off if base_mask is None else (base_mask | tables.note_off)
        self.reset()
        self._rebuild()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget what was heard (the settings stay)."""
        self.iois: deque = deque(maxlen=IOI_WINDOW)
        self.scale = 1.0
        self._median = 0.0
        self._reading = 1.0
        self._since_reading = 0
        self.last_onset: float | None = None  # loop time of the player's last note-on
        self.slot = 0                         # its sixteenth within the beat
        self.level = [None] * SLOTS           # running mean velocity per slot
        self.overall: float | None = None
        # per bin: how often each of the player's recent gaps (model time) fell in it
        self.gap_counts: list[dict] = [{} for _ in range(self.t.shape[0])]
        self.gap_window: deque = deque()
        self.gaps: list[float | None] = [None] * self.t.shape[0]  # per bin: the commonest of those
        self.pcs: deque = deque(maxlen=AUTO_WINDOW)
        self.pc_count = [0] * 12
        self.auto_classes: tuple | None = None
        self._bias_dirty = True
        self._bias = None
        self.resumed = False                  # the machine has placed an event since the player last played
        self._last_on = False                 # the player's last event was a note-on
        self.machine_onset: float | None = None
        self._planned_at: float | None = None  # the machine's last event: when it was meant to be
        self._placed_at: float | None = None   # and when it was placed (later if the loop was late)
        self.onsets: deque = deque(maxlen=IOI_WINDOW + 1)  # the player's recent onset times
        self.anchor: float | None = None      # a point of their pulse grid, set when the machine starts
        self.anchor_slot = 0

    def state(self, now: float) -> dict:
        """What was heard, JSON-able (loop times as seconds before `now`), for snapshots."""
        ago = lambda t: None if t is None else now - t  # noqa: E731
        return {"iois": list(self.iois), "median": self._median, "reading": self._reading,
                "last_onset_ago": ago(self.last_onset), "slot": self.slot, "level": list(self.level),
                "overall": self.overall, "gaps": [list(g) for g in self.gap_window], "pcs": list(self.pcs),
                "machine_onset_ago": ago(self.machine_onset), "onsets_ago": [now - t for t in self.onsets]}

    def load_state(self, state: dict, now: float) -> None:
        """Back to what `state` says was heard (ValueError/KeyError/TypeError if it is malformed)."""
        self.reset()
        back = lambda ago: None if ago is None else now - float(ago)  # noqa: E731
        for ioi in state["iois"][-IOI_WINDOW:]:
            self.iois.append(float(ioi))
        self._median, self._reading = float(state["median"]), float(state["reading"])
        if self.iois:
            self.scale = self._median / REFERENCE_IOI / self._reading if self._median else 1.0
        self.last_onset, self.machine_onset = back(state["last_onset_ago"]), back(state["machine_onset_ago"])
        self.slot = int(state["slot"]) % SLOTS
        for ago in state["onsets_ago"][-(IOI_WINDOW + 1):]:
            self.onsets.append(now - float(ago))
        self.level = [None if v is None else float(v) for v in state["level"]][:SLOTS]
        self.level += [None] * (SLOTS - len(self.level))
        self.overall = None if state["overall"] is None else float(state["overall"])
        for b, v in state["gaps"][-GAP_WINDOW:]:
            if not 0 < int(b) < self.t.last_bin:
                raise ValueError(f"time bin {b} out of range")
            self._gap(int(b), float(v))
        for pc in state["pcs"][-AUTO_WINDOW:]:
            self.pcs.append(int(pc) % 12)
            self.pc_count[int(pc) % 12] += 1
        if self.settings.scale.lower() == "auto":
            classes = tuple(i for i in range(12) if self.pc_count[i])
            self.auto_classes = classes if len(classes) >= AUTO_MIN_CLASSES else None
        self._rebuild()

    # ------------------------------------------------------------------ settings and masks

    def set(self, name: str, value) -> None:
        """Change one setting and rebuild the masks; ValueError (nothing changed) says why."""
        old = getattr(self.settings, name, None)
        self.settings.update(name, value)
        try:
            self._rebuild()
        except ValueError:
            setattr(self.settings, name, old)
            self._rebuild()
            raise

    def _classes(self) -> tuple | None:
        s = self.settings.scale
        if s.lower() == "auto":
            return self.auto_classes
        return parse_scale(s)

    def _rebuild(self) -> None:
        """The note-on tokens this performer's machine may play, as one mask (True = forbidden)."""
        t, s = self.t, self.settings
        pitch_ok = (t.pitch >= s.low) & (t.pitch <= s.high)
        classes = self._classes()
        if classes is not None:
            in_scale = np.isin(t.pitch % 12, classes)
            if np.any(pitch_ok & in_scale):
                pitch_ok &= in_scale
        forbid = t.is_on & ~pitch_ok
        if not s.overlap:
            forbid |= t.is_on & (t.time_bin == 0)  # no chords: nothing struck "together"
        if self.base_mask is not None:
            forbid |= self.base_mask
        if not np.any(pitch_ok & t.is_on):
            raise ValueError(f"no pitch the model plays ({self.codec.low_pitch}..{self.codec.high_pitch}) "
                             f"lies in {s.low}..{s.high}")
        self.mask = forbid if forbid.any() else None
        duet = forbid | t.note_off
        if np.all(duet):
            duet = self.duet_base
        self.duet_mask = duet

    # ------------------------------------------------------------------ the player plays

    def hear(self, now: float, dt: float, pitch: int, velocity: int) -> int:
        """The player's event -> the model's token (tempo-normalised, snapped); tracks them."""
        self.resumed = False
        codec = self.codec
        if not self.settings.follow:
            return codec.encode_event(dt, pitch, velocity)
        model_dt = dt if dt >= self.t.max_dt else self._snap(dt / self.scale)
        on = velocity > 0
        if 0.0 < model_dt < ARTICULATION and on != self._last_on:
            # a note-on just after a note-off (or an off just after an on): the player's
            # articulation, not a rest. The corpus is legato (the off and the next on
            # together), so it goes in as "together"; the note's own length, snapped to a
            # note value, keeps the time right.
            model_dt = 0.0
        self._last_on = on
        token = codec.encode_event(model_dt, pitch, velocity)
        b = self.t.bin_of[token]
        if 0 < b < self.t.last_bin and len(self.iois) >= SETTLE:
            # (only once their tempo is known: before that, model time is not yet theirs)
            self._gap(b, model_dt)
        if velocity > 0:
            self._onset(now, pitch, velocity)
        return token

    def _gap(self, b: int, value: float) -> None:
        """Count a gap in its bin; the bin then decodes to its commonest recent gap."""
        counts = self.gap_counts[b]
        counts[value] = counts.get(value, 0) + 1
        self.gap_window.append((b, value))
        if len(self.gap_window) > GAP_WINDOW:
            ob, ov = self.gap_window.popleft()
            oc = self.gap_counts[ob]
            oc[ov] -= 1
            if not oc[ov]:
                del oc[ov]
            self.gaps[ob] = max(oc, key=oc.get) if oc else None
        self.gaps[b] = max(counts, key=counts.get)

    def _onset(self, now: float, pitch: int, velocity: int) -> None:
        if self.last_onset is not None:
            ioi = now - self.last_onset
            if ioi > MIN_IOI:  # (closer onsets are a chord: the same slot)
                # counted in the player's sixteenths once their tempo is known
                settled = len(self.iois) >= SETTLE
                self.slot = (self.slot + round(ioi / (SIXTEENTH * self.scale))) % SLOTS if settled else 0
                if ioi < MAX_IOI:
                    self.iois.append(ioi)
                    self.scale = self._tempo_scale()
        self.last_onset = now
        self.onsets.append(now)
        if len(self.iois) >= SETTLE:  # where in the beat is known only once the tempo is
            old = self.level[self.slot]
            self.level[self.slot] = velocity if old is None else old + VELOCITY_DECAY * (velocity - old)
        self.overall = velocity if self.overall is None else self.overall + VELOCITY_DECAY * (velocity - self.overall)
        # the auto scale: pitch classes of the last AUTO_WINDOW notes
        pc = pitch % 12
        if len(self.pcs) == self.pcs.maxlen:
            self.pc_count[self.pcs[0]] -= 1
        self.pcs.append(pc)
        self.pc_count[pc] += 1
        self._bias_dirty = True
        if self.settings.scale.lower() == "auto":
            classes = tuple(i for i in range(12) if self.pc_count[i])
            classes = classes if len(classes) >= AUTO_MIN_CLASSES else None
            if classes != self.auto_classes:
                self.auto_classes = classes
                self._rebuild()

    def steer(self, logits: np.ndarray) -> np.ndarray:
        """The logits to sample from: the model's own, or with the ``tonal`` pull.

        ``tonal`` x a log pitch-class weight is added to every note-on token: half the
        Krumhansl-Kessler profile of the key their recent notes are in, half their own
        recent pitch-class frequencies (add-one smoothed). A scale mask keeps the notes
        in the scale but not the tonal centre (measured: the answer's key then agrees
        with the prime's a third of the time; the tune's own next notes, half); the pull
        keeps the centre. The note-on logits are then shifted so that note-ons keep the
        total probability the model gave them: only which note changes, never whether
        a note starts or ends (a plain bias measurably slowed the answers down). Costs
        ~10 us a draw, only with ``tonal`` > 0; the weights are rebuilt only after the
        player played.
        """
        tonal = self.settings.tonal
        if not tonal:
            return logits
        t = self.t
        if self._bias_dirty or self._bias is None:
            counts = np.asarray(self.pc_count, dtype=np.float64) + 1.0
            weights = 0.5 * np.log(counts / counts.sum())
            key = kk_key(self.pc_count)
            if key is not None:
                weights += 0.5 * LOG_KK[key]
            else:
                weights *= 2.0
            weights = tonal * (weights - weights.max())
            self._weight = np.exp(weights)                        # per pitch class
            self._bias = weights.astype(np.float32)[t.pitch_class]
            self._bias *= t.on_float  # 0 on note-offs
            self._bias_dirty = False
        # the model's note-on mass per pitch class, then the shift that keeps it in total
        e = np.exp(logits - logits.max())
        per_class = e @ t.on_class  # (12,): note-on mass of each pitch class
        shift = math.log(float(per_class @ self._weight) / float(per_class.sum()))
        return logits + (self._bias - np.float32(shift) * t.on_float)

    def _tempo_scale(self) -> float:
        """Player seconds per model second.

        Their median IOI over the model's commonest one, unless reading the median as a
        dotted or a triplet value (x 2/3, 3/4, 4/3, 3/2) puts their recent IOIs much closer
        to plain note values: a hornpipe's 3:1 pairs make the median a dotted eighth, and
        heard as an eighth the sixteenths would become 1/12 notes the model never saw.
        Not folded to a metrical level near the training tempo: measured, a player at 60
        bpm in eighths heard as quarters at 120 is answered in the model's commonest
        value (eighths) at twice their tempo; heard as eighths, at theirs."""
        iois = sorted(self.iois)
        n = len(iois)
        median = iois[n // 2] if n % 2 else 0.5 * (iois[n // 2 - 1] + iois[n // 2])
        self._since_reading += 1
        # a steady median keeps its reading: the (numpy) reading runs when it moves
        if abs(median - self._median) > 0.02 * median or self._since_reading >= READ_EVERY:
            self._median, self._since_reading = median, 0
            x = np.asarray(iois)
            scales = (median / REFERENCE_IOI) / READINGS
            model = np.log(x[None, :, None] / scales[:, None, None]) - LOG_PLAIN[None, None, :]
            error = np.abs(model).min(axis=2).mean(axis=1)
            error[0] -= READING_MARGIN  # the median as an eighth, unless clearly worse
            self._reading = float(READINGS[int(np.argmin(error))])
        return median / REFERENCE_IOI / self._reading

    @staticmethod
    def _snap(model_dt: float) -> float:
        if model_dt <= 0.0:
            return model_dt
        best, best_ratio = model_dt, SNAP
        for v in NOTE_VALUES:
            r = model_dt / v if model_dt > v else v / model_dt
            if r < best_ratio:
                best, best_ratio = v, r
        return best

    # ------------------------------------------------------------------ the machine plays

    def velocity(self, when: float, model_velocity: int) -> int:
        """The velocity to play: the player's level at this place in the beat, within range."""
        s = self.settings
        v = model_velocity
        if s.follow and self.overall is not None:
            v = self.overall
            if self.last_onset is not None:
                slot = (self.slot + round((when - self.last_onset) / (SIXTEENTH * self.scale))) % SLOTS
                if self.level[slot] is not None:
                    v = self.level[slot]
        return int(min(max(round(v), s.vel_low), s.vel_high))

    def model_dt(self, token: int) -> float:
        """A token's time bin -> model seconds: the player's own gap in that bin, else a note value."""
        b = self.t.bin_of[token]
        gap = self.gaps[b]
        return gap if gap is not None else self.t.defaults[b]

    def place(self, token: int, stream_time: float | None, now: float) -> Placed:
        """Where and how the machine plays `token`, the next event after `stream_time`."""
        e = self.codec.decode_token(token)
        start = now if stream_time is None else stream_time
        s = self.settings
        if not s.follow:
            when = max(now, start + e.dt)
            velocity = e.velocity if e.velocity == 0 else int(min(max(e.velocity, s.vel_low), s.vel_high))
            return self._density(Placed(when, "note", e.dt, (e.pitch, velocity)), now)
        if stream_time is not None and stream_time == self._placed_at:
            # our own chain: count from where the last event was meant to be, so the loop's
            # delay in playing it (a step, a send: ~1 ms) does not pile up note after note
            start = self._planned_at
        dt = self.model_dt(token) * self.scale
        when = start + dt
        if not self.resumed and self.last_onset is not None:
            self._refine_pulse(REFERENCE_IOI * self.scale)
            self._anchor(REFERENCE_IOI * self.scale)
        pulse = REFERENCE_IOI * self.scale  # the player's commonest IOI
        anchor = self.anchor
        if when < now and not self.resumed and anchor is not None:
            # after a silence: on the player's pulse, on a beat when the pulse is an eighth
            j = math.ceil((now - anchor) / pulse)
            if self.anchor_slot % 2 == 0 and (self.anchor_slot // 2 + j) % 2:
                j += 1
            when = anchor + j * pulse
        if e.velocity > 0 and anchor is not None:
            # every onset on the player's grid: a note after a gap of a pulse or more on
            # the pulse, a shorter one on half a pulse; so an off-grid value (a triplet
            # bin, a lone sixteenth) moves one note, not the phase of the whole answer
            previous = self.last_onset if self.machine_onset is None else max(self.machine_onset, self.last_onset)
            grid = pulse if when - previous >= 0.75 * pulse else 0.5 * pulse
            when = anchor + math.floor((when - anchor) / grid + 0.5) * grid
            if when < now - 0.25 * grid:  # long past (not just the loop's own delay): next grid point
                when += grid * math.ceil((now - when) / grid - 1e-9)
        self.resumed = True
        velocity = 0 if e.velocity == 0 else self.velocity(when, e.velocity)
        planned = self._density(Placed(when, "note", when - start, (e.pitch, velocity)), now).when
        when = max(planned, now)
        self._planned_at, self._placed_at = planned, when
        return Placed(when, "note", when - (now if stream_time is None else stream_time), (e.pitch, velocity))

    def _refine_pulse(self, pulse: float) -> None:
        """Their tempo to a fraction of a per cent, before the machine plays on it.

        The median IOI is one interval as it arrived, a millisecond or so of network and
        loop jitter in it: 0.2 % off at 120 bpm, which over a 48-note answer drifts the
        machine 30 ms off the player's pulse (measured live with `eval style --live`).
        Their recent onsets that sit on a half-pulse grid point (within an eighth of a
        step; a triplet does not), at least six, fitted with a line (least squares: grid
        index -> time) give the grid's period from all of them at once; when it moves the
        period by under 3 %, the scale follows it."""
        step, ref = 0.5 * pulse, self.onsets[-1] if self.onsets else 0.0
        on_grid = []  # (grid index, time) of the onsets near a grid point (a triplet is not)
        for t in self.onsets:
            k = round((t - ref) / step)
            if abs(t - ref - k * step) < 0.125 * step:
                on_grid.append((k, t))
        if len(on_grid) < 6:
            return
        count = len(on_grid)
        mean_n = sum(k for k, _ in on_grid) / count
        mean_t = sum(t for _, t in on_grid) / count
        var = sum((k - mean_n) ** 2 for k, _ in on_grid)
        if var == 0:
            return
        fitted = sum((k - mean_n) * (t - mean_t) for k, t in on_grid) / var
        if abs(fitted / step - 1.0) < 0.03:
            self.scale *= fitted / step

    def _anchor(self, pulse: float) -> None:
        """The player's pulse grid: its phase is the circular mean of their recent onsets
        modulo the pulse (their last onset alone may be off the pulse, e.g. an eighth in
        a tune that walks in quarters), anchored next to their last onset."""
        c = s = 0.0
        for t in self.onsets:
            a = (2 * math.pi / pulse) * t
            c += math.cos(a)
            s += math.sin(a)
        last = self.last_onset
        phase = math.atan2(s, c) * pulse / (2 * math.pi) if (c or s) else last
        self.anchor = phase + round((last - phase) / pulse) * pulse
        self.anchor_slot = (self.slot + round((self.anchor - last) / (SIXTEENTH * self.scale))) % SLOTS

    def _density(self, placed: Placed, now: float) -> Placed:
        if placed.values[1] == 0:
            return placed
        d = self.settings.density
        when = placed.when
        if d > 0 and self.machine_onset is not None:
            when = max(when, self.machine_onset + 1.0 / d)
        self.machine_onset = when
        if when != placed.when:
            placed = Placed(when, placed.kind, placed.dt + when - placed.when, placed.values)
        return placed

    def rests(self, rng) -> bool:
        """Leave out the note the machine is about to play (a rest of its length)? With
        probability ``rest``: the model still hears it (its phrase goes on), only the
        sound is left out, so the answer thins out without losing its place in the bar."""
        r = self.settings.rest
        return r > 0.0 and rng.random() < r

    def answer(self, token: int, now: float) -> tuple[int, int]:
        """Duet: the note to answer with now (pitch, velocity)."""
        e = self.codec.decode_token(token)
        return e.pitch, self.velocity(now, e.velocity) if e.velocity else 0

    def describe(self) -> dict:
        return {**self.settings.as_dict(), "tempo_scale": round(self.scale, 4),
                "auto_classes": list(self.auto_classes) if self.auto_classes else None}

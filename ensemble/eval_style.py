"""`ensemble eval style`: does the live answer continue the player's style?

Each held-out piece is played by a simulated performer in several keys (transposed by
-5..+6 semitones), at several tempos (bpm, the piece's quarter note) and loudness levels
(pp, mf, f, with +16 accents on the beat), exactly as the server would hear it: event by
event through the performer's `ensemble.server.style.Style`, into the model's state.
Then the machine answers as in ``respond`` mode: after ``--threshold`` seconds of
silence it plays ``--length`` events, each placed by the same `Style.place` the server
uses and fed back. No wall-clock time passes; the loop times are simulated.

Figures (medians over pieces and keys unless said otherwise):

- key agreement: the Krumhansl-Kessler key (24 keys, pitch-class counts of note-ons) of
  the answer equals the prime's;
- tempo ratio: the answer's median inter-onset interval (IOI) over the prime's, per tempo;
- phase error: each answer onset's distance to the player's pulse (the prime's median
  IOI, phased at the circular mean of the prime's onsets), per tempo, in ms;
- pitch range: the fraction of answer notes inside the prime's lowest..highest pitch;
- rhythm: the intersection of the IOI histograms (IOI / pulse on a half-octave log grid);
- velocity: |answer median - player median|, the answer's median at each loudness, and
  the accent (mean on-beat minus off-beat velocity) of player and answer.

``--baseline`` turns following off (the server before issue 11); ``--set scale=auto``
and the other style settings steer as `/ensemble/set` would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import defaultdict

import numpy as np

from ensemble.errors import UserError

LEVELS = (("pp", 40), ("mf", 72), ("f", 104))
ACCENT = 16


def kk_key(pitches) -> int | None:
    """Krumhansl-Kessler key of some pitches (counts of each pitch class): 0..11 major
    tonics, 12..23 minor; None if too few or flat."""
    if len(pitches) < 4:
        return None
    from ensemble.server.style import kk_key as key_of_histogram

    return key_of_histogram(np.bincount(np.asarray(pitches) % 12, minlength=12))


def key_classes(key: int) -> set[int]:
    """The diatonic pitch classes of a KK key (major, or natural minor)."""
    steps = (0, 2, 4, 5, 7, 9, 11) if key < 12 else (0, 2, 3, 5, 7, 8, 10)
    return {(key % 12 + s) % 12 for s in steps}


def _onset_iois(times) -> np.ndarray:
    t = np.sort(np.asarray(times, dtype=float))
    d = np.diff(t)
    return d[d > 0.015]  # chords are one onset


def _pulse(times) -> tuple[float, float]:
    """The player's pulse (median IOI) and its phase (circular mean of onsets modulo it)."""
    pulse = float(np.median(_onset_iois(times)))
    angles = 2 * np.pi * (np.asarray(times) % pulse) / pulse
    phase = (math.atan2(np.sin(angles).mean(), np.cos(angles).mean()) % (2 * np.pi)) / (2 * np.pi) * pulse
    return pulse, phase


def _rhythm_hist(iois, pulse) -> np.ndarray:
    k = np.clip(np.round(2 * np.log2(np.asarray(iois) / pulse)), -6, 6).astype(int) + 6
    h = np.bincount(k, minlength=13).astype(float)
    return h / max(h.sum(), 1)


def _accent(onsets, beat) -> float:
    """Mean velocity on the beat minus off it (nan when either side is empty)."""
    on, off = [], []
    for t, v in onsets:
        x = t / beat
        (on if abs(x - round(x)) < 0.1 else off).append(v)
    return float(np.mean(on) - np.mean(off)) if on and off else math.nan


def player(notes, semitones: int, bpm: float, level: int, count: int, gate: float = 1.0):
    """The first `count` notes of a piece as a performer plays them: (time, pitch, velocity) events."""
    from ensemble.codecs.midi_notes import Note
    from ensemble.codecs.notes import from_notes

    f = 120.0 / bpm
    chosen = sorted(notes, key=lambda n: (n.start, n.pitch))[:count]
    t0 = chosen[0].start
    played = []
    for n in chosen:
        beats = (n.start - t0) / 0.5
        velocity = min(127, level + (ACCENT if abs(beats - round(beats)) < 1e-6 else 0))
        start = (n.start - t0) * f
        played.append(Note(start, start + (n.end - n.start) * f * gate, min(max(n.pitch + semitones, 0), 127), velocity))
    events, now = [], 0.0
    for e in from_notes(played):
        now += e.dt
        events.append((now, e.pitch, e.velocity))
    return events


def run_piece(ckpt, tables, notes, variants, settings, args, rng):
    """One piece in every (semitones, bpm, level) variant, batched; returns one dict per variant."""
    from ensemble.continuation import respond
    from ensemble.sampling import SamplingSettings
    from ensemble.server.style import Style

    styles = [Style(tables, dict(settings)) for _ in variants]
    plays = [player(notes, k, bpm, level, args.prime_notes, args.gate) for k, bpm, level in variants]
    sampling = SamplingSettings(args.temperature, args.top_k, args.top_p)
    answers = [[e for e in placed if e[2] > 0]
               for placed in respond(ckpt.model, styles, plays, args.length, sampling, rng, args.threshold)]
    return [judge(variant, events, answer, notes, args.prime_notes)
            for variant, events, answer in zip(variants, plays, answers)]


def judge(variant, events, answer, notes, prime_notes: int) -> dict:
    """The figures of one answer (time, pitch, velocity of its note-ons) to one variant
    (semitones, bpm, level) of a piece whose first `prime_notes` notes were played as
    `events`; times of events and answer on one clock."""
    k, bpm, level = variant
    ons = [(t, p, v) for t, p, v in events if v > 0]
    times = [t for t, _, _ in ons]
    pulse, phase = _pulse(times)
    r = {"semitones": k, "bpm": bpm, "level": level, "answer_notes": len(answer)}
    prime_key = kk_key([p for _, p, _ in ons])
    answer_key = kk_key([p for _, p, _ in answer])
    r["prime_key"], r["answer_key"] = prime_key, answer_key
    r["key_agree"] = None if prime_key is None or answer_key is None else float(prime_key == answer_key)
    r["signature_agree"] = None if r["key_agree"] is None else float(key_classes(prime_key) == key_classes(answer_key))
    if prime_key is not None and answer:
        scale = key_classes(prime_key)
        r["in_scale"] = float(np.mean([p % 12 in scale for _, p, _ in answer]))
    # the ceiling: the tune's own next notes, judged the same way
    later = sorted(notes, key=lambda n: (n.start, n.pitch))[prime_notes:prime_notes + len(answer)]
    own_key = kk_key([n.pitch + k for n in later]) if len(later) >= 24 else None
    r["key_agree_tune"] = None if prime_key is None or own_key is None else float(prime_key == own_key)
    r["signature_agree_tune"] = None if r["key_agree_tune"] is None else float(key_classes(prime_key) == key_classes(own_key))
    a_times = [t for t, _, _ in answer]
    a_iois = _onset_iois(a_times)
    p_iois = _onset_iois(times)
    r["tempo_ratio"] = float(np.median(a_iois) / np.median(p_iois)) if len(a_iois) else None
    if answer:
        d = (np.asarray(a_times) - phase) % pulse
        r["phase_ms"] = float(np.median(np.minimum(d, pulse - d)) * 1000)
        lo, hi = min(p for _, p, _ in ons), max(p for _, p, _ in ons)
        r["in_range"] = float(np.mean([lo <= p <= hi for _, p, _ in answer]))
        r["velocity_diff"] = abs(float(np.median([v for *_, v in answer]) - np.median([v for *_, v in ons])))
        r["answer_velocity"] = float(np.median([v for *_, v in answer]))
        beat = 0.5 * 120.0 / bpm
        r["accent_player"] = _accent([(t, v) for t, _, v in ons], beat)
        r["accent_answer"] = _accent([(t, v) for t, _, v in answer], beat)
    if len(a_iois):
        r["rhythm"] = float(np.minimum(_rhythm_hist(a_iois, pulse), _rhythm_hist(p_iois, pulse)).sum())
    return r


class _Answers(asyncio.DatagramProtocol):
    """The server's replies, each with its arrival time on this loop."""

    def __init__(self, loop):
        self.loop = loop
        self.notes: dict[str, list] = defaultdict(list)  # performer -> [(time, pitch, velocity)]
        self.errors: list = []
        self.changed = asyncio.Event()

    def datagram_received(self, data, addr):
        from ensemble.io.datagram import BadDatagram, parse

        now = self.loop.time()
        try:
            messages = parse(data)
        except BadDatagram:
            return
        for address, args in messages:
            if address == "/ensemble/note" and len(args) == 4:
                self.notes[args[0]].append((now, int(args[1]), int(args[2])))
                self.changed.set()
            elif address == "/ensemble/error":
                self.errors.append(args)


async def live_piece(port: int, notes, variants, settings: dict, args, tag: str) -> list[dict]:
    """One piece in every variant at once, each variant a performer of a real server
    (respond mode), played over OSC at real speed; the answers judged as offline."""
    from ensemble.io.osc import build

    loop = asyncio.get_running_loop()
    transport, answers = await loop.create_datagram_endpoint(lambda: _Answers(loop), local_addr=("127.0.0.1", 0))
    me = transport.get_extra_info("sockname")[1]
    server = ("127.0.0.1", port)
    send = lambda address, *a: transport.sendto(build(address, list(a)), server)  # noqa: E731
    plays = [player(notes, k, bpm, level, args.prime_notes, args.gate) for k, bpm, level in variants]
    ids = [f"{tag}-{i}" for i in range(len(variants))]
    for pid in ids:
        send("/ensemble/hello", pid, "127.0.0.1", me)
        send("/ensemble/mode", pid, "respond")
        send("/ensemble/set", pid, "threshold", float(args.threshold))
        for name, value in settings.items():
            send("/ensemble/set", pid, name, value if isinstance(value, str) else float(value))
    start = loop.time() + 0.5

    def play_together(pid, batch):  # in order: asyncio runs timers due at one time in any order
        for pitch, velocity in batch:
            send("/ensemble/note", pid, pitch, velocity)

    for pid, events in zip(ids, plays):
        at: dict[float, list] = {}
        for t, pitch, velocity in events:  # a legato line: the off, then the next on, at one time
            at.setdefault(t, []).append((pitch, velocity))
        for t, batch in at.items():
            loop.call_at(start + t, play_together, pid, batch)
    ends = {pid: start + events[-1][0] for pid, events in zip(ids, plays)}
    # an answer of `length` events at the player's pace takes about length/2 of their IOIs;
    # one that dawdles (long notes, rests) is judged on what came by three times that
    pace = {pid: float(np.median(np.diff([t for t, _, v in events if v > 0]))) for pid, events in zip(ids, plays)}
    deadlines = {pid: ends[pid] + args.threshold + 1.0 + 1.5 * args.length * pace[pid] for pid in ids}

    def heard(pid):
        return [e for e in answers.notes[pid] if e[0] > ends[pid]]

    def waiting():
        now = loop.time()
        return [pid for pid in ids if len(heard(pid)) < args.length and now < deadlines[pid]]

    try:
        while waiting():
            answers.changed.clear()
            try:
                await asyncio.wait_for(answers.changed.wait(),
                                       timeout=max(0.05, min(deadlines[p] for p in waiting()) - loop.time()))
            except asyncio.TimeoutError:
                pass
    finally:
        for pid in ids:
            send("/ensemble/goodbye", pid)
        transport.close()
    if answers.errors:
        raise UserError(f"the server refused: {answers.errors[0]}")
    out = []
    for variant, pid, events in zip(variants, ids, plays):
        answer = [(t - start, p, v) for t, p, v in heard(pid)[: args.length] if v > 0]
        out.append(judge(variant, events, answer, notes, args.prime_notes))
    return out


def run_live(args, pieces, keys, tempos, settings) -> list[dict]:
    """`--live`: a real `ensemble serve` process, every variant of a piece a performer."""
    from ensemble.serverproc import start_server, stop_server

    proc, port = start_server(["--port", "0", "--model", str(args.model), "--no-record", "--no-snapshot",
                               "--seed", str(args.seed), "--temperature", str(args.temperature),
                               "--top-p", str(args.top_p)])
    rows = []
    try:
        for n, (source, notes) in enumerate(pieces):
            variants = [(k, bpm, LEVELS[(i + j) % len(LEVELS)][1])
                        for i, k in enumerate(keys) for j, bpm in enumerate(tempos)]
            got = asyncio.run(live_piece(port, notes, variants, settings, args, f"p{n}"))
            for r in got:
                r["source"] = source
            rows += got
            print(f"  {n + 1}/{len(pieces)} pieces played", file=sys.stderr)
    finally:
        stop_server(proc)
    return rows


def held_out_sources(folder) -> set[str]:
    from ensemble.data import MANIFEST
    from ensemble.files import read_json
    from pathlib import Path

    manifest = read_json(Path(folder) / MANIFEST, UserError, f"{folder}: not a prepared corpus (no {MANIFEST})")
    return {p["source"] for p in manifest.get("pieces", []) if p.get("split") == "val"}


def load_pieces(inputs, held_out, count, min_notes, seed, codec):
    """Played notes of up to `count` pieces of `inputs` (only the validation split of the
    prepared corpus `held_out`, if given), chosen at random with `seed`."""
    from ensemble import corpora

    report = corpora.Report()
    sources = corpora.expand_inputs(inputs, report)
    keep = held_out_sources(held_out) if held_out else None
    items = [it for it in corpora.read_items(sources, codec, report)
             if keep is None or it.source in keep]
    order = np.random.default_rng(seed).permutation(len(items))
    pieces = []
    for i in order:
        item = items[i]
        try:
            notes = corpora.abc_notes(item.data) if item.kind == "abc" else list(item.data)
        except corpora.Skip:
            continue
        if len({round(n.start, 4) for n in notes}) >= min_notes:
            pieces.append((item.source, notes))
        if len(pieces) >= count:
            break
    if not pieces:
        why = "; ".join(f"{name}: {reason}" for name, reason in report.skipped[:3])
        raise UserError(f"no piece with {min_notes} notes or more in {', '.join(inputs)}" + (f" ({why})" if why else ""))
    return pieces


def summarize(rows) -> dict:
    def med(key, subset=rows):
        vals = [r[key] for r in subset if r.get(key) is not None and not math.isnan(r[key])]
        return float(np.median(vals)) if vals else None

    def mean(key, subset=rows):
        vals = [r[key] for r in subset if r.get(key) is not None and not math.isnan(r[key])]
        return float(np.mean(vals)) if vals else None

    by_bpm, by_level = defaultdict(list), defaultdict(list)
    for r in rows:
        by_bpm[r["bpm"]].append(r)
        by_level[r["level"]].append(r)
    return {
        "variants": len(rows),
        "key_agreement": mean("key_agree"),
        "key_agreement_tune": mean("key_agree_tune"),
        "in_scale": mean("in_scale"),
        "signature_agreement": mean("signature_agree"),
        "signature_agreement_tune": mean("signature_agree_tune"),
        "tempo_ratio": {str(b): med("tempo_ratio", rs) for b, rs in sorted(by_bpm.items())},
        "phase_ms": {str(b): med("phase_ms", rs) for b, rs in sorted(by_bpm.items())},
        "in_range": mean("in_range"),
        "rhythm": mean("rhythm"),
        "velocity_diff": med("velocity_diff"),
        "answer_velocity": {name: med("answer_velocity", by_level[v]) for name, v in LEVELS if by_level[v]},
        "accent_player": mean("accent_player"),
        "accent_answer": mean("accent_answer"),
    }


def report_lines(s: dict) -> list[str]:
    f = lambda x, spec=".2f": "-" if x is None else format(x, spec)  # noqa: E731
    pct = lambda x: "-" if x is None else format(100 * x, ".1f")  # noqa: E731
    lines = [f"variants: {s['variants']}",
             f"key agreement (KK, 24 keys): {f(100 * s['key_agreement'] if s['key_agreement'] is not None else None, '.1f')} %",
             f"  the tune's own next notes (ceiling): {f(100 * s['key_agreement_tune'] if s['key_agreement_tune'] is not None else None, '.1f')} %",
             f"  same key signature (relative major/minor count as one): {pct(s['signature_agreement'])} %"
             f" (the tune's own next notes: {pct(s['signature_agreement_tune'])} %)",
             f"  answer notes in the prime key's scale: {f(100 * s['in_scale'] if s['in_scale'] is not None else None, '.1f')} %",
             "tempo ratio (answer/player median IOI): " + ", ".join(f"{b} bpm {f(v)}" for b, v in s["tempo_ratio"].items()),
             "phase error (median, ms): " + ", ".join(f"{b} bpm {f(v, '.0f')}" for b, v in s["phase_ms"].items()),
             f"pitch range (answer notes inside the prime's range): {f(s['in_range'])}",
             f"rhythm histogram intersection: {f(s['rhythm'])}",
             f"velocity: |answer - player| median {f(s['velocity_diff'], '.0f')}; answer median at "
             + ", ".join(f"{k} {f(v, '.0f')}" for k, v in s["answer_velocity"].items())
             + f"; accent player {f(s['accent_player'], '.1f')} answer {f(s['accent_answer'], '.1f')}"]
    return lines


def run(args) -> int:
    from ensemble import checkpoint
    from ensemble.server.style import SETTINGS, StyleSettings

    import torch

    if args.length < 1 or args.pieces < 1 or args.prime_notes < 4 or not 0 < args.gate <= 1:
        raise UserError("--length and --pieces must be >= 1, --prime-notes >= 4, --gate in (0, 1]")
    ckpt = checkpoint.load(args.model)
    from ensemble.server.events import NotServable, adapter_for

    try:
        live = adapter_for(ckpt.codec)
    except NotServable:
        live = None
    if not hasattr(live, "style_tables"):
        raise UserError(f"eval style needs a model the server plays notes with, {args.model} has the "
                        f"{ckpt.codec.name} codec")
    torch.set_num_threads(1)
    settings = {"follow": 0} if args.baseline else {}
    for item in args.set or []:
        name, _, value = item.partition("=")
        if name not in SETTINGS:
            raise UserError(f"--set {item}: unknown style setting; known: {', '.join(SETTINGS)}")
        settings[name] = value
    try:
        StyleSettings.from_dict(settings)
    except ValueError as exc:
        raise UserError(f"--set: {exc}") from None
    try:
        tempos = [float(t) for t in args.tempos.split(",")]
    except ValueError:
        raise UserError(f"--tempos takes bpm values like 60,120,200, got {args.tempos!r}") from None
    keys = list(range(-5, 7))[: args.keys] if args.keys <= 12 else list(range(-5, 7))
    tables = live.style_tables()
    pieces = load_pieces(args.input, args.held_out, args.pieces, args.prime_notes, args.seed, ckpt.codec)
    rng = np.random.default_rng(args.seed)
    rows, started = [], time.monotonic()
    if args.live:
        if args.top_k:
            raise UserError("--live plays through the server, which takes --top-k from /ensemble/set only; leave it 0")
        rows = run_live(args, pieces, keys, tempos, settings)
    for n, (source, notes) in enumerate(pieces if not args.live else []):
        variants = [(k, bpm, LEVELS[(i + j) % len(LEVELS)][1])
                    for i, k in enumerate(keys) for j, bpm in enumerate(tempos)]
        try:
            got = run_piece(ckpt, tables, notes, variants, settings, args, rng)
        except ValueError as exc:
            raise UserError(f"{source}: {exc}") from None
        for r in got:
            r["source"] = source
        rows += got
    summary = summarize(rows)
    summary.update({"pieces": len(pieces), "keys": len(keys), "tempos": tempos, "settings": settings,
                    "length": args.length, "prime_notes": args.prime_notes, "seconds": round(time.monotonic() - started, 1)})
    print(f"eval style{' --live' if args.live else ''}: {args.model}, {len(pieces)} pieces x {len(keys)} keys x {len(tempos)} tempos, "
          f"prime {args.prime_notes} notes, answer {args.length} events, settings {settings or 'default'}")
    for line in report_lines(summary):
        print("  " + line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="measure a model (style: does the live answer follow the player?)")
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    s = sub.add_parser(
        "style", help="key, tempo, pulse, range, rhythm and dynamics of live answers to held-out pieces",
        description=__doc__.split("\n\n")[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--model", required=True, help="a notes model folder")
    s.add_argument("--input", nargs="+", required=True, help="pieces: files, folders, music21:folk ...")
    s.add_argument("--held-out", metavar="CORPUS", help="only pieces in the validation split of this prepared corpus")
    s.add_argument("--pieces", type=int, default=100, help="pieces, drawn at random with --seed")
    s.add_argument("--keys", type=int, default=12, help="transpositions (-5..+6 semitones, the first N)")
    s.add_argument("--tempos", default="60,75,120,200", help="bpm (120 is the pieces' own tempo)")
    s.add_argument("--prime-notes", type=int, default=32, help="notes the player plays before the answer")
    s.add_argument("--length", type=int, default=96, help="events (note-ons and note-offs) the machine answers with")
    s.add_argument("--gate", type=float, default=1.0,
                   help="how long the player holds each note, as a fraction of its written length (0.9: detached)")
    s.add_argument("--threshold", type=float, default=1.5, help="respond: seconds of silence before the answer")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--baseline", action="store_true", help="no following: the server before style following")
    s.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a style setting, as /ensemble/set takes it (scale=auto, low=48, density=6 ...)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", metavar="FILE", help="write every variant's figures and the summary here")
    s.add_argument("--live", action="store_true",
                   help="play through a real `ensemble serve` over OSC at real speed (every variant of a piece a "
                        "performer in respond mode, about a minute a piece) instead of simulated time")
    s.set_defaults(func=run)
    from ensemble.eval_loss import add_parser as add_loss

    add_loss(sub)

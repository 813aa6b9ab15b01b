"""Real material -> token pieces for any codec, every bad file named with the reason.

Inputs are files, folders (searched recursively) or ``music21:NAME`` for the corpus that
ships with music21 (an optional extra: ``pip install 'ensemble[corpora]'``):

- ``music21:folk``: every ABC folk tune (essenFolksong, oneills1850, ryansMammoth,
  nottingham-dataset, airdsAirs, miscFolk: about 12,900 tunes); ``music21:oneills1850``,
  ``music21:essen``, ``music21:ryans``, ``music21:nottingham``, ``music21:airds``,
  ``music21:misc`` for one collection; ``music21:chorales`` for the 371 Bach chorales
  (four parts, as notes); ``music21:PATH`` for any file or folder in that corpus.
- ``.abc``: ABC files, one piece per tune (split at ``X:`` lines, as text, not parsed);
- ``.mid`` / ``.midi``: one piece per file (all tracks and channels merged);
- ``.csv`` touch logs with the header ``time,performer,x,y`` (one piece per performer
  per file), or gesture logs ``time,performer,gesture`` (one piece per file);
- ``.mxl`` / ``.musicxml`` / ``.xml`` / ``.krn`` scores (read with music21, as notes);
- any other file named on the command line (in folders: ``.txt``) is text.

A reader yields `Item`s (an ABC tune's text, a text, played notes, touches, gesture
states); `convert` turns an item into pieces for one codec: the abc codec reads ABC
tunes; text reads texts and ABC tunes as text; notes and performance read notes, MIDI
files, scores and ABC tunes (played by `AbcCodec.to_notes` at ``qpm`` quarter notes
per minute, repeats as written); touch reads touch logs; gestures reads gesture logs.
A file or tune that cannot be used is skipped and reported as ``(source, reason)``;
the rest is prepared. Symbols the ABC codec cannot hold are dropped and counted.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import multiprocessing
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ensemble.codecs.abc import AbcCodec, split_tunes
from ensemble.data import DataError, Piece, text_pieces

# music21 corpus folders with ABC folk tunes, by the names `music21:NAME` accepts
MUSIC21_FOLK = {
    "essen": "essenFolksong",
    "oneills": "oneills1850",
    "ryans": "ryansMammoth",
    "nottingham": "nottingham-dataset",
    "airds": "airdsAirs",
    "misc": "miscFolk",
}
MUSIC21_FOLK.update({folder: folder for folder in list(MUSIC21_FOLK.values())})
MUSIC21_FOLK.update({"essenfolksong": "essenFolksong", "ryansmammoth": "ryansMammoth", "airdsairs": "airdsAirs",
                     "miscfolk": "miscFolk"})

SUFFIX_KINDS = {
    ".abc": "abc",
    ".mid": "midi", ".midi": "midi", ".smf": "midi",
    ".csv": "csv",
    ".mxl": "score", ".musicxml": "score", ".xml": "score", ".krn": "score",
    ".txt": "text",
    ".jsonl": "session",
}
DEFAULT_QPM = 120.0
ABC_VELOCITY = 80


class Skip(Exception):
    """This file or tune cannot be used; the message says why, in one line."""


@dataclass
class Source:
    """One file to read: how the report names it, where it is, what kind it is."""

    label: str
    path: Path
    kind: str  # abc | midi | csv | score | text | session


@dataclass
class Item:
    """One thing read from a source, before a codec sees it."""

    source: str
    kind: str  # abc (one tune's text) | text | notes (list[Note]) | touch (list[TouchEvent]) | gestures
    data: Any


@dataclass
class Options:
    transpose: str | None = None  # ABC tunes: move to this tonic ('C', 'relative-C') before notes
    qpm: float = DEFAULT_QPM  # quarter notes per minute for ABC tunes and scores
    strict: bool = False  # ABC: a symbol the vocabulary lacks skips the tune instead of being dropped
    piece_chars: int = 2000  # text: cut texts into pieces of about this many characters


@dataclass
class Report:
    """What happened: skipped (source, reason) pairs, dropped symbols by kind, counts."""

    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    files: int = 0
    ignored: int = 0  # files in folders whose extension no reader knows

    def merge(self, other: "Report") -> None:
        self.skipped += other.skipped
        self.dropped.update(other.dropped)
        self.files += other.files
        self.ignored += other.ignored


# ---------------------------------------------------------------------- inputs

def music21_corpus_dir() -> Path:
    """The corpus folder of the installed music21, found without importing music21."""
    spec = importlib.util.find_spec("music21")
    if spec is None or spec.origin is None:
        raise DataError("music21: inputs need music21, an optional extra: pip install 'ensemble[corpora]'")
    return Path(spec.origin).parent / "corpus"


def _import_music21():
    try:
        import music21
    except ImportError:
        raise DataError("this input needs music21, an optional extra: pip install 'ensemble[corpora]'") from None
    return music21


def _files_in(folder: Path, report: Report) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in SUFFIX_KINDS:
                out.append(Path(root) / name)
            else:
                report.ignored += 1
    return out


def _kind(path: Path) -> str:
    return SUFFIX_KINDS.get(path.suffix.lower(), "text")


def expand_inputs(inputs: Iterable[str], report: Report) -> list[Source]:
    """Input names -> the files to read, in a fixed order; missing paths are reported."""
    sources: list[Source] = []
    for name in inputs:
        name = str(name)
        if name.startswith("music21:"):
            sources += _music21_sources(name[len("music21:"):], report)
            continue
        path = Path(name)
        if path.is_dir():
            found = _files_in(path, report)
            if not found:
                report.skipped.append((name, "folder holds no .abc, .mid, .midi, .csv, .txt, .jsonl or score files"))
            sources += [Source(str(p), p, _kind(p)) for p in found]
        elif path.is_file():
            sources.append(Source(name, path, _kind(path)))
        else:
            report.skipped.append((name, "no such file or folder"))
    return sources


def _music21_sources(name: str, report: Report) -> list[Source]:
    root = music21_corpus_dir()

    def abc_files(folder: str) -> list[Source]:
        return [Source(f"music21:{p.relative_to(root)}", p, "abc") for p in sorted((root / folder).rglob("*.abc"))]

    key = name.lower()
    if key in ("folk", "abc"):
        return [s for folder in sorted(set(MUSIC21_FOLK.values())) for s in abc_files(folder)]
    if key in MUSIC21_FOLK:
        return abc_files(MUSIC21_FOLK[key])
    if key in ("chorales", "bach-chorales"):
        return _chorale_sources(root)
    path = root / name
    if name and path.exists() and root in path.resolve().parents:
        found = _files_in(path, report) if path.is_dir() else [path]
        return [Source(f"music21:{p.relative_to(root)}", p, _kind(p)) for p in found]
    known = "folk, chorales, essen, oneills1850, ryans, nottingham, airds, misc"
    raise DataError(f"unknown music21 input {name!r}; use music21:NAME with NAME one of {known}, "
                    f"or a path inside {root}")


def _chorale_sources(root: Path) -> list[Source]:
    """The 371 Riemenschneider chorales (music21's own list), or every bach/bwv*.mxl."""
    names: list[str] = []
    try:
        from music21.corpus import chorales

        names = list(chorales.Iterator(returnType="filename"))
    except ImportError:
        raise DataError("music21:chorales needs music21, an optional extra: pip install 'ensemble[corpora]'") from None
    except Exception:  # an older or newer music21 without that iterator: use the files
        names = []
    sources = []
    for n in names:
        stem = Path(n).name
        for suffix in (".mxl", ".xml", ".krn"):
            p = root / "bach" / (stem + suffix)
            if p.is_file():
                sources.append(Source(f"music21:bach/{p.name}", p, "score"))
                break
    if not sources:
        sources = [Source(f"music21:bach/{p.name}", p, "score") for p in sorted((root / "bach").glob("bwv*.mxl"))]
    return sources


# ---------------------------------------------------------------------- readers

def read_source(source: Source, input_kind: str = "", options: Options | None = None) -> Iterator[Item]:
    """The items of one file; raises `Skip` when the file cannot be used at all."""
    kind = source.kind
    if input_kind == "text" and kind == "csv":
        kind = "text"  # for the text codec a CSV file is text like any other
    if kind == "abc":
        yield from _read_abc(source)
    elif kind == "midi":
        yield Item(source.label, "notes", _read_midi(source.path))
    elif kind == "csv":
        yield from _read_csv(source)
    elif kind == "score":
        yield Item(source.label, "notes", _read_score(source.path, (options or Options()).qpm))
    elif kind == "session":
        yield from _read_session(source)
    else:
        yield Item(source.label, "text", _read_text(source.path))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Skip(f"cannot read ({exc.strerror or exc})") from None


def _read_text(path: Path) -> str:
    raw = _read_bytes(path)
    if b"\0" in raw:
        raise Skip("binary data, not text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Skip(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_abc(source: Source) -> Iterator[Item]:
    raw = _read_bytes(source.path)
    if b"\0" in raw:
        raise Skip("binary data, not ABC text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # older ABC collections are Latin-1
    for number, tune in abc_tunes(text):
        yield Item(f"{source.label}#X{number}", "abc", tune)


def abc_tunes(text: str) -> list[tuple[str, str]]:
    """The tunes of an ABC file's text as (X: number, tune text), each tune carrying the
    file header's M: and L: (which hold for every tune of the file); raises `Skip`."""
    tunes = split_tunes(text)
    if not tunes:
        if any(line.startswith("K:") for line in text.splitlines()):
            tunes = [("1", text)]  # one tune without an X: line
        else:
            raise Skip("no ABC tunes (no X: or K: lines)")
    first = re.search(r"^X:", text, re.MULTILINE)
    preamble = text[:first.start()] if first else ""
    defaults = "".join(line + "\n" for line in preamble.splitlines() if line[:2] in ("M:", "L:"))
    return [(number, defaults + tune) for number, tune in tunes]


def _read_midi(path: Path) -> list:
    import mido

    from ensemble.codecs.midi_notes import notes_from_midi
    from ensemble.midifile import unreadable_reason

    try:
        midi = mido.MidiFile(str(path))
        notes = notes_from_midi(midi)
    except Exception as exc:  # mido raises many kinds on a damaged file
        raise Skip(f"not a readable MIDI file ({unreadable_reason(path, exc)})") from None
    if not notes:
        raise Skip("MIDI file without notes")
    return notes


def _read_score(path: Path, qpm: float = DEFAULT_QPM) -> list:
    """A score music21 reads (MusicXML, Humdrum ...) -> its notes, all parts, ties joined."""
    music21 = _import_music21()
    from ensemble.codecs.midi_notes import Note

    try:
        score = music21.converter.parse(str(path))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Skip(f"music21 cannot read it ({reason})") from None
    return score_notes(score, qpm, Note)


def score_notes(score, qpm: float = DEFAULT_QPM, note_type=None) -> list:
    """A music21 score -> notes in seconds at `qpm`, every part, ties joined, no grace notes."""
    if note_type is None:
        from ensemble.codecs.midi_notes import Note as note_type
    seconds = 60.0 / qpm
    parts = list(getattr(score, "parts", [])) or [score]
    notes = []
    for part in parts:
        for n in part.stripTies().flatten().notes:
            if n.duration.isGrace:
                continue
            start = float(n.offset) * seconds
            end = start + float(n.quarterLength) * seconds
            velocity = n.volume.velocity if n.volume.velocity is not None else ABC_VELOCITY
            for p in n.pitches:
                if 0 <= p.midi <= 127 and end > start:
                    notes.append(note_type(start, end, int(p.midi), int(velocity)))
    if not notes:
        raise Skip("score without notes")
    notes.sort(key=lambda n: (n.start, n.pitch))
    return notes


def _read_session(source: Source) -> Iterator[Item]:
    """A server session log: what each performer played (their "in" events), one piece
    per performer. Notes become Notes (each note-on ended by its note-off, or by the
    end of the log), touches TouchEvents. A log cut short by a crash is read up to its
    last complete line."""
    from ensemble.codecs.midi_notes import Note
    from ensemble.codecs.touch import TouchEvent
    from ensemble.session_log import notes_by_voice, read_session, touches_by_performer

    try:
        header, events = read_session(source.path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise Skip(f"not a session log ({exc})") from None
    if header.get("kind") != "session":
        raise Skip("not a session log (no session header on the first line)")
    notes = notes_by_voice(events, lambda e: e["performer"] if e.get("dir") == "in" else None)
    touches = touches_by_performer(events)
    if not notes and not touches:
        raise Skip("session log without played notes or touches")
    for performer in sorted(set(notes) | set(touches)):
        if performer in notes:
            yield Item(f"{source.label}#{performer}", "notes", [Note(*n) for n in notes[performer]])
        if performer in touches:
            yield Item(f"{source.label}#{performer}", "touch", [TouchEvent(*t) for t in touches[performer]])


def _read_csv(source: Source) -> Iterator[Item]:
    text = _read_text(source.path)
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise Skip("empty CSV file")
    header = [h.strip().lower() for h in rows[0]]
    if header == ["time", "performer", "x", "y"]:
        yield from _touch_items(source.label, rows[1:])
    elif header == ["time", "performer", "gesture"]:
        yield Item(source.label, "gestures", _gesture_states(rows[1:]))
    elif header == ["time", "device_id", "x_pos", "y_pos", "velocity"]:  # Metatone touch log (1024 x 768 px)
        yield from _touch_items(source.label, [[str(_time(r[0], i)), r[1], str(_number(r[2], "x_pos", i) / 1024),
                                                 str(_number(r[3], "y_pos", i) / 768)]
                                                for i, r in enumerate(rows[1:], start=2) if len(r) == 5])
    elif len(header) >= 2 and header[0] == "time":  # Metatone gesture log: time,<performer 1>,...
        yield Item(source.label, "gestures", _wide_gesture_states(rows[1:], len(header) - 1))
    else:
        raise Skip(f"CSV header is {','.join(rows[0])!r}; expected time,performer,x,y or "
                   "time,device_id,x_pos,y_pos,velocity (touch logs), time,performer,gesture or "
                   "time,<performer 1>,... (gesture logs)")


def _number(text: str, what: str, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Skip(f"line {line}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise Skip(f"line {line}: {what} is {text!r}")
    return value


def log_time(text: str) -> float:
    """Seconds: a number, or an ISO 8601 time as Metatone logs write them; ValueError if neither."""
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"time {text!r} is neither seconds nor an ISO 8601 time") from None


def _time(text: str, line: int) -> float:
    try:
        return log_time(text)
    except ValueError as exc:
        raise Skip(f"line {line}: {exc}") from None


def _wide_gesture_states(rows: list[list[str]], performers: int) -> list[tuple[int, ...]]:
    """time,<performer 1>,... rows (one per second) -> one ensemble state per row."""
    states = []
    for i, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != performers + 1:
            raise Skip(f"line {i}: {len(row)} fields, expected {performers + 1} (time and one gesture per performer)")
        _time(row[0], i)
        gs = [_number(c, "gesture", i) for c in row[1:]]
        if any(g != int(g) for g in gs):
            raise Skip(f"line {i}: gestures must be whole numbers")
        states.append(tuple(int(g) for g in gs))
    if not states:
        raise Skip("gesture log without gestures")
    return states


def _touch_items(label: str, rows: list[list[str]]) -> Iterator[Item]:
    from ensemble.codecs.touch import TouchEvent

    by_performer: dict[str, list[tuple[float, float, float]]] = {}
    for i, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 4:
            raise Skip(f"line {i}: {len(row)} fields, expected 4 (time,performer,x,y)")
        t, x, y = (_number(row[k], name, i) for k, name in ((0, "time"), (2, "x"), (3, "y")))
        by_performer.setdefault(row[1].strip(), []).append((t, x, y))
    if not by_performer:
        raise Skip("touch log without touches")
    for performer in sorted(by_performer):
        touches = sorted(by_performer[performer], key=lambda r: r[0])  # stable: equal times keep file order
        events, previous = [], touches[0][0]
        for t, x, y in touches:
            events.append(TouchEvent(t - previous, x, y))
            previous = t
        yield Item(f"{label}#{performer}", "touch", events)


def _gesture_states(rows: list[list[str]]) -> list[tuple[int, ...]]:
    """time,performer,gesture rows -> one ensemble state per distinct time (last gesture of each)."""
    performers: list[str] = []
    by_time: dict[float, dict[str, int]] = {}
    for i, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise Skip(f"line {i}: {len(row)} fields, expected 3 (time,performer,gesture)")
        t, g = _number(row[0], "time", i), _number(row[2], "gesture", i)
        if g != int(g):
            raise Skip(f"line {i}: gesture {row[2]!r} is not a whole number")
        who = row[1].strip()
        if who not in performers:
            performers.append(who)
        by_time.setdefault(t, {})[who] = int(g)
    if not by_time:
        raise Skip("gesture log without gestures")
    state = {p: 0 for p in performers}
    states = []
    for t in sorted(by_time):
        state.update(by_time[t])
        states.append(tuple(state[p] for p in performers))
    return states


# ---------------------------------------------------------------------- items -> pieces

def convert(codec, item: Item, options: Options, report: Report) -> list[Piece]:
    """One item -> pieces of tokens for `codec`; raises `Skip` when the codec cannot use it."""
    from ensemble.codecs import CodecError

    try:
        return _convert(codec, item, options, report)
    except CodecError as exc:  # a value the codec refuses (a gesture out of range, NaN ...)
        raise Skip(str(exc).splitlines()[0] if str(exc) else "the codec refused it") from None


def _convert(codec, item: Item, options: Options, report: Report) -> list[Piece]:
    """An item as the codec's training input (its `input_kind`), then tokens."""
    want, kind = codec.input_kind, item.kind
    if want == "abc" and kind == "abc":
        tokens, dropped = _abc_tokens(codec, item.data, options)
        report.dropped.update(dropped)
        return [Piece(item.source, np.asarray([codec.token(t) for t in tokens], dtype=np.int64))]
    if want == "text" and kind == "abc":
        text = item.data
        if options.transpose:
            text = AbcCodec(transpose_to=options.transpose).decode(_abc_ids(item.data, options, report))
        return [Piece(item.source, np.asarray(codec.encode(text), dtype=np.int64))]
    if want == "text" and kind == "text":
        if not item.data:
            raise Skip("empty text")
        return text_pieces(item.data, codec, source=item.source, piece_chars=options.piece_chars)
    if want == "notes" and kind in ("abc", "notes"):
        notes = abc_notes(item.data, options, report) if kind == "abc" else item.data
        return [Piece(item.source, np.asarray(codec.encode_notes(notes), dtype=np.int64))]
    if want == "touch" and kind == "touch":
        return [Piece(item.source, np.asarray(codec.encode(item.data), dtype=np.int64))]
    if want == "gestures" and kind == "gestures":
        states = item.data
        n = getattr(codec, "performers", None)
        if n is not None and states and len(states[0]) != n:
            if len(states[0]) > n:
                raise Skip(f"{len(states[0])} performers but the codec has {n}")
            states = [s + (0,) * (n - len(s)) for s in states]  # missing performers do nothing
        return [Piece(item.source, np.asarray(codec.encode(states), dtype=np.int64))]
    raise Skip(f"{_what(kind)}; {codec_reads(codec)}")


def _what(kind: str) -> str:
    return {"abc": "an ABC tune", "text": "a text file", "notes": "notes (MIDI or a score)",
            "touch": "a touch log", "gestures": "a gesture log"}.get(kind, kind)


def _abc_tokens(codec: AbcCodec, text: str, options: Options) -> tuple[list[str], Counter]:
    from ensemble.codecs import CodecError

    try:
        tokens, dropped = codec.encode_report(text, "strict" if options.strict else "drop")
    except CodecError as exc:
        raise Skip(str(exc)) from None
    if not codec.has_notes(tokens):
        raise Skip("ABC tune without notes")
    return tokens, dropped


def _abc_ids(text: str, options: Options, report: Report) -> list[int]:
    codec = AbcCodec(transpose_to=options.transpose)
    tokens, dropped = _abc_tokens(codec, text, options)
    report.dropped.update(dropped)
    return [codec.token(t) for t in tokens]


def abc_notes(text: str, options: Options | None = None, report: Report | None = None) -> list:
    """An ABC tune -> played notes (`midi_notes.Note`), by the abc codec's own reading."""
    from ensemble.codecs.midi_notes import Note

    options = options or Options()
    ids = _abc_ids(text, options, report or Report())
    return [Note(*n) for n in AbcCodec().to_notes(ids, qpm=options.qpm, velocity=ABC_VELOCITY)]


# ---------------------------------------------------------------------- whole inputs

_SOURCE_WHAT = {"abc": "ABC file", "text": "text file", "csv": "CSV log", "midi": "MIDI file", "score": "score",
                "session": "session log"}
_SOURCES_READ = {"abc": "ABC tunes", "text": "text files", "midi": "MIDI files", "score": "scores",
                 "session": "session logs"}
_CSV_READ = {"text": "CSV files as text", "touch": "touch logs (CSV time,performer,x,y)",
             "gestures": "gesture logs (CSV time,performer,gesture)"}


def codec_reads(codec) -> str:
    """What a codec reads, in words, from what it declares (`sources`, `input_kind`)."""
    kinds = [(_CSV_READ[codec.input_kind] if k == "csv" else _SOURCES_READ[k]) for k in codec.sources]
    said = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]
    return f"the {codec.name} codec reads {said}"


def usable_sources(codec, sources: list[Source], report: Report) -> list[Source]:
    """The sources this codec (or codec class) can use; the others are reported as skipped
    without reading them."""
    usable = []
    for source in sources:
        if source.kind in codec.sources:
            usable.append(source)
        else:
            report.skipped.append((source.label, f"{_SOURCE_WHAT[source.kind]}; {codec_reads(codec)}"))
    return usable


def read_items(sources: list[Source], codec, report: Report, options: Options | None = None) -> Iterator[Item]:
    """Every item of every source, in order; sources that fail are reported and skipped."""
    for source in usable_sources(codec, sources, report):
        report.files += 1
        try:
            yield from read_source(source, codec.input_kind, options)
        except Skip as exc:
            report.skipped.append((source.label, str(exc)))


def _pieces_of_source(codec, source: Source, options: Options) -> tuple[list[Piece], Report]:
    report = Report(files=1)
    pieces: list[Piece] = []
    try:
        for item in read_source(source, codec.input_kind, options):
            try:
                pieces += convert(codec, item, options, report)
            except Skip as exc:
                report.skipped.append((item.source, str(exc)))
    except Skip as exc:
        report.skipped.append((source.label, str(exc)))
    return pieces, report


_WORKER: dict = {}


def _worker_init(codec, options: Options) -> None:
    _WORKER["codec"], _WORKER["options"] = codec, options


def _worker(source: Source) -> tuple[list[Piece], Report]:
    return _pieces_of_source(_WORKER["codec"], source, _WORKER["options"])


def pieces_from_sources(codec, sources: list[Source], options: Options, report: Report, *, limit: int | None = None,
                        workers: int = 1, progress: bool = False) -> list[Piece]:
    """Read and convert every source for `codec` (not the text codec: see `text_codec_pieces`).

    Order is the sources' order whatever `workers` is, so the result and the split are
    reproducible; ``limit`` stops after that many pieces.
    """
    from tqdm import tqdm

    sources = usable_sources(codec, sources, report)

    pieces: list[Piece] = []
    bar = tqdm(total=len(sources), unit="file", desc="prepare", disable=not progress, leave=False)
    try:
        if workers > 1 and len(sources) > 1:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            with ctx.Pool(workers, initializer=_worker_init, initargs=(codec, options)) as pool:
                chunk = 1 if limit is not None else max(1, min(16, len(sources) // (8 * workers)))
                for got, rep in pool.imap(_worker, sources, chunksize=chunk):
                    bar.update()
                    pieces += got
                    report.merge(rep)
                    if limit is not None and len(pieces) >= limit:
                        pool.terminate()
                        break
        else:
            for source in sources:
                got, rep = _pieces_of_source(codec, source, options)
                bar.update()
                pieces += got
                report.merge(rep)
                if limit is not None and len(pieces) >= limit:
                    break
    finally:
        bar.close()
    return pieces[:limit] if limit is not None else pieces


def text_vocabulary(items: list[Item], options: Options, report: Report) -> set[str]:
    """Every character the text codec will see in these items."""
    chars: set[str] = set()
    for item in items:
        if item.kind == "text":
            chars |= set(item.data)
        elif item.kind == "abc":
            if options.transpose:
                try:
                    ids = _abc_ids(item.data, options, Report())
                except Skip:
                    continue
                chars |= set(AbcCodec().decode(ids))
            else:
                chars |= set(item.data)
    return chars


def convert_items(codec, items: Iterable[Item], options: Options, report: Report,
                  limit: int | None = None) -> list[Piece]:
    """Items already read -> pieces (used for the text codec, whose vocabulary needs them first)."""
    pieces: list[Piece] = []
    for item in items:
        try:
            pieces += convert(codec, item, options, report)
        except Skip as exc:
            report.skipped.append((item.source, str(exc)))
        if limit is not None and len(pieces) >= limit:
            break
    return pieces[:limit] if limit is not None else pieces

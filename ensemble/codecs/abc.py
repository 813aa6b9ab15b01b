"""Folk-rnn style ABC tokens (Sturm et al. 2016): one token per musical symbol of a tune.

A tune becomes ``<s> M:6/8 L:1/8 K:Gmaj |: G 2 A B c d ... :| </s>``: the header is
always exactly meter, unit length and key (ABC's defaults filled in when a field is
missing: ``M:none``, the unit length ABC derives from the meter, ``K:Cmaj``), then the
body. The vocabulary is FIXED, enumerated from the tables below, so a model trained on
one collection can be used with any tune:

- ``<s>`` ``</s>``: begin and end of a tune;
- meters ``M:2/4`` ... ``M:C`` ``M:C|`` ``M:none``; unit lengths ``L:1/1`` ... ``L:1/64``;
- keys ``K:<tonic><mode>`` for the 7 modes maj min dor mix lyd phr loc and every tonic
  whose key signature has at most 7 sharps or flats (``K:Gmaj``, ``K:Ador``,
  ``K:F#min``, ``K:Bbmix``); ionian is written maj, aeolian min;
- notes: accidental (``^ _ = ^^ __`` or none) + letter + octave marks, from ``C,,``
  to ``b'`` (MIDI 36..95 before accidentals), one token each: ``^c'``, ``_B,``, ``G``;
- durations, a separate token after a note, rest or chord when not 1: ``2`` ``3``
  ``/2`` ``3/2`` ...;
- bars ``|`` ``||`` ``|]`` ``[|`` ``|:`` ``:|`` ``::`` and volta (ending) marks ``[1``
  .. ``[4`` (``|1`` is ``|`` ``[1``, ``:|2`` is ``:|`` ``[2``);
- rests ``z``, tuplets ``(2`` .. ``(9``, broken rhythm ``>`` ``<`` ``>>`` ``<<``
  ``>>>`` ``<<<``, ties ``-``, chords ``[`` notes ``]``.

Spellings are normalised, so text does not round-trip character for character but
tokens do (ABC -> tokens -> ABC -> tokens is the identity): ``c,`` is ``C``, ``A/`` is
``A/2``, ``A//`` is ``A/4``, ``A1`` is ``A``, ``x`` (invisible rest) is ``z``,
``:|:`` and ``:||:`` are ``::``, ``K:EMinor`` is ``K:Emin``, ``K:HP``/``K:Hp``
(bagpipe) is ``K:Amix``, ``K:none`` is ``K:Cmaj``, ``M:FREI4/4`` (Essen's free
meter) is ``M:4/4``.

Dropped on purpose, silently: every header field other than M, L and K (titles, X:,
composer, tempo Q:, notes, parts P:, lyrics w:/W:, ...), comments, chord symbols and
annotations in quotes, decorations (``~ . T H u v !trill! +trill+``), grace notes in
braces, slurs, spacers, line continuations, explicit accidentals in a K: field, and
every text after the blank line that ends a tune. Chords in square brackets are KEPT
as ``[`` notes ``]`` (a few tunes use them for double stops and final chords).

Anything else the codec cannot represent (an unknown symbol, a note out of range, a
duration, meter or key outside the vocabulary, a second voice V:, a multi-bar rest Z,
a tuplet with an unusual ratio) is, by default (``errors="drop"``), dropped and
counted: `encode_report` returns the counts by kind. With ``errors="strict"`` it
raises `CodecError` instead.

`decode` writes ABC text that music21 parses: ``X:1``, no title, the ``M:``/``L:``/
``K:`` lines, then the body with spaces around bars and body fields inline
(``[K:Dmaj]``). Several tunes in one token stream become ``X:1``, ``X:2``, ...

`transpose` moves a tune to another tonic keeping its mode and every interval
(diatonically: the letters move with the key, so spellings stay sensible); the codec
option ``transpose_to="C"`` does it inside `encode` (folk-rnn's practice: every tune
on tonic C), ``transpose_to="relative-C"`` moves tunes to the key signature without
sharps or flats (C major, A minor, D dorian, ...). `to_notes` plays the tokens as
(start, end, pitch, velocity) notes, so ABC tunes can train the MIDI codecs.
Pure Python: no I/O, no music21, no torch.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction
from functools import lru_cache
from typing import Iterable, Sequence

from ensemble.codecs import CodecError, register

VOCAB_VERSION = 1

BOS, EOS = "<s>", "</s>"
METERS = [
    "none", "C", "C|",
    "2/1", "3/1", "4/1",
    "2/2", "3/2", "4/2", "5/2", "6/2",
    "1/4", "2/4", "3/4", "4/4", "5/4", "6/4", "7/4", "9/4", "12/4",
    "2/8", "3/8", "4/8", "5/8", "6/8", "7/8", "9/8", "10/8", "11/8", "12/8",
    "3/16", "6/16", "9/16", "12/16",
]
UNIT_LENGTHS = ["1/1", "1/2", "1/4", "1/8", "1/16", "1/32", "1/64"]
MODES = ["maj", "min", "dor", "mix", "lyd", "phr", "loc"]
# key signature (sharps > 0, flats < 0) of each mode relative to the major key on the same tonic
MODE_SHIFT = {"maj": 0, "lyd": 1, "mix": -1, "dor": -2, "min": -3, "phr": -4, "loc": -5}
_MODE_ALIASES = {"": "maj", "m": "min", "ion": "maj", "aeo": "min", "maj": "maj", "min": "min",
                 "dor": "dor", "mix": "mix", "lyd": "lyd", "phr": "phr", "loc": "loc"}
BARS = ["|", "||", "|]", "[|", "|:", ":|", "::"]
VOLTAS = ["[1", "[2", "[3", "[4"]
TUPLETS = [f"({p}" for p in range(2, 10)]
REST, TIE, CHORD_OPEN, CHORD_CLOSE = "z", "-", "[", "]"
BROKEN = [">", "<", ">>", "<<", ">>>", "<<<"]
ACCIDENTALS = ["", "^", "_", "=", "^^", "__"]
ACCIDENTAL_SEMITONES = {"": None, "^": 1, "_": -1, "=": 0, "^^": 2, "__": -2}
LETTERS = "CDEFGAB"
NATURAL = [0, 2, 4, 5, 7, 9, 11]  # semitones of C D E F G A B above C
LOW_STEP, HIGH_STEP = 2 * 7, 6 * 7 + 6  # diatonic steps of C,, (C2) and b' (B6); C (middle C) is 4 * 7


def _durations() -> list[Fraction]:
    """Multipliers of the unit length: 2..16, 24, 32, and n/2, n/4, n/8, n/16 for odd n < 16, 1/3, 2/3."""
    values = {Fraction(n) for n in range(2, 17)} | {Fraction(24), Fraction(32), Fraction(1, 3), Fraction(2, 3)}
    values |= {Fraction(n, den) for den in (2, 4, 8, 16) for n in range(1, 16, 2)}
    return sorted(values)


DURATIONS = _durations()


def duration_token(value: Fraction) -> str:
    """A duration multiplier as its canonical token: 2, /2, 3/2, /4, 3/4 ..."""
    if value.denominator == 1:
        return str(value.numerator)
    if value.numerator == 1:
        return f"/{value.denominator}"
    return f"{value.numerator}/{value.denominator}"


def _tonic_name(fifths: int) -> str:
    """Tonic on the circle of fifths (0 = C, 1 = G, -1 = F ...) -> 'C', 'F#', 'Bb'."""
    letter = "FCGDAEB"[(fifths + 1) % 7]
    sharps = (fifths + 1) // 7
    return letter + ("#" * sharps if sharps > 0 else "b" * -sharps)


def _tonic_fifths(name: str) -> int:
    letter, acc = name[0].upper(), name[1:]
    return "FCGDAEB".index(letter) - 1 + 7 * (acc.count("#") - acc.count("b"))


def _keys() -> list[str]:
    out = []
    for mode in MODES:
        for signature in range(-7, 8):
            out.append(f"K:{_tonic_name(signature - MODE_SHIFT[mode])}{mode}")
    return out


KEYS_BY_SIGNATURE = {sig: [f"K:{_tonic_name(sig - MODE_SHIFT[m])}{m}" for m in MODES] for sig in range(-7, 8)}
"""Key tokens by key signature (sharps > 0, flats < 0): 0 -> K:Cmaj, K:Amin, K:Ddor ..."""


def note_token(accidental: str, step: int) -> str:
    """Diatonic step (octave * 7 + letter index; 28 is middle C) -> 'C', "c'", 'C,' ..."""
    octave, letter = divmod(step, 7)
    if octave >= 5:
        return accidental + LETTERS[letter].lower() + "'" * (octave - 5)
    return accidental + LETTERS[letter] + "," * (4 - octave)


def _notes() -> list[str]:
    return [note_token(acc, step) for step in range(LOW_STEP, HIGH_STEP + 1) for acc in ACCIDENTALS]


def vocabulary() -> list[str]:
    """Every token string, in token order (deterministic; fixed by VOCAB_VERSION)."""
    return ([BOS, EOS] + [f"M:{m}" for m in METERS] + [f"L:{u}" for u in UNIT_LENGTHS] + _keys()
            + BARS + VOLTAS + TUPLETS + [REST, TIE, CHORD_OPEN, CHORD_CLOSE] + BROKEN
            + [duration_token(d) for d in DURATIONS] + _notes())


_VOCAB = vocabulary()
_INDEX = {t: i for i, t in enumerate(_VOCAB)}
assert len(_INDEX) == len(_VOCAB), "ABC vocabulary has duplicate tokens"

# token id -> (accidental, diatonic step) for notes; -> Fraction for durations
_NOTE_OF: dict[int, tuple[str, int]] = {}
for _step in range(LOW_STEP, HIGH_STEP + 1):
    for _acc in ACCIDENTALS:
        _NOTE_OF[_INDEX[note_token(_acc, _step)]] = (_acc, _step)
_DURATION_OF = {_INDEX[duration_token(d)]: d for d in DURATIONS}
_DURATION_FLOAT = {t: float(d) for t, d in _DURATION_OF.items()}
_KEY_OF: dict[int, tuple[int, str]] = {}  # token -> (tonic fifths, mode)
for _mode in MODES:
    for _sig in range(-7, 8):
        _KEY_OF[_INDEX[f"K:{_tonic_name(_sig - MODE_SHIFT[_mode])}{_mode}"]] = (_sig - MODE_SHIFT[_mode], _mode)


# ---------------------------------------------------------------------- text -> tokens

_HEADER_LINE = re.compile(r"^\s*([A-Za-z]):(.*)$")
_FIELD_LINE = re.compile(r"^\s*([A-Za-z]):(?![|:])(.*)$")  # in the body 'A:|' is music
_BODY = re.compile(r"""
  (?P<space>[\s\\`y$]+)
| (?P<inline>\[(?P<ifield>[A-Za-z]):(?P<ivalue>[^\]]*)\])
| (?P<annot>"[^"]*"?)
| (?P<deco>![^!]*!|\+[^+]*\+)
| (?P<grace>\{[^}]*\}?)
| (?P<bar>(?P<lc>:*)(?P<pipes>\[\|\]|\[\||\|+\]?)(?P<rc>:*)(?:(?P<bvolta>\d[\d,\-]*)|\s*\[(?P<bvolta2>\d[\d,\-]*))?
         | (?P<dc>::+))
| \[(?P<volta>\d[\d,\-]*)
| (?P<tuplet>\((?P<tp>\d)(?::(?P<tq>\d*)(?::(?P<tr>\d*))?)?)
| (?P<note>(?P<acc>\^\^|\^|__|_|=)?(?P<letter>[A-Ga-g])(?P<oct>[,']*)(?P<dur>\d*/*\d*))
| (?P<rest>[zx](?P<rdur>\d*/*\d*))
| (?P<mrest>Z\d*)
| (?P<open>\[)
| (?P<close>\](?P<cdur>\d*/*\d*))
| (?P<tie>-)
| (?P<broken>[<>]+)
| (?P<slur>[()])
| (?P<deco1>[.~HIJKLMNOPQRSTUVWXYhijklmnopqrstuvw])
| (?P<other>.)
""", re.VERBOSE)


def split_tunes(text: str) -> list[tuple[str, str]]:
    """Split the text of an ABC file into (X: number, tune text) at each ``X:`` line.

    Text before the first X: (a file header) is left out. Cheap: no parsing.
    """
    out = []
    starts = [m.start() for m in re.finditer(r"^X:", text, re.MULTILINE)]
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        chunk = text[start:end]
        line = chunk[2:chunk.find("\n") if "\n" in chunk else len(chunk)]
        number = line.split("%", 1)[0].strip()  # `X:1   % tune no 1`: the comment is no part of it
        out.append((number, chunk))
    return out


@lru_cache(maxsize=512)
def _parse_duration(text: str) -> Fraction | None:
    """'3/2' '/' '//' '3' '' -> the multiplier; None when it is not a duration."""
    m = re.fullmatch(r"(\d*)(/*)(\d*)", text)
    if not m:
        return None
    num = int(m[1]) if m[1] else 1
    if not m[2]:
        den = 1
    elif m[3]:
        den = int(m[3]) * 2 ** (len(m[2]) - 1)
    else:
        den = 2 ** len(m[2])
    if num == 0 or den == 0:
        return None
    return Fraction(num, den)


@lru_cache(maxsize=256)
def _meter_token(value: str) -> str | None:
    value = value.split("%")[0].replace(" ", "").rstrip("]")
    if value.upper().startswith("FREI"):
        value = value[4:]
    if value.lower() in ("", "none", "free"):
        value = "none"
    return f"M:{value}" if f"M:{value}" in _INDEX else None


@lru_cache(maxsize=64)
def _unit_token(value: str) -> str | None:
    value = value.split("%")[0].replace(" ", "")
    return f"L:{value}" if f"L:{value}" in _INDEX else None


def _default_unit(meter: str) -> str:
    """ABC 2.1: L defaults to 1/16 when the meter is below 3/4, else 1/8."""
    m = re.fullmatch(r"M:(\d+)/(\d+)", meter)
    if m and Fraction(int(m[1]), int(m[2])) < Fraction(3, 4):
        return "L:1/16"
    return "L:1/8"


@lru_cache(maxsize=512)
def _key_token(value: str) -> tuple[str | None, bool]:
    """K: field -> (token or None, whether something was dropped on the way)."""
    value = value.split("%")[0].strip()
    if value.lower() in ("", "none") or value.lower().startswith(("clef=", "none ")):
        return "K:Cmaj", False
    if value.upper().startswith("HP") or value in ("H",):
        return "K:Amix", False
    m = re.match(r"([A-Ga-g])([#b]?)\s*([A-Za-z]*)(.*)$", value)
    if not m:
        return None, True
    word, rest = m[3].lower(), m[4]
    mode = _MODE_ALIASES.get(word if len(word) < 3 else word[:3])
    if mode is None and rest.startswith("="):  # 'K:G clef=bass': no mode, then key=value settings
        mode, rest = "maj", ""
    if mode is None:
        return None, True
    lossy = bool(re.match(r"\s*[\^_=][A-Ga-g]", rest))  # explicit key accidentals ('K:Dmix ^c'): dropped
    token = f"K:{m[1].upper()}{m[2]}{mode}"
    if token not in _INDEX:
        return None, True
    return token, lossy


_TUPLET_Q = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}


class _Encoder:
    """One pass over ABC text; collects token strings and counts what it dropped."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.out: list[str] = []
        self.dropped: Counter = Counter()
        self.first_voice: str | None = None
        self.other_voice = False
        self.chord: str | None = None  # None, 'empty' ('[' written, no note yet) or 'notes'

    def drop(self, kind: str, what: str) -> None:
        if self.strict:
            raise CodecError(f"ABC {kind} not in the vocabulary: {what!r}")
        self.dropped[kind] += 1

    def run(self, text: str) -> None:
        state = "outside"  # outside a tune | header | body | ended (after the blank line)
        header: dict[str, str] = {}
        defaults: dict[str, str] = {}  # M: and L: before the first tune
        for raw in text.splitlines():
            line = _strip_comment(raw)
            field = (_HEADER_LINE if state == "header" else _FIELD_LINE).match(line)
            if field and field[1] == "X":
                if state in ("header", "body"):
                    self.end_tune(state, header)
                state, header = "header", dict(defaults)
                continue
            if state == "outside":
                if field and field[1] in "ML":  # a file header: defaults for every tune
                    defaults[field[1]] = field[2]
                    continue
                if (field and field[1] != "K") or not line.strip():
                    continue
                state, header = "header", dict(defaults)  # a tune without X:
                if field:  # K: starts the tune's body
                    header["K"] = field[2]
                    self.start_body(header)
                    state = "body"
                    continue
            if state == "ended":
                if line.strip():
                    self.dropped["text after the tune"] += 1
                continue
            if not line.strip():
                if state == "body" and not raw.strip():
                    state = "ended"  # a blank line ends a tune
                    self.out.append(EOS)
                continue
            if field:
                name, value = field[1], field[2]
                if state == "header":
                    if name in "MLK":
                        header[name] = value
                    if name == "K":
                        self.start_body(header)
                        state = "body"
                elif name == "V":
                    self.voice(value)
                elif not self.other_voice:
                    self.body_field(name, value)
                continue
            if state == "header":
                self.start_body(header)
                state = "body"
            self.body(line)
        if state in ("header", "body"):
            self.end_tune(state, header)

    def voice(self, value: str) -> None:
        """A V: field in the body: keep the first voice, drop the others."""
        name = value.split()[0] if value.split() else ""
        if self.first_voice is None:
            self.first_voice = name
        self.other_voice = name != self.first_voice
        if self.other_voice and self.strict:
            raise CodecError(f"ABC tune with several voices (V:{value.strip()}); the abc codec reads one melody")

    def start_body(self, header: dict) -> None:
        self.out.append(BOS)
        meter = "M:none"
        if "M" in header:
            meter = _meter_token(header["M"]) or self.drop("meter", header["M"]) or "M:none"
        unit = _default_unit(meter)
        if "L" in header:
            unit = _unit_token(header["L"]) or self.drop("unit length", header["L"]) or unit
        key = "K:Cmaj"
        if "K" in header:
            token, lossy = _key_token(header["K"])
            if lossy:
                self.drop("key", header["K"])
            key = token or key
        self.out += [meter, unit, key]
        self.first_voice, self.other_voice = None, False

    def end_tune(self, state: str, header: dict) -> None:
        if state == "header":
            self.start_body(header)
        if state != "ended":
            self.out.append(EOS)

    def body_field(self, name: str, value: str) -> None:
        if name == "M":
            token = _meter_token(value)
        elif name == "L":
            token = _unit_token(value)
        elif name == "K":
            token, lossy = _key_token(value)
            if lossy:
                self.drop("key", value)
                return
        else:
            return  # P:, w:, T:, Q:, N: ... in the body: not music tokens
        if token is None:
            self.drop({"M": "meter", "L": "unit length"}[name], value)
        else:
            self.out.append(token)

    def duration(self, text: str) -> None:
        if not text or text == "1":
            return
        value = _parse_duration(text)
        if value is None or value == 1:
            if value is None:
                self.drop("duration", text)
            return
        token = duration_token(value)
        if token in _INDEX:
            self.out.append(token)
        else:
            self.drop("duration", text)

    def close_chord(self) -> None:
        """End a chord that was left open: '[' + notes gets its ']', an empty '[' goes."""
        if self.chord == "notes":
            self.out.append(CHORD_CLOSE)
            self.dropped["unclosed chord"] += 1
        elif self.chord == "empty":
            self.out.pop()
        self.chord = None

    def body(self, line: str) -> None:
        out = self.out
        for m in _BODY.finditer(line):
            if self.chord is not None and m["note"] is None and m["close"] is None and m["space"] is None \
                    and not (m["tie"] is not None and self.chord == "notes") and m["annot"] is None \
                    and m["deco"] is None and m["deco1"] is None:
                self.close_chord()  # anything but notes and ties ends a chord
            if m["inline"] is not None and m["ifield"] == "V":
                self.voice(m["ivalue"])
                continue
            if self.other_voice:
                if m["space"] is None:
                    self.dropped["second voice"] += 1
                continue
            if m["note"] is not None:
                acc = m["acc"] or ""
                letter = m["letter"]
                step = 4 * 7 + LETTERS.index(letter.upper()) + (7 if letter.islower() else 0)
                octs = m["oct"]
                step += 7 * (octs.count("'") - octs.count(","))
                if not LOW_STEP <= step <= HIGH_STEP:
                    self.drop("note out of range", m.group())
                    continue
                out.append(note_token(acc, step))
                self.duration(m["dur"])
                if self.chord is not None:
                    self.chord = "notes"
            elif m["bar"] is not None:
                out.append(_bar_token(m))
                volta = m["bvolta"] or m["bvolta2"]
                if volta:
                    self.volta(volta)
            elif m["space"] is not None or m["annot"] is not None or m["deco"] is not None \
                    or m["grace"] is not None or m["slur"] is not None or m["deco1"] is not None:
                continue
            elif m["rest"] is not None:
                out.append(REST)
                self.duration(m["rdur"])
            elif m["tuplet"] is not None:
                p = int(m["tp"])
                q = m["tq"]
                r = m["tr"]
                if 2 <= p <= 9 and (not q or int(q) == _TUPLET_Q.get(p, int(q))) and (not r or int(r) == p):
                    out.append(f"({p}")
                else:
                    self.drop("tuplet", m.group())
            elif m["volta"] is not None:
                self.volta(m["volta"])
            elif m["open"] is not None:
                out.append(CHORD_OPEN)
                self.chord = "empty"
            elif m["close"] is not None:
                if self.chord == "notes":
                    out.append(CHORD_CLOSE)
                    self.chord = None
                    self.duration(m["cdur"])
                elif self.chord == "empty":
                    out.pop()
                    self.chord = None
                else:
                    self.drop("symbol", m.group())
            elif m["tie"] is not None:
                out.append(TIE)
            elif m["broken"] is not None:
                if m["broken"] in _INDEX:
                    out.append(m["broken"])
                else:
                    self.drop("broken rhythm", m["broken"])
            elif m["inline"] is not None:
                self.body_field(m["ifield"], m["ivalue"])
            elif m["mrest"] is not None:
                self.drop("multi-bar rest", m.group())
            else:
                self.drop("symbol", m.group())
        if self.chord is not None:
            self.close_chord()

    def volta(self, text: str) -> None:
        first = re.match(r"\d+", text)[0]
        token = f"[{first}"
        if token in _INDEX and first == text:
            self.out.append(token)
        elif token in _INDEX:
            self.out.append(token)
            self.drop("volta", text)  # '1,3' or '1-2': kept as its first number
        else:
            self.drop("volta", text)


def _strip_comment(line: str) -> str:
    i = line.find("%")
    while i > 0 and line[i - 1] == "\\":
        i = line.find("%", i + 1)
    return line if i < 0 else line[:i]


def _bar_token(m: re.Match) -> str:
    if m["dc"]:
        return "::"
    left, right, pipes = bool(m["lc"]), bool(m["rc"]), m["pipes"]
    if left and right:
        return "::"
    if left:
        return ":|"
    if right:
        return "|:"
    if pipes == "[|]":  # an invisible bar line
        return "|"
    if pipes == "[|":
        return "[|"
    if pipes.endswith("]"):
        return "|]"
    return "||" if len(pipes) > 1 else "|"


# ---------------------------------------------------------------------- the codec

_HEADER_KINDS = ("M:", "L:", "K:")


class AbcCodec:
    """Folk-rnn style ABC codec with a fixed vocabulary; see the module docstring."""

    name = "abc"
    input_kind, sources, live = "abc", ("abc",), None

    def __init__(self, transpose_to: str | None = None):
        if transpose_to is not None:
            _target(transpose_to, "maj")  # validates
        self.transpose_to = transpose_to
        self.tokens = tuple(_VOCAB)

    @property
    def vocab_size(self) -> int:
        return len(_VOCAB)

    @property
    def forbidden(self) -> list[int]:
        """Tokens a sampler should never draw (none: every token is musical)."""
        return []

    @property
    def start_token(self) -> int:
        """Generation without a prime begins a new tune."""
        return self.token(BOS)

    @property
    def stop_token(self) -> int:
        """Generation ends with the tune (the model never learned what follows a tune's end)."""
        return self.token(EOS)

    def token(self, text: str) -> int:
        """A token string ('K:Gmaj', '^c', '|:') -> its id."""
        try:
            return _INDEX[text]
        except KeyError:
            raise CodecError(f"{text!r} is not an ABC token") from None

    def describe_token(self, token: int) -> str:
        return _VOCAB[int(token)]

    def has_notes(self, tokens: Iterable) -> bool:
        """Whether tokens (ids or token strings) hold at least one note."""
        return any((_INDEX.get(t) if isinstance(t, str) else int(t)) in _NOTE_OF for t in tokens)

    # -------------------------------------------------------------- encode

    def encode_report(self, text: str, errors: str = "drop") -> tuple[list[str], Counter]:
        """ABC text -> (token strings, counts of what was dropped by kind)."""
        if errors not in ("drop", "strict"):
            raise ValueError(f"errors must be 'drop' or 'strict', got {errors!r}")
        if not isinstance(text, str):
            raise CodecError(f"the abc codec encodes ABC text, got {type(text).__name__}")
        enc = _Encoder(strict=errors == "strict")
        enc.run(text)
        tokens = enc.out
        if self.transpose_to is not None:
            ids, dropped = _transpose([_INDEX[t] for t in tokens], self.transpose_to, errors == "strict")
            tokens = [_VOCAB[t] for t in ids]
            enc.dropped.update(dropped)
        return tokens, enc.dropped

    def encode(self, text: str, errors: str = "drop") -> list[int]:
        """ABC text (one tune, or several each starting with X:) -> tokens.

        errors: 'drop' (default) leaves out what the vocabulary cannot hold (counted by
        `encode_report`), 'strict' raises `CodecError` at the first such thing.
        """
        tokens, _ = self.encode_report(text, errors)
        return [_INDEX[t] for t in tokens]

    def prime(self, text: str, errors: str = "drop") -> list[int]:
        """ABC text -> tokens to prime a model with: as `encode`, without the final ``</s>``,
        so the model goes on with this tune instead of starting the next one."""
        tokens = self.encode(text, errors)
        if tokens and tokens[-1] == _INDEX[EOS]:
            tokens.pop()
        return tokens

    # -------------------------------------------------------------- decode

    def decode(self, tokens: Iterable[int]) -> str:
        """Tokens -> ABC text that music21 parses (for tokens that `encode` made).

        Any token sequence decodes: a tune begins at ``<s>`` (or at the first token),
        missing header fields get ABC's defaults, tokens that cannot stand where they
        are (a duration after a bar, an empty or unclosed chord) are left out, so
        ``encode(decode(t))`` is a cleaned-up ``t`` and decoding that again gives the
        same text.
        """
        tunes: list[list[str]] = []
        current: list[str] | None = None
        for t in tokens:
            t = int(t)
            if not 0 <= t < len(_VOCAB):
                raise CodecError(f"token {t} is out of range 0..{len(_VOCAB) - 1}")
            s = _VOCAB[t]
            if s == BOS:
                current = []
                tunes.append(current)
            elif s == EOS:
                if current is None:
                    tunes.append([])
                current = None
            else:
                if current is None:
                    current = []
                    tunes.append(current)
                current.append(s)
        return "\n".join(_write_tune(i + 1, body) for i, body in enumerate(tunes))

    # -------------------------------------------------------------- the rest

    def transpose(self, tokens: Sequence[int], to: str = "C", errors: str = "drop") -> list[int]:
        """Move every tune in `tokens` to tonic `to` (or 'relative-C'), keeping modes and intervals."""
        return _transpose(list(tokens), to, errors == "strict")[0]

    def to_notes(self, tokens: Sequence[int], qpm: float = 120.0, velocity: int = 80) -> list[tuple[float, float, int, int]]:
        """Play tokens: (start s, end s, MIDI pitch, velocity) sorted by start then pitch.

        Key signatures, accidentals that last to the bar line (and, on a tied note,
        across it), ties, tuplets, broken rhythm and chords are honoured; a tie between
        two different pitches (some collections write slurs so) joins nothing; repeats
        are played once, as written; ``qpm`` quarter notes per minute. Tunes in one
        stream follow each other.
        """
        return _to_notes(list(tokens), qpm, velocity)

    def describe(self) -> dict:
        return {"name": self.name, "vocab_version": VOCAB_VERSION, "vocab_size": self.vocab_size,
                "transpose_to": self.transpose_to}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AbcCodec) and other.transpose_to == self.transpose_to

    def __repr__(self) -> str:
        return f"AbcCodec(transpose_to={self.transpose_to!r})"


def _write_tune(number: int, tokens: list[str]) -> str:
    header = {"M": "M:none", "L": None, "K": "K:Cmaj"}
    i = 0
    for kind in _HEADER_KINDS:  # the header: M:, L:, K: in this order, each at most once
        if i < len(tokens) and tokens[i].startswith(kind):
            header[kind[0]] = tokens[i]
            i += 1
    if header["L"] is None:
        header["L"] = _default_unit(header["M"])
    lines = [f"X:{number}", header["M"], header["L"], header["K"]]
    body: list[str] = []
    last = None  # kind of the previous written token: note | rest | close | dur | bar | other
    chord = None  # None, 'pending' ('[' seen, no note yet) or 'open'
    bars = 0
    for s in tokens[i:]:
        if s in _INDEX and _INDEX[s] in _NOTE_OF:
            if chord == "pending":
                body.append(CHORD_OPEN)
                chord = "open"
            body.append(s)
            last = "note"
            continue
        if s == CHORD_OPEN:
            if chord is None:
                chord, last = "pending", "open"
            continue
        if s == TIE and chord == "open":  # a tie on one note of a chord
            body.append(s)
            last = "other"
            continue
        if s == CHORD_CLOSE:
            if chord == "open":
                body.append(CHORD_CLOSE)
                last = "close"
            chord = None
            continue
        if _INDEX[s] in _DURATION_OF:
            if last in ("note", "rest", "close"):
                body.append(s)
                last = "dur"
            continue
        if chord == "open":
            body.append(CHORD_CLOSE)
            last = "close"
        chord = None
        if s in BARS:
            bars += 1
            body.append(f" {s}" + ("\n" if bars % 4 == 0 else " "))
            last = "bar"
        elif s in VOLTAS:
            if last == "bar":
                body[-1] = body[-1].rstrip(" \n")
            body.append(s + " ")
            last = "other"
        elif s == REST:
            body.append(s)
            last = "rest"
        elif s[:2] in _HEADER_KINDS:
            body.append(f" [{s}] ")
            last = "other"
        elif s in BROKEN:
            body.append(" " + s if last == "broken" else s)  # '<' '>' must not become '<>'
            last = "broken"
        else:  # tuplet, tie
            body.append(s)
            last = "other"
    if chord == "open":
        body.append(CHORD_CLOSE)
    text = "".join(body).strip()
    text = re.sub(r"[ ]*\n[ ]*", "\n", re.sub(r"  +", " ", text))
    return "\n".join(lines) + "\n" + (text + "\n" if text else "")


# ---------------------------------------------------------------------- transposition

def _target(to: str, mode: str) -> int:
    """The tonic (circle-of-fifths position) that a tune in `mode` moves to."""
    if to == "relative-C":
        return -MODE_SHIFT[mode]
    if not isinstance(to, str) or not re.fullmatch(r"[A-G][#b]?", to):
        raise CodecError(f"transpose_to must be a tonic like 'C', 'D', 'Bb', 'F#' or 'relative-C', got {to!r}")
    return _tonic_fifths(to)


def _tonic_pitch(fifths: int) -> tuple[int, int]:
    """Tonic -> (diatonic step in octave 4, MIDI pitch) of its letter and accidental."""
    name = _tonic_name(fifths)
    letter = LETTERS.index(name[0])
    acc = name.count("#") - name.count("b")
    return 28 + letter, 60 + NATURAL[letter] + acc


def _interval(src: int, dst: int) -> tuple[int, int]:
    """(diatonic steps, semitones) from tonic src to the nearest dst (within a tritone)."""
    s_step, s_pitch = _tonic_pitch(src)
    d_step, d_pitch = _tonic_pitch(dst)
    best = None
    for k in (-1, 0, 1):
        steps, semis = d_step + 7 * k - s_step, d_pitch + 12 * k - s_pitch
        if best is None or abs(semis) < abs(best[1]) or (abs(semis) == abs(best[1]) and semis < best[1]):
            best = (steps, semis)
    return best


def _midi(acc: int, step: int) -> int:
    octave, letter = divmod(step, 7)
    return 12 * (octave + 1) + NATURAL[letter] + acc


_ACCIDENTAL_OF_SHIFT = {v: k for k, v in ACCIDENTAL_SEMITONES.items() if v is not None}


class _Accidentals:
    """What a note without an accidental sounds like here: the key signature, accidentals
    earlier in the bar, a tie from the previous note. The same rules `_to_notes` plays by,
    kept step by step, so a transposition can tell when a note needs an explicit one."""

    def __init__(self):
        self.key, self.bar = [0] * 7, {}
        self.steps: list = []
        self.tie_carry: dict = {}
        self.chord: list | None = None

    def implicit(self, step: int) -> int:
        return self.tie_carry.get(step, self.bar.get(step, self.key[step % 7]))

    def note(self, acc: str, step: int) -> int:
        """The semitone offset of this note (its letter's natural = 0), state updated."""
        semis = ACCIDENTAL_SEMITONES[acc]
        if semis is None:
            semis = self.implicit(step)
        else:
            self.bar[step] = semis
        if self.chord is not None:
            self.chord.append((step, semis))
        else:
            self.steps, self.tie_carry = [(step, semis)], {}
        return semis

    def other(self, t: int, s: str) -> None:
        if s == REST:
            self.steps, self.tie_carry = [], {}
        elif s == CHORD_OPEN:
            self.chord = []
        elif s == CHORD_CLOSE:
            if self.chord:
                self.steps, self.tie_carry = self.chord, {}
            self.chord = None
        elif s == TIE:
            self.tie_carry = dict(self.steps)
        elif s in BARS or s in VOLTAS:
            self.bar.clear()
        elif t in _KEY_OF:
            self.key = _key_accidentals(*_KEY_OF[t])
            self.bar.clear()
        elif s == BOS:
            self.key, self.chord = [0] * 7, None
            self.bar.clear()


def _transpose(tokens: list[int], to: str, strict: bool) -> tuple[list[int], Counter]:
    """Each note moved by the interval between the keys, on the moved letter. A note keeps an
    explicit accidental, and gets one where the new key, bar or tie would otherwise make it
    sound wrong (e.g. ^E E in E flat: the second E is E sharp too; moved to F sharp major,
    the first becomes ^G, so the second needs one of its own)."""
    out: list[int] = []
    dropped: Counter = Counter()
    interval = None
    source, target = _Accidentals(), _Accidentals()
    for t in tokens:
        s = _VOCAB[t]
        if s == BOS:
            interval = None
        if t in _KEY_OF:
            source.other(t, s)
            fifths, mode = _KEY_OF[t]
            if interval is None:
                interval = _interval(fifths, _target(to, mode))
            # the new tonic: the old one moved by the interval, spelled on the moved letter
            steps, semis = interval
            step, pitch = _tonic_pitch(fifths)
            new_step, new_pitch = step + steps, pitch + semis
            acc = new_pitch - _midi(0, new_step)
            letter = LETTERS[new_step % 7]
            name = letter + ("#" * acc if acc > 0 else "b" * -acc)
            token = f"K:{name}{mode}"
            if abs(acc) <= 2 and token in _INDEX:
                out.append(_INDEX[token])
                target.other(_INDEX[token], token)
                continue
            if strict:
                raise CodecError(f"transposing {s} gives a key outside the vocabulary")
            dropped["key out of range"] += 1
            continue
        if t in _NOTE_OF:
            acc, step = _NOTE_OF[t]
            played = _midi(source.note(acc, step), step)
            if interval is None:
                target.note(acc, step)
                out.append(t)
                continue
            steps, semis = interval
            new_step, pitch = step + steps, played + semis
            if not acc and _midi(target.implicit(new_step), new_step) == pitch:
                new_acc = ""
            else:
                shift = pitch - _midi(0, new_step)
                if not -2 <= shift <= 2:  # respell on a neighbouring letter
                    for candidate in (new_step - 1, new_step + 1):
                        if -2 <= pitch - _midi(0, candidate) <= 2:
                            new_step, shift = candidate, pitch - _midi(0, candidate)
                            break
                new_acc = _ACCIDENTAL_OF_SHIFT[shift]
            if not LOW_STEP <= new_step <= HIGH_STEP:
                if strict:
                    raise CodecError(f"transposing {s} leaves the note range C,,..b'")
                dropped["note out of range"] += 1
                continue
            target.note(new_acc, new_step)
            out.append(_INDEX[note_token(new_acc, new_step)])
            continue
        source.other(t, s)
        target.other(t, s)
        out.append(t)
    return out, dropped


def abc_transpose(text: str, to: str = "C") -> str:
    """ABC text -> ABC text of the same tune(s) on tonic `to` (normalised as by the codec)."""
    codec = AbcCodec()
    return codec.decode(codec.transpose(codec.encode(text), to))


# ---------------------------------------------------------------------- playing

def _key_accidentals(fifths: int, mode: str) -> list[int]:
    """Semitone offset of each letter C..B in the key signature of (tonic, mode)."""
    signature = fifths + MODE_SHIFT[mode]
    accs = [0] * 7
    for i in range(abs(signature)):
        if signature > 0:
            accs[LETTERS.index("FCGDAEB"[i])] = 1
        else:
            accs[LETTERS.index("BEADGCF"[i])] = -1
    return accs


_BROKEN_FACTORS = {">": (1.5, 0.5), ">>": (1.75, 0.25), ">>>": (1.875, 0.125)}
_BROKEN_FACTORS.update({k.replace(">", "<"): (b, a) for k, (a, b) in list(_BROKEN_FACTORS.items())})


class _Element:
    """A note, rest or chord being played: its pitches with their own lengths, its length."""

    __slots__ = ("pitches", "length", "tie", "factor", "sized")

    def __init__(self, pitches: list, length: float, factor: float):
        self.pitches = pitches  # [[MIDI pitch, length in whole notes], ...]; empty for a rest
        self.length = length  # how far it moves time on, in whole notes (before `factor`)
        self.tie = False
        self.factor = factor  # tuplet and broken-rhythm scaling
        self.sized = False  # a duration token has been applied


def _to_notes(tokens: list[int], qpm: float, velocity: int) -> list[tuple[float, float, int, int]]:
    # pass 1: tokens -> elements
    elements: list[_Element] = []
    unit = 0.125  # floats: exact for halves, quarters ...; triplets within 1e-15
    key = [0] * 7
    bar_acc: dict[int, int] = {}
    tuplet_left, tuplet_ratio = 0, 1.0
    compound = False
    chord: list | None = None  # pitches of an open chord
    chord_steps: list[tuple[int, int]] = []
    pending_factor = 1.0  # the second half of a broken rhythm
    last: _Element | None = None  # the element a duration token applies to
    steps: list[tuple[int, int]] = []  # (diatonic step, semitones) of the notes of the latest element
    tie_carry: dict[int, int] = {}  # a note tied to the next keeps its accidental, across a bar line too

    def element(pitches: list, length: float) -> _Element:
        nonlocal tuplet_left, pending_factor
        factor, pending_factor = pending_factor, 1.0
        if tuplet_left > 0:
            factor *= tuplet_ratio
            tuplet_left -= 1
        el = _Element(pitches, length, factor)
        elements.append(el)
        return el

    for t in tokens:
        t = int(t)
        s = _VOCAB[t]
        if t in _NOTE_OF:
            acc, step = _NOTE_OF[t]
            semis = ACCIDENTAL_SEMITONES[acc]
            if semis is None:
                semis = tie_carry.get(step, bar_acc.get(step, key[step % 7]))
            else:
                bar_acc[step] = semis
            if chord is not None:
                chord.append([_midi(semis, step), unit])
                chord_steps.append((step, semis))
            else:
                last = element([[_midi(semis, step), unit]], unit)
                steps, tie_carry = [(step, semis)], {}
            continue
        if t in _DURATION_OF:
            value = _DURATION_FLOAT[t]
            if chord:  # a note inside a chord
                chord[-1][1] = unit * value
            elif last is not None and not last.sized:
                last.length *= value
                for p in last.pitches:
                    p[1] *= value
                last.sized = True
            continue
        last = None
        if s == REST:
            last = element([], unit)
            steps, tie_carry = [], {}
        elif s == CHORD_OPEN:
            chord, chord_steps = [], []
        elif s == CHORD_CLOSE:
            if chord:  # a chord lasts as long as its first note (ABC 2.1)
                last = element(chord, chord[0][1])
                steps, tie_carry = chord_steps, {}
            chord = None
        elif s == TIE:
            if elements:
                elements[-1].tie = True
                tie_carry = dict(steps)
        elif s in _BROKEN_FACTORS:
            a, b = _BROKEN_FACTORS[s]
            if elements:
                elements[-1].factor *= a
            pending_factor = b
        elif s in TUPLETS:
            p = int(s[1:])
            q = _TUPLET_Q.get(p, 3 if compound else 2)
            tuplet_left, tuplet_ratio = p, q / p
        elif s in BARS or s in VOLTAS:
            bar_acc.clear()
        elif s.startswith("L:"):
            unit = float(Fraction(s[2:]))
        elif s.startswith("M:"):
            m = re.fullmatch(r"M:(\d+)/(\d+)", s)
            compound = bool(m) and int(m[1]) % 3 == 0 and int(m[1]) > 3
        elif t in _KEY_OF:
            key = _key_accidentals(*_KEY_OF[t])
            bar_acc.clear()
        elif s == BOS:
            unit, key, compound, chord = 0.125, [0] * 7, False, None
            tuplet_left, pending_factor = 0, 1.0
            bar_acc.clear()
    # pass 2: times in whole notes; a tie joins a pitch to the same pitch in the next element
    seconds_per_whole = 4 * 60.0 / qpm
    now = 0.0
    notes: list[list] = []
    tied: dict[int, int] = {}
    for el in elements:
        still_tied: dict[int, int] = {}
        for pitch, own in el.pitches:
            end = now + own * el.factor
            if pitch in tied:
                index = tied[pitch]
                notes[index][1] = max(notes[index][1], end)
            else:
                index = len(notes)
                notes.append([now, end, pitch])
            if el.tie:
                still_tied[pitch] = index
        tied = still_tied
        now += el.length * el.factor
    out = [(a * seconds_per_whole, b * seconds_per_whole, p, velocity)
           for a, b, p in notes if 0 <= p <= 127]
    out.sort(key=lambda n: (n[0], n[2]))
    return out


register("abc", lambda d: _from_description(d))


def _from_description(d: dict) -> AbcCodec:
    version = d.get("vocab_version", VOCAB_VERSION)
    size = d.get("vocab_size", len(_VOCAB))
    if version != VOCAB_VERSION or size != len(_VOCAB):
        raise CodecError(f"abc vocabulary version {version} with {size} tokens; this ensemble has version "
                         f"{VOCAB_VERSION} with {len(_VOCAB)}")
    return AbcCodec(transpose_to=d.get("transpose_to"))

"""`ensemble generate`: continue a prime with a trained model, offline.

The model is primed by feeding the prime's tokens through it (the state then holds
the prime's "style"), and the continuation is sampled token by token with
temperature / top-k / top-p; greedy decoding only with --greedy. What a prime is and
where the output goes depends on the codec: text and ABC primes are the --prime text
itself, or the file it names when one exists (ABC: one tune of it), and the output is
printed; MIDI codecs (`notes`, `performance`) read a .mid prime and write --out FILE.mid.

A `notes` model primed with MIDI answers as the server does (`ensemble.continuation`):
the prime is heard through the style follower, so the continuation keeps its tempo,
pulse and dynamics, and the style settings of `/ensemble/set` steer it (`--set
scale=auto`); `--no-follow` writes the plain codec's continuation instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ensemble import checkpoint
from ensemble.errors import UserError, a_or_an
from ensemble.midifile import read_midi
from ensemble.sampling import SamplingSettings, forbidden_mask, sample

MIDI_SUFFIXES = (".mid", ".midi", ".smf", ".kar")
FILE_SUFFIXES = (".abc", ".txt", *MIDI_SUFFIXES)


def prime_text(codec, prime: str | None, tune: str | None = None) -> str | None:
    """What a text or ABC model is primed with: the text of the file `prime` names when
    such a file exists (for ABC its first tune, or tune X:`tune`), else `prime` itself.

    A path typed as a prime used to be fed as the tune itself (its letters became notes),
    so a prime that looks like a file name but names none is an error too."""
    if prime is None:
        return None
    path = Path(prime)
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix in MIDI_SUFFIXES:
            raise UserError(f"--prime {prime}: {a_or_an(codec.name)} model is primed with "
                            f"{_primed_with(codec)}, not MIDI (MIDI primes are for models of played notes)")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise UserError(f"--prime {prime}: cannot read ({exc.strerror or exc})") from None
        if b"\0" in raw:
            raise UserError(f"--prime {prime}: binary data, not {_primed_with(codec)}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # older ABC collections are Latin-1 (as in `prepare`)
    elif suffix in FILE_SUFFIXES and not any(c.isspace() for c in prime):
        raise UserError(f"--prime {prime}: no such file (a --prime that names no file is used as the "
                        "text itself; this one looks like a file name)")
    else:
        text = prime
    if codec.input_kind == "abc" and (tune is not None or path.is_file()):
        text = _pick_tune(text, prime, tune)
    elif tune is not None:
        raise UserError(f"--tune is for ABC models; this is {a_or_an(codec.name)} model")
    return text


def _primed_with(codec) -> str:
    return "ABC" if codec.input_kind == "abc" else "text"


def _pick_tune(text: str, prime: str, tune: str | None) -> str:
    """Tune X:`tune` of an ABC text (the first when `tune` is None)."""
    from ensemble.corpora import Skip, abc_tunes

    try:
        tunes = abc_tunes(text)
    except Skip as exc:
        raise UserError(f"--prime {prime}: {exc}") from None
    if tune is None:
        return tunes[0][1]
    for number, body in tunes:
        if number == str(tune).strip():
            return body
    numbers = [n for n, _ in tunes]
    shown = ", ".join(numbers[:10]) + (f", ... ({len(numbers)} tunes)" if len(numbers) > 10 else "")
    raise UserError(f"--tune {tune}: no tune X:{tune} in --prime {prime} (it has X: {shown})")


def prime_tokens(codec, prime: str | None, tune: str | None = None) -> list[int]:
    """The prime as tokens; for MIDI codecs `prime` is a path to a MIDI file, for text and
    ABC codecs text or the path of a file that holds it (see `prime_text`)."""
    if not prime:
        return []
    if codec.input_kind == "notes":
        if tune is not None:
            raise UserError(f"--tune is for ABC models; this is {a_or_an(codec.name)} model")
        return list(codec.encode_midi(read_midi(prime, "--prime")))
    prime = prime_text(codec, prime, tune)
    if hasattr(codec, "unknown_in"):  # a vocabulary from its corpus: say what it never saw
        unknown = codec.unknown_in(prime)
        if unknown:
            print(f"ensemble generate: warning: the model never saw {''.join(sorted(unknown))!r}; "
                  "they are fed as the unknown token", file=sys.stderr)
    if hasattr(codec, "prime"):  # abc: a tune's beginning, without the end-of-tune token
        return list(codec.prime(prime))
    return list(codec.encode(prime))


def start_token(codec, rng: np.random.Generator, mask) -> int:
    """Where to begin without a prime: the codec's start token, a newline, or a random token."""
    token = getattr(codec, "start_token", None)
    if token is not None:
        return int(token)
    if codec.input_kind == "text" and "\n" in codec.chars:
        return codec.encode("\n")[0]
    allowed = np.flatnonzero(~mask) if mask is not None else np.arange(codec.vocab_size)
    return int(rng.choice(allowed))


@torch.inference_mode()
def generate(ckpt: checkpoint.Checkpoint, prime: list[int], length: int, settings: SamplingSettings,
             seed: int | None = None, on_token=None) -> list[int]:
    """Feed `prime`, then sample up to `length` tokens. Returns the new tokens (not the prime).

    Codecs with a `stop_token` (abc: the end of a tune) stop there: training never showed
    the model what follows it."""
    model, codec = ckpt.model, ckpt.codec
    rng = np.random.default_rng(seed)
    mask = forbidden_mask(codec.vocab_size, getattr(codec, "forbidden", None))
    if not prime:
        prime = [start_token(codec, rng, mask)]
    logits, state = model(torch.tensor([prime]), None)
    logits = logits[0, -1]
    stop = getattr(codec, "stop_token", None)
    out = []
    for _ in range(length):
        token = sample(logits.numpy(), settings, rng, mask)
        out.append(token)
        if on_token is not None:
            on_token(token)
        if token == stop:
            break
        logits, state = model.step(torch.tensor([token]), state)
        logits = logits[0]
    return out


def style_tables(codec):
    """The style follower's tables for a codec the server follows players with, else None."""
    from ensemble.server.events import NotServable, adapter_for

    try:
        adapter = adapter_for(codec)
    except NotServable:
        return None
    return adapter.style_tables() if hasattr(adapter, "style_tables") else None


def follow_prime(ckpt, tables, args, settings: SamplingSettings):
    """The MIDI prime played to the model as a performer plays it, and the answer placed as
    the server places it: (MIDI file of the continuation, events in it)."""
    from ensemble.codecs.midi_notes import notes_from_midi
    from ensemble.codecs.notes import NoteEvent, from_notes
    from ensemble.continuation import respond
    from ensemble.server.style import SETTINGS, Style

    values = {}
    for item in args.set or []:
        name, _, value = item.partition("=")
        if name not in SETTINGS:
            raise UserError(f"--set {item}: unknown style setting; known: {', '.join(SETTINGS)}")
        values[name] = value
    try:
        style = Style(tables, values)
    except ValueError as exc:
        raise UserError(f"--set: {exc}") from None
    events, now = [], 0.0
    for e in from_notes(notes_from_midi(read_midi(args.prime, "--prime"))):
        now += e.dt
        events.append((now, e.pitch, e.velocity))
    if not events:
        raise UserError(f"--prime {args.prime}: no notes in it")
    answer = respond(ckpt.model, [style], [events], args.length, settings, np.random.default_rng(args.seed),
                     threshold=0.0)[0]
    out, previous = [], events[-1][0]
    for when, pitch, velocity in answer:
        out.append(NoteEvent(when - previous, pitch, velocity))
        previous = when
    return ckpt.codec.to_midi(out), len(out)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="sample a continuation from a trained model",
        description="Prime a trained model and sample a continuation. Text and ABC models print to "
                    "stdout; MIDI models (notes, performance codecs) write --out FILE.mid.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a model folder (or a training run folder: its best/ model)")
    p.add_argument("--length", type=int, default=500, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="> 0; lower is safer, higher is wilder")
    p.add_argument("--top-k", type=int, default=0, help="sample only among the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: smallest set of tokens with this much probability")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token (loops; for tests and curiosity)")
    p.add_argument("--prime", help="what to start from. Text and ABC models: if PRIME names an existing file, "
                   "the file's text (ABC: its first tune, or --tune); otherwise PRIME itself is the text. "
                   "MIDI models: a .mid file")
    p.add_argument("--tune", metavar="N", help="ABC models: prime with tune X:N of the --prime file or text")
    p.add_argument("--seed", type=int, help="random seed; the same seed gives the same output")
    p.add_argument("--out", help="write the output to this file (.mid for MIDI models) instead of stdout")
    p.add_argument("--no-follow", action="store_true",
                   help="notes models: continue a MIDI prime with the plain codec's times and velocities, "
                        "not the prime's tempo, pulse and dynamics (as the server answers)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="notes models with a MIDI prime: a style setting, as /ensemble/set takes it "
                        "(scale=auto, tonal=3, low=48, rest=0.2 ...)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.length < 0:
        raise UserError("--length must be >= 0")
    try:
        settings = SamplingSettings(args.temperature, args.top_k, args.top_p, args.greedy)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    ckpt = checkpoint.load(args.model)
    codec = ckpt.codec
    torch.set_num_threads(1)
    if args.set and codec.input_kind != "notes":
        raise UserError(f"--set steers the answer to a MIDI prime; this is {a_or_an(codec.name)} model")
    prime = prime_tokens(codec, args.prime, args.tune)
    if codec.input_kind == "notes":
        if not args.out:
            raise UserError(f"{a_or_an(codec.name)} model makes MIDI: give --out FILE.mid")
        tables = style_tables(codec)
        if args.prime and tables is not None and not args.no_follow:
            midi, count = follow_prime(ckpt, tables, args, settings)
            how = "following the prime's tempo, pulse and dynamics"
        else:
            if args.set:
                raise UserError("--set needs a --prime to follow (and no --no-follow)")
            tokens = generate(ckpt, prime, args.length, settings, args.seed)
            midi, count, how = codec.decode_midi(tokens), len(tokens), "plain codec"
        midi.save(args.out)
        print(f"wrote {args.out}: {count} events, {midi.length:.1f} s ({how})", file=sys.stderr)
        return 0
    if codec.input_kind == "text" and not args.out:
        # stream characters as they come, like char-rnn
        sys.stdout.write(prime_text(codec, args.prime) or "")
        generate(ckpt, prime, args.length, settings, args.seed,
                 on_token=lambda t: (sys.stdout.write(codec.decode([t])), sys.stdout.flush()))
        sys.stdout.write("\n")
        return 0
    tokens = generate(ckpt, prime, args.length, settings, args.seed)
    decoded = codec.decode(prime + tokens) if codec.input_kind == "abc" else codec.decode(tokens)
    text = decoded if isinstance(decoded, str) else "\n".join(str(e) for e in decoded)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0

"""`ensemble prepare`: real material -> a prepared corpus folder that `ensemble train` reads.

    ensemble prepare --codec abc --input music21:folk --out data/folk-abc
    ensemble prepare --codec notes --input music21:folk --transpose C --out data/folk-notes
    ensemble prepare --codec performance --input midi/ music21:chorales --out data/piano
    ensemble prepare --codec text --input shakespeare.txt --out data/shakespeare
    ensemble prepare --codec touch --input logs/ --out data/touch

The folder holds ``tokens.npy`` and ``manifest.json`` (`ensemble.data.write_prepared`):
the codec description, every piece with its source and split, the counts, and every
skipped file or tune with the reason. The split is by piece and reproducible from the
seed. A file that cannot be read is named with the reason and skipped; the rest is
prepared. If nothing at all can be prepared, one error line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ensemble import codecs, corpora
from ensemble.data import DataError, write_prepared

DESCRIPTION = """\
Turn real material into a prepared corpus folder (tokens.npy + manifest.json) for
`ensemble train`. The split into train and validation is by whole piece, from --seed.

inputs (files, folders searched recursively, or music21:NAME):
  music21:folk           the ~12,900 ABC folk tunes that ship with music21 (pip install
                         'ensemble[corpora]'); one collection: music21:oneills1850, essen,
                         ryans, nottingham, airds, misc; music21:chorales: 371 Bach chorales
  *.abc                  one piece per tune (split at X: lines)
  *.mid, *.midi          one piece per file, all tracks merged
  *.csv                  touch log time,performer,x,y (one piece per performer), or
                         gesture log time,performer,gesture (one piece per file)
  *.mxl, *.xml, *.krn    scores, read with music21 (all parts, as notes)
  other files            text (in folders: *.txt)

codecs and what they read:
  abc                    ABC tunes, folk-rnn tokens (fixed vocabulary)
  text                   text files and ABC tunes as text (vocabulary from the inputs)
  notes, performance     MIDI files, scores, and ABC tunes played at --tempo
  touch / gestures       touch logs / gesture logs

A file or tune that cannot be used is named with the reason and skipped, the rest is
prepared; if nothing at all can be, one error line and exit status 1."""

MAX_SKIP_LINES = 200  # more skipped files than this: the rest are counted (all are in the manifest)


def build_codec(spec: str, transpose: str | None = None, chars: str | None = None):
    """--codec NAME (defaults) or a JSON description -> a codec; text needs `chars`."""
    spec = spec.strip()
    if spec.startswith("{"):
        _codec_name(spec)
        description = json.loads(spec)
        if transpose and description.get("name") == "abc":
            description["transpose_to"] = transpose
        return codecs.load(description)
    if spec == "abc":
        from ensemble.codecs.abc import AbcCodec

        return AbcCodec(transpose_to=transpose)
    if spec == "text":
        from ensemble.codecs.text import TextCodec

        return TextCodec(chars or "")
    if spec not in codecs.names():
        raise DataError(f"unknown codec {spec!r}; known: {', '.join(codecs.names())}")
    return codecs.load({"name": spec})


def _codec_name(spec: str) -> str:
    spec = spec.strip()
    if not spec.startswith("{"):
        return spec
    try:
        description = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise DataError(f"--codec: not a JSON codec description ({exc})") from None
    if not isinstance(description, dict) or not isinstance(description.get("name"), str):
        raise DataError("--codec: a JSON codec description needs a \"name\"")
    return description["name"]


def chars_from(path: str) -> str:
    """The text vocabulary of a text file, a prepared text corpus or a text model folder."""
    p = Path(path)
    for candidate in (p / "manifest.json", p / "config.json", p / "best" / "config.json"):
        if candidate.is_file():
            try:
                description = json.loads(candidate.read_text()).get("codec", {})
            except (OSError, json.JSONDecodeError, AttributeError) as exc:
                raise DataError(f"--chars-from {candidate}: unreadable ({exc})") from None
            if not isinstance(description, dict) or description.get("name") != "text":
                raise DataError(f"--chars-from {candidate}: not a text codec ({description.get('name')!r})")
            return description.get("chars", "")
    if p.is_dir():
        raise DataError(f"--chars-from {path}: no manifest.json or config.json in that folder")
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"--chars-from {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"--chars-from {path}: not UTF-8 text ({exc.reason})") from None


def prepare(codec_spec: str, inputs: list[str], out, *, val_fraction: float = 0.1, seed: int = 0,
            transpose: str | None = None, limit: int | None = None, chars_from_path: str | None = None,
            piece_chars: int = 2000, qpm: float = corpora.DEFAULT_QPM, strict: bool = False,
            workers: int = 0, progress: bool = False) -> tuple[dict, corpora.Report]:
    """Prepare a corpus folder; returns (manifest, report). Raises DataError if nothing could be."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    if qpm <= 0:
        raise DataError(f"--tempo must be > 0, got {qpm}")
    if transpose is not None:
        from ensemble.codecs.abc import AbcCodec

        AbcCodec(transpose_to=transpose)  # a clear error for a bad tonic, before any reading
    options = corpora.Options(transpose=transpose, qpm=qpm, strict=strict, piece_chars=piece_chars)
    report = corpora.Report()
    sources = corpora.expand_inputs(inputs, report)
    name = _codec_name(codec_spec)

    if name == "text":  # the one codec whose vocabulary comes from the corpus: read first, then build
        from ensemble.codecs.text import TextCodec

        items = list(corpora.read_items(sources, TextCodec, report, options))
        chars = chars_from(chars_from_path) if chars_from_path else "".join(
            sorted(corpora.text_vocabulary(items, options, report)))
        codec = build_codec(codec_spec, transpose, chars)
        pieces = corpora.convert_items(codec, items, options, report, limit)
        if chars_from_path:
            unknown = set()
            for item in items:
                unknown |= codec.unknown_in(item.data) if isinstance(item.data, str) else set()
            if unknown:
                report.dropped["distinct characters outside --chars-from, written as the unknown token"] = len(unknown)
    else:
        if chars_from_path:
            raise DataError("--chars-from is for the text codec")
        codec = build_codec(codec_spec, transpose)
        if workers <= 0:
            workers = min(os.cpu_count() or 1, 8) if len(sources) >= 16 else 1
        pieces = corpora.pieces_from_sources(codec, sources, options, report, limit=limit, workers=workers,
                                             progress=progress)
    pieces = [p for p in pieces if len(p.tokens) > 0]
    if not pieces:
        first = f"; {report.skipped[0][0]}: {report.skipped[0][1]}" if report.skipped else ""
        raise DataError(f"nothing could be prepared from {', '.join(inputs)} for the {codec.name} codec "
                        f"({len(report.skipped)} skipped{first})")
    extra = {
        "sources": list(inputs),
        "description": f"{codec.name} tokens of {', '.join(inputs)}",
        "prepare": {"transpose": transpose, "limit": limit, "qpm": qpm, "strict": strict,
                    "piece_chars": piece_chars if name == "text" else None},
        "dropped": dict(sorted(report.dropped.items())),
    }
    manifest = write_prepared(out, codec, pieces, skipped=report.skipped, val_fraction=val_fraction, seed=seed,
                              extra=extra)
    return manifest, report


def summary_lines(manifest: dict, report: corpora.Report, out, seconds: float) -> list[str]:
    c = manifest["counts"]
    lines = [
        f"prepared {out} with the {manifest['codec']['name']} codec (vocabulary {manifest['vocab_size']} tokens)",
        f"  pieces: {c['pieces']:,} ({c['train_pieces']:,} train, {c['val_pieces']:,} val, seed {manifest['seed']})",
        f"  tokens: {c['tokens']:,} ({c['train_tokens']:,} train, {c['val_tokens']:,} val)",
        f"  files read: {report.files:,}" + (f"; {report.ignored:,} other files ignored (extensions no reader knows)" if report.ignored else ""),
    ]
    if report.dropped:
        total = sum(report.dropped.values())
        kinds = ", ".join(f"{k} {v:,}" for k, v in report.dropped.most_common())
        lines.append(f"  dropped symbols the codec cannot hold: {total:,} ({kinds})")
    lines.append(f"  skipped: {len(report.skipped):,}")
    for source, reason in report.skipped[:MAX_SKIP_LINES]:
        lines.append(f"    {source}: {reason}")
    if len(report.skipped) > MAX_SKIP_LINES:
        lines.append(f"    ... and {len(report.skipped) - MAX_SKIP_LINES:,} more (all listed in manifest.json)")
    if c["val_pieces"] == 0:
        lines.append("  note: no validation pieces (need 2 or more pieces and --val-fraction > 0)")
    lines.append(f"  took {seconds:.1f} s")
    return lines


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    progress = not args.no_progress and sys.stderr.isatty()
    manifest, report = prepare(args.codec, args.input, args.out, val_fraction=args.val_fraction, seed=args.seed,
                               transpose=args.transpose, limit=args.limit, chars_from_path=args.chars_from,
                               piece_chars=args.piece_chars, qpm=args.tempo, strict=args.strict,
                               workers=args.workers, progress=progress)
    print("\n".join(summary_lines(manifest, report, args.out, time.perf_counter() - t0)))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="turn ABC tunes, MIDI files, texts or touch logs into a prepared corpus for `ensemble train`",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "\n".join(line for line in __doc__.splitlines() if line.startswith("    ensemble")),
    )
    p.add_argument("--codec", required=True, metavar="CODEC",
                   help=f"the codec: {', '.join(codecs.names())} (with its defaults), or a JSON codec "
                        "description such as '{\"name\": \"notes\", \"time_bins\": 16}'")
    p.add_argument("--input", "-i", required=True, nargs="+", action="extend", metavar="PATH",
                   help="files, folders (searched recursively) or music21:NAME (folk, chorales, oneills1850, "
                        "essen, ryans, nottingham, airds, misc, or a path in music21's corpus); repeatable")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="the folder to write (created if missing)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of pieces held out for validation, whole pieces only (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default: 0)")
    p.add_argument("--transpose", metavar="TONIC",
                   help="move ABC tunes to this tonic keeping their mode (C, D, Bb, F# ...), or 'relative-C' "
                        "for the key signature without sharps or flats; for the abc codec it becomes a codec "
                        "option, so live input is transposed the same way (default: keep the key)")
    p.add_argument("--limit", type=int, metavar="N", help="stop after N pieces (in input order)")
    p.add_argument("--chars-from", metavar="PATH",
                   help="text codec: take the vocabulary from this text file, prepared text corpus or text "
                        "model folder instead of from the inputs (characters it lacks become the unknown token)")
    p.add_argument("--piece-chars", type=int, default=2000, metavar="N",
                   help="text codec: cut text files into pieces of about N characters at line ends (default: 2000)")
    p.add_argument("--tempo", type=float, default=corpora.DEFAULT_QPM, metavar="QPM",
                   help="quarter notes per minute when ABC tunes and scores become notes (default: 120)")
    p.add_argument("--strict", action="store_true",
                   help="abc: skip a tune with any symbol the vocabulary lacks, instead of dropping the symbol")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes that read files (default 0: one per CPU, up to 8, for 16 files or more)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    p.set_defaults(func=run)

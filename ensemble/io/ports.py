"""`ensemble ports`: the MIDI ports this machine has, as `ensemble serve --midi-in/--midi-out` sees them.

    ensemble ports                 # rtmidi's API order (ALSA, then JACK on Linux), or MIDO_BACKEND
    ensemble ports --midi-api jack

Prints the API in use, then the inputs (what --midi-in can name: ports that send to
us) and the outputs (what --midi-out can name). Without any MIDI system (no ALSA
device, JACK not running) it says so and exits 1.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ports", help="list MIDI inputs and outputs",
        description="List the MIDI input and output ports, as `ensemble serve --midi-in NAME --midi-out NAME` "
                    "matches them (a NAME may be any part of a port's name).",
    )
    p.add_argument("--midi-api", help="rtmidi API: alsa, jack, coremidi, winmm (default: MIDO_BACKEND, else "
                                      "the first that works)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ensemble.io.midi import MidiUnavailable, RtMidiBackend

    try:
        backend = RtMidiBackend(args.midi_api)
    except MidiUnavailable as exc:
        print(f"ensemble ports: no MIDI system available ({exc})", file=sys.stderr)
        print("ensemble ports: on Linux without a sound card, start JACK (e.g. `jackd -d dummy`) and "
              "use --midi-api jack", file=sys.stderr)
        return 1
    try:
        inputs, outputs = backend.input_names(), backend.output_names()
    finally:
        backend.close()
    print(f"MIDI API: {backend.api}")
    for title, names, option in (("inputs", inputs, "--midi-in"), ("outputs", outputs, "--midi-out")):
        print(f"{title} ({option}):")
        for name in names:
            print(f"  {name}")
        if not names:
            print("  (none)")
    return 0

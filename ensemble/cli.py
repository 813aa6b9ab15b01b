"""The `ensemble` command: serve | train | generate | prepare | bench | plot | ports.

Each subcommand lives in its own module, which provides ``add_parser(subparsers)``
that registers the subcommand and sets ``func`` (called with the parsed arguments,
returns an exit code). Errors that a user can fix (a bad file, a missing model) are
raised as `ensemble.errors.UserError` and printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ensemble.errors import UserError

# subcommand modules, in the order `ensemble --help` lists them
COMMAND_MODULES = [
    "ensemble.server.cli",    # serve
    "ensemble.train",         # train
    "ensemble.generate",      # generate
    "ensemble.prepare",       # prepare
    "ensemble.bench",         # bench
    "ensemble.plot",          # plot
    "ensemble.eval_style",    # eval style
    "ensemble.io.ports",      # ports
    "ensemble.classifier",    # classify
    "ensemble.touch_synth",   # synth-touches
]
# the command each module registers: `ensemble serve ...` imports only the server's
# module (train and generate import torch, most of a second that serve never needs)
COMMANDS = dict(zip(["serve", "train", "generate", "prepare", "bench", "plot", "eval", "ports"], COMMAND_MODULES))


def _command(argv: list[str]) -> str | None:
    """The subcommand named on a command line (skipping the global --log-level), if any."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--log-level":
            i += 2
        elif arg.startswith("--log-level="):
            i += 1
        else:
            return arg if arg in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ensemble",
        description="A real-time neural music server for live ensembles, and the trainer for its models.",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="how much to log on stderr (default: info, or the server config's log_level)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [COMMANDS[only]] if only else COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_command(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=(args.log_level or "info").upper(), format="ensemble: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (UserError, OSError) as exc:  # a bad file, folder or port: one line, no traceback
        print(f"ensemble {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ensemble {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""Reading a Standard MIDI File a user gave us, with a reason when it cannot be read.

mido raises many kinds of exception on a damaged file, and some carry no message at
all (a file cut short raises a bare EOFError), which made errors like
"not a readable MIDI file ()". Every reader of user MIDI files (generate's prime,
prepare, plot) goes through here so the reason is always non-empty and useful.
"""

from __future__ import annotations

import os

from ensemble.errors import UserError

# what mido raises on a damaged or foreign file (anything else is a bug)
MIDI_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError)


def unreadable_reason(path, exc: BaseException) -> str:
    """One short line saying why `path` could not be read as MIDI; never empty."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a folder"
    if isinstance(exc, EOFError):
        try:
            size = os.path.getsize(path)
        except OSError:
            return "the file is cut short"
        if size < 14:
            return f"the file is cut short at byte {size}, inside the 14-byte MThd header"
        return f"the file is cut short at byte {size}, inside a track"
    text = str(exc).splitlines()[0].strip() if str(exc).strip() else ""
    if isinstance(exc, OSError) and "MThd" in text:
        return "bad header: the file does not start with MThd, so it is not a Standard MIDI File"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_midi(path, what: str = ""):
    """A `mido.MidiFile`, or a UserError "WHAT PATH: not a readable MIDI file (REASON)"."""
    import mido

    try:
        return mido.MidiFile(str(path))
    except MIDI_READ_ERRORS as exc:
        prefix = f"{what} {path}" if what else f"{path}"
        raise UserError(f"{prefix}: not a readable MIDI file ({unreadable_reason(path, exc)})") from None

"""Talking to the MIDI system: rtmidi APIs probed in turn, ports listed, opened, matched.

Probing is where a machine without MIDI shows it: ALSA with no /dev/snd/seq, JACK not
running. That is one `MidiUnavailable` saying what is missing and how to get it; the
C libraries' own complaints on file descriptor 2 are captured meanwhile and logged at
debug level only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

import mido

log = logging.getLogger("ensemble.midi")

CLIENT_NAME = "ensemble"
# --midi-api words -> rtmidi API names as mido spells them
API_ALIASES = {
    "alsa": "LINUX_ALSA", "jack": "UNIX_JACK", "coremidi": "MACOSX_CORE", "macos": "MACOSX_CORE",
    "core": "MACOSX_CORE", "winmm": "WINDOWS_MM", "windows": "WINDOWS_MM", "mm": "WINDOWS_MM",
    "dummy": "RTMIDI_DUMMY", "web": "WEB_MIDI",
}
RTMIDI = "mido.backends.rtmidi"
class MidiUnavailable(OSError):
    """No MIDI system to talk to (no ALSA device, JACK not running, API not compiled in)."""


# what each rtmidi API needs, said the way a user can act on it
MISSING = {
    "LINUX_ALSA": "no ALSA sequencer (/dev/snd/seq)",
    "UNIX_JACK": "no JACK server running",
}
HOW_TO_GET_MIDI = {
    "linux": "start JACK (without a sound card: `jackd -d dummy &`) and give --midi-api jack",
    "darwin": "check that CoreMIDI is available to this process",
    "win32": "check that a Windows MIDI driver is installed",
}


def how_to_get_midi() -> str:
    return HOW_TO_GET_MIDI.get(sys.platform, "install and start a MIDI system that python-rtmidi supports")


@contextlib.contextmanager
def c_stderr_captured():
    """Capture what C libraries write straight to file descriptor 2 (ALSA's
    "ALSA lib seq_hw.c:...", JACK's "Cannot connect to server socket ...") while the
    block runs; yields a list that holds those lines afterwards. Python's own
    sys.stderr is flushed first, so nothing of ours is lost or reordered."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 to redirect (embedded, closed): nothing to silence
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += [line for line in sink.read().decode(errors="replace").splitlines() if line.strip()]


def api_name(api: str) -> str:
    """A --midi-api word (jack, alsa, ...) or an rtmidi API name -> the name mido uses."""
    return API_ALIASES.get(api.lower(), api.upper())


class RtMidiBackend:
    """mido's rtmidi backend for one API, with port lists read cheaply.

    mido's own `get_input_names` opens and closes a client per call (about 170 ms with
    JACK); the port lists here are read from two rtmidi objects kept open (~50 us), so
    they can be polled. Raises `MidiUnavailable` when the API cannot start.
    """

    def __init__(self, spec: str | None = None):
        import rtmidi

        if spec and "." in spec:  # a mido backend name, maybe with /API
            module, _, api = spec.partition("/")
        elif spec:
            module, api = RTMIDI, api_name(spec)
        else:
            env = mido.Backend()  # honours MIDO_BACKEND
            module, api = env.name, env.api
        self.module = module
        self.backend = mido.Backend(module, api=api or None)
        self._scanners = None
        if module != RTMIDI:  # another mido backend: its own listing
            try:
                self.backend.load()
                self.backend.get_input_names()
            except Exception as exc:
                raise MidiUnavailable(f"{module}: {exc}") from None
            self.api = module
            self._scanners = None
            return
        compiled = [rtmidi.get_api_name(a) for a in rtmidi.get_compiled_api()]
        by_name = {n: getattr(rtmidi, f"API_{n}") for n in (a[4:] for a in dir(rtmidi) if a.startswith("API_"))}
        if api:
            if api not in by_name:
                raise MidiUnavailable(f"unknown MIDI API {spec!r} (known: {', '.join(sorted(API_ALIASES))})")
            if by_name[api] not in rtmidi.get_compiled_api():
                raise MidiUnavailable(f"this python-rtmidi has no {api} support (it has: {', '.join(compiled)})")
            candidates = [api]
        else:  # rtmidi's order (ALSA before JACK on Linux): the first that starts
            names = {v: n for n, v in by_name.items()}
            candidates = [names[a] for a in rtmidi.get_compiled_api() if names.get(a) not in (None, "RTMIDI_DUMMY")]
        errors = []
        with c_stderr_captured() as noise:  # ALSA and JACK complain on fd 2 as they fail
            for candidate in candidates:
                rtapi = by_name[candidate]
                scan_in = scan_out = None
                try:
                    scan_in = rtmidi.MidiIn(rtapi=rtapi, name=f"{CLIENT_NAME}-ports")
                    scan_out = rtmidi.MidiOut(rtapi=rtapi, name=f"{CLIENT_NAME}-ports")
                    scan_in.get_ports()
                    scan_out.get_ports()
                except (rtmidi.RtMidiError, OSError, RuntimeError) as exc:
                    errors.append(MISSING.get(candidate, f"{candidate}: {exc}"))
                    del scan_in, scan_out  # JACK's destructors print too: let them, while captured
                    continue
                current = scan_in.get_current_api()
                self.api = next(n for n, v in by_name.items() if v == current and n != "UNSPECIFIED")
                self.backend = mido.Backend(RTMIDI, api=self.api)
                self._scanners = (scan_in, scan_out)
                break
        for line in noise:
            log.debug("MIDI library: %s", line)
        if self._scanners is None:
            raise MidiUnavailable(" and ".join(errors))

    def input_names(self) -> list[str]:
        if self._scanners is None:
            return self.backend.get_input_names()
        return list(self._scanners[0].get_ports())

    def output_names(self) -> list[str]:
        if self._scanners is None:
            return self.backend.get_output_names()
        return list(self._scanners[1].get_ports())

    def open_input(self, name: str, callback, virtual: bool = False):
        if virtual:
            return self.backend.open_input(name, virtual=True, callback=callback, client_name=CLIENT_NAME)
        return self.backend.open_input(name, callback=callback)

    def open_output(self, name: str, virtual: bool = False):
        if virtual:
            return self.backend.open_output(name, virtual=True, client_name=CLIENT_NAME)
        return self.backend.open_output(name)

    def close(self) -> None:
        for scanner in self._scanners or ():
            scanner.delete()
        self._scanners = None


def match_port(pattern: str, names: list[str], exclude: tuple[str, ...] = ()) -> str | None:
    """The port a configured name means: the exact name, else the first containing it (any case)."""
    names = [n for n in names if not any(x in n for x in exclude)]
    if pattern in names:
        return pattern
    low = pattern.lower()
    return next((n for n in names if low in n.lower()), None)


# ---------------------------------------------------------------------------- output

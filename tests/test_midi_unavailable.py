"""MIDI asked for on a machine without a MIDI system: one line that says what is missing.

The server used to print six lines of ALSA/JACK library noise, then "MIDI is not
available ... serving OSC only", and carry on although the user had asked for MIDI.
These run the real server process against real JACK client code: JACK_DEFAULT_SERVER
names a server that does not exist and JACK_NO_START_SERVER keeps libjack from
starting one, so the probe fails exactly as it does with no JACK running.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import rtmidi

from conftest import ENSEMBLE
from ensemble.errors import UserError
from ensemble.io.midi import c_stderr_captured, parse_settings
from oscpeer import start_server_process

pytestmark = pytest.mark.skipif(rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api(),
                                reason="this python-rtmidi has no JACK support")

SERVE = ["--midi-in", "keys", "--midi-api", "jack", "--port", "0", "--no-record", "--no-snapshot"]
LIBRARY_NOISE = ("Cannot connect", "jack server", "JackShm", "ALSA lib")


@pytest.fixture
def no_jack(monkeypatch):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"ensemble-absent-{os.getpid()}")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")


def test_midi_asked_for_but_missing_is_one_line_and_exit_1(notes_model, no_jack):
    r = subprocess.run(ENSEMBLE + ["serve", "--model", str(notes_model), *SERVE], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "ready on" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ensemble serve: error: MIDI was asked for but is not available "
                               "(no JACK server running): ")
    assert "jackd -d dummy" in lines[0] and "--midi-optional" in lines[0] and "optional = true" in lines[0]


def test_midi_optional_serves_osc_with_one_line_and_no_library_noise(notes_model, no_jack):
    proc, port = start_server_process(["--model", str(notes_model), *SERVE, "--midi-optional"])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "MIDI is not available (no JACK server running): serving OSC only" in err
    assert not [line for line in err.splitlines() if line.startswith(LIBRARY_NOISE)], err


def test_optional_in_toml_must_be_a_boolean():
    assert parse_settings({"inputs": ["keys"], "optional": True}).optional is True
    assert parse_settings({"inputs": ["keys"]}).optional is False
    with pytest.raises(UserError, match="optional must be true or false"):
        parse_settings({"optional": "yes"})


def test_c_stderr_is_captured_and_given_back():
    # a child process writes to the fd 2 it inherits, as a C library would
    with c_stderr_captured() as noise:
        subprocess.run(["sh", "-c", "echo 'ALSA lib: no device' >&2"], check=True)
    assert noise == ["ALSA lib: no device"]

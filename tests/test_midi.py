"""The MIDI layer in-process: mido's own port objects, a real conductor and a real trained model.

The "player" plays from another thread, as rtmidi's callback thread does; a "synth" is
a mido output port that hands what it gets to the test (and, when asked, echoes it back
into the input, as some synths and DAWs do). Nothing here sleeps for time: tests await
the messages they expect, and yield to the loop until a counter moves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

import mido
import pytest
import torch

from ensemble import checkpoint
from ensemble.codecs.touch import TouchCodec
from ensemble.errors import UserError
from ensemble.io.midi import MidiLayer, MidiOutput, parse_settings
from ensemble.io.osc import OscServer
from ensemble.model import TokenRNN
from ensemble.server.conductor import Conductor
from ensemble.server.config import ServerConfig
from oscpeer import OscPeer, ServerThread

TIMEOUT = 5.0


# ----------------------------------------------------------------------------- mido ports


class PlayerPort(mido.ports.BaseInput):
    """An input port: messages "played" on it reach the callback that the layer gave."""

    def _open(self, callback=None, **kwargs):
        self.callback = callback

    def play(self, *messages):
        for msg in messages:
            self.callback(msg)


class SynthPort(mido.ports.BaseOutput):
    """An output port: everything sent is kept, handed to `heard`, and echoed if `echo` is set."""

    def _open(self, heard=None, **kwargs):
        self.heard = heard
        self.sent: list[mido.Message] = []
        self.echo: PlayerPort | None = None

    def _send(self, msg):
        self.sent.append(msg)
        self.heard(self.name, msg)
        if self.echo is not None and not self.echo.closed:
            self.echo.play(msg)


class Ports:
    """A MIDI system in-process: which ports exist, and the ports the layer opened."""

    def __init__(self, inputs, outputs, loop):
        self.present_in, self.present_out = list(inputs), list(outputs)
        self.opened: dict[str, mido.ports.BasePort] = {}
        self.api = "in-process"
        self.heard = asyncio.Queue()
        self.loop = loop

    def input_names(self):
        return list(self.present_in)

    def output_names(self):
        return list(self.present_out)

    def open_input(self, name, callback, virtual=False):
        port = self.opened[name] = PlayerPort(name, callback=callback)
        return port

    def open_output(self, name, virtual=False):
        port = self.opened[name] = SynthPort(name, heard=self._heard)
        return port

    def _heard(self, name, msg):  # on the loop thread: the conductor sends from there
        self.heard.put_nowait((name, msg))

    async def play(self, name, *messages):
        """Play from another thread (as rtmidi does), then let the loop drain it."""
        await asyncio.to_thread(self.opened[name].play, *messages)

    async def next(self, timeout=TIMEOUT):
        return await asyncio.wait_for(self.heard.get(), timeout)

    def pending(self):
        out = []
        while not self.heard.empty():
            out.append(self.heard.get_nowait())
        return out

    def close(self):
        pass


def on(note, velocity=100, channel=0):
    return mido.Message("note_on", note=note, velocity=velocity, channel=channel)


def off(note, channel=0, zero_velocity_on=False):
    if zero_velocity_on:
        return mido.Message("note_on", note=note, velocity=0, channel=channel)
    return mido.Message("note_off", note=note, channel=channel)


def cc(control, value, channel=0):
    return mido.Message("control_change", control=control, value=value, channel=channel)


async def until(condition, timeout=TIMEOUT):
    """Yield to the loop until `condition()` holds (it is met by callbacks already queued)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0)


def run(notes_model, test, midi: dict, inputs=("keys",), outputs=("synth",), absent=(), **server):
    """Run `test(layer, ports, conductor)` on a fresh loop with a real conductor and MIDI layer."""
    torch.set_num_threads(1)
    values = dict(model=str(notes_model), record="", snapshot="", seed=7, default_mode="duet", max_note=60.0)
    values.update(server)

    async def main():
        loop = asyncio.get_running_loop()
        conductor = Conductor(checkpoint.load(notes_model), ServerConfig(**values), loop)
        ports = Ports([p for p in inputs if p not in absent], [p for p in outputs if p not in absent], loop)
        midi_config = {"inputs": list(inputs), "outputs": list(outputs), **midi}
        layer = MidiLayer(conductor, midi_config, backend=ports)
        assert layer.start()
        try:
            await test(layer, ports, conductor)
        finally:
            conductor.shutdown()
            layer.close()

    asyncio.run(main())


def check_no_hanging_notes(messages):
    """Every note-on is followed by a note-off of its (channel, note), or an All Notes Off on its channel."""
    sounding: dict[tuple, int] = {}
    for msg in messages:
        if msg.type == "note_on" and msg.velocity > 0:
            sounding[(msg.channel, msg.note)] = sounding.get((msg.channel, msg.note), 0) + 1
        elif msg.type in ("note_on", "note_off"):
            sounding.pop((msg.channel, msg.note), None)
        elif msg.type == "control_change" and msg.control == 123:
            sounding = {k: v for k, v in sounding.items() if k[0] != msg.channel}
    assert not sounding, f"hanging notes: {sounding}"


# ----------------------------------------------------------------------------- mapping


def test_each_channel_of_each_port_is_a_performer_answering_on_its_channel(notes_model):
    midi = {"performers": {"2": "bob", "keys:3": {"id": "carol", "mode": "respond", "output": "synth2",
                                                  "channel": 5}}}

    async def test(layer, ports, conductor):
        await ports.play("keys", on(60, channel=0))
        name, msg = await ports.next()
        assert (name, msg.type, msg.channel) == ("synth", "note_on", 0)  # duet: answered at once
        assert 36 <= msg.note <= 96 and msg.velocity > 0
        await ports.play("pads", on(62, channel=0), on(64, channel=1))
        answers = [await ports.next(), await ports.next()]
        assert sorted((n, m.channel) for n, m in answers) == [("synth", 0), ("synth", 1)]
        await ports.play("keys", on(67, channel=2))
        await until(lambda: "carol" in conductor.performers)
        assert set(conductor.performers) == {"midi:keys:1", "midi:pads:1", "bob", "carol"}
        assert conductor.performers["carol"].mode == "respond"  # configured, not the server's duet
        assert conductor.performers["carol"].output.name == "midi:synth2:5"
        assert conductor.performers["bob"].output.name == "midi:synth:2"
        # both performers on channel 1 of different ports each keep their own state
        assert conductor.performers["midi:keys:1"].slot != conductor.performers["midi:pads:1"].slot
        assert conductor.performers["midi:pads:1"].events_in == 1
        # the note-off ends the answer to it, on the same port and channel
        await ports.play("keys", off(60, channel=0, zero_velocity_on=True))
        name, msg = await ports.next()
        assert (name, msg.type, msg.channel) == ("synth", "note_off", 0)

    run(notes_model, test, midi, inputs=("keys", "pads"), outputs=("synth", "synth2"))


def test_midi_performers_start_in_respond_mode_and_answer_after_silence(notes_model):
    async def test(layer, ports, conductor):
        await ports.play("keys", on(60, channel=3), off(60, channel=3))
        await until(lambda: "midi:keys:4" in conductor.performers)
        p = conductor.performers["midi:keys:4"]
        assert p.mode == "respond"  # the server's default mode
        # after `threshold` seconds of silence the machine plays on, on the player's channel
        name, first = await ports.next()
        assert name == "synth" and first.type == "note_on" and first.channel == 3
        await ports.play("keys", on(67, channel=3))  # the player plays again: the machine stops
        await until(lambda: p.events_in == 3)
        assert not p.generating and conductor.held.sounding(p.id) == []
        check_no_hanging_notes([first] + [m for _, m in ports.pending()])

    # nothing echoes here: with echo suppression on, a machine note equal to the player's
    # next one within the window would (rightly) be taken for an echo
    run(notes_model, test, {"feedback_ms": 0}, default_mode="respond", threshold=0.05, max_note=0.2)


def test_osc_steers_midi_performers_in_the_same_conductor(notes_model):
    """A MIDI performer's mode is changed by /ensemble/mode over real UDP and shows in /ensemble/status."""

    async def test(layer, ports, conductor):
        osc = OscServer(conductor, ServerConfig(port=0))
        _, port = osc.start()
        peer = OscPeer(port)
        try:
            await ports.play("keys", on(60, channel=1))
            await ports.next()
            await asyncio.to_thread(peer.send, "/ensemble/mode", "midi:keys:2", "listen")
            await asyncio.to_thread(peer.send, "/ensemble/status")
            _, args = await asyncio.to_thread(peer.recv)
            status = json.loads(args[0])
            me = next(p for p in status["performers"] if p["id"] == "midi:keys:2")
            assert me["mode"] == "listen" and me["output"] == "midi:synth:2" and me["events_in"] == 1
            # the mode change ended the answer that was sounding
            name, msg = await ports.next()
            assert msg.type == "note_off" and msg.channel == 1
            await ports.play("keys", on(62, channel=1))  # listen: recorded, not answered
            await until(lambda: conductor.performers["midi:keys:2"].events_in == 2)
            conductor.flush()
            assert ports.pending() == []
        finally:
            peer.close()
            osc.close()

    run(notes_model, test, {})


# ----------------------------------------------------------------------------- controls


def test_cc_controls_temperature_mode_reset_and_panic(notes_model):
    midi = {"controls": {"temperature": 21, "mode": 22, "reset": 23, "panic": 24, "top_p": 25, "threshold": 26}}

    async def test(layer, ports, conductor):
        await ports.play("keys", cc(21, 127))
        await until(lambda: "midi:keys:1" in conductor.performers)
        p = conductor.performers["midi:keys:1"]
        assert p.settings.temperature == pytest.approx(2.0)
        await ports.play("keys", cc(21, 0), cc(25, 127), cc(26, 127))
        await until(lambda: p.settings.temperature == pytest.approx(0.1))
        assert p.settings.top_p == pytest.approx(1.0) and p.threshold == pytest.approx(4.0)
        for value, mode in ((0, "listen"), (40, "duet"), (80, "respond"), (127, "auto"), (33, "duet")):
            await ports.play("keys", cc(22, value))
            await until(lambda: p.mode == mode)
        # duet again: one answer sounds; reset ends it and forgets the history
        await ports.play("keys", on(60))
        name, answer = await ports.next()
        assert answer.type == "note_on"
        assert p.has_logits
        await ports.play("keys", cc(23, 0))  # a button released: nothing
        await ports.play("keys", cc(23, 127))
        name, msg = await ports.next()
        assert (msg.type, msg.note) == ("note_off", answer.note)
        assert not p.has_logits and conductor.held.sounding(p.id) == []
        # panic ends every performer's sounding notes, on every channel
        await ports.play("keys", on(60), on(62, channel=5))
        answers = [await ports.next(), await ports.next()]
        assert all(m.type == "note_on" for _, m in answers)
        await ports.play("keys", cc(24, 127))
        offs = [await ports.next(), await ports.next()]
        assert sorted((m.channel, m.note) for _, m in offs) == sorted((m.channel, m.note) for _, m in answers)
        assert all(m.type == "note_off" for _, m in offs)
        assert layer.forwarded == 0  # controls are not forwarded (and thru is off)

    run(notes_model, test, midi)


def test_cc_controls_steer_the_style_and_the_answers_obey(notes_model):
    midi = {"controls": {"low": 27, "high": 28, "tonal": 29, "density": 30, "scale": 31, "vel_low": 32,
                         "vel_high": 33, "rest": 34, "overlap": 35, "follow": 36}}

    async def test(layer, ports, conductor):
        await ports.play("keys", cc(27, 60), cc(28, 64), cc(32, 0), cc(33, 50))
        await until(lambda: "midi:keys:1" in conductor.performers)
        p = conductor.performers["midi:keys:1"]
        await until(lambda: p.style.settings.vel_high == 50)
        s = p.style.settings
        assert (s.low, s.high, s.vel_low, s.vel_high) == (60, 64, 1, 50)
        await ports.play("keys", cc(29, 127), cc(30, 0), cc(31, 100), cc(34, 127), cc(35, 0), cc(36, 10))
        await until(lambda: p.style.settings.follow == 0)
        assert s.tonal == pytest.approx(8.0) and s.density == pytest.approx(0.5) and s.scale == "auto"
        assert s.rest == pytest.approx(1.0) and s.overlap == 0
        await ports.play("keys", cc(30, 127), cc(31, 0), cc(34, 0))
        await until(lambda: s.rest == 0.0)
        assert s.density == 0.0 and s.scale == "off"
        # a range the CCs set is exact: every answer in duet falls inside it, at most velocity 50
        for pitch in (40, 72, 50, 80, 45, 70):
            await ports.play("keys", on(pitch), off(pitch))
        answers = []
        while len([m for m in answers if m.type == "note_on"]) < 6:
            _, msg = await ports.next()
            answers.append(msg)
        assert all(60 <= m.note <= 64 and m.velocity <= 50 for m in answers if m.type == "note_on")
        # a setting the style refuses (low above high) changes nothing
        await ports.play("keys", cc(27, 100))
        await ports.play("keys", cc(28, 63))
        await until(lambda: s.high == 63)
        assert s.low == 60

    run(notes_model, test, midi)


def test_every_style_setting_has_a_cc_mapping_the_style_accepts():
    from ensemble.io.midi_settings import CONTROL_ACTIONS, control_value
    from ensemble.server.style import SETTINGS

    assert set(SETTINGS) <= set(CONTROL_ACTIONS)
    for name, parse in SETTINGS.items():
        values = {parse(control_value(name, v)) for v in range(128)}  # raises on a value the style refuses
        assert len(values) >= 2, name  # the knob changes something


# ----------------------------------------------------------------------------- hanging notes


def test_every_note_on_gets_its_note_off(notes_model):
    """Mode change, panic, the length cap and shutdown each end what sounds; close() adds All Notes Off."""
    sent = []

    async def test(layer, ports, conductor):
        sent.append(ports.opened["synth"].sent)
        await ports.play("keys", on(60))
        _, answer = await ports.next()
        conductor.set_mode("midi:keys:1", "listen")  # a mode change
        _, msg = await ports.next()
        assert (msg.type, msg.note) == ("note_off", answer.note)
        conductor.set_mode("midi:keys:1", "duet")
        await ports.play("keys", on(62))
        _, answer = await ports.next()
        conductor.panic()
        _, msg = await ports.next()
        assert (msg.type, msg.note) == ("note_off", answer.note)
        conductor.set_parameter("midi:keys:1", "max_note", 0.05)
        await ports.play("keys", on(64))  # held past the length cap: ended by the cap
        _, answer = await ports.next()
        _, msg = await ports.next()
        assert (msg.type, msg.note) == ("note_off", answer.note)
        conductor.set_parameter("midi:keys:1", "max_note", 60.0)
        await ports.play("keys", on(65, channel=9))  # sounding at shutdown
        _, answer = await ports.next()
        assert answer.channel == 9

    run(notes_model, test, {})
    messages = sent[0]
    shutdown = messages[-3:]
    assert shutdown[0].type == "note_off" and shutdown[0].channel == 9  # conductor.shutdown()
    # layer.close(): All Notes Off on each channel that played (0 and 9), nowhere else
    assert sorted((m.channel, m.control) for m in shutdown[1:]) == [(0, 123), (9, 123)]
    check_no_hanging_notes(messages)
    ons = [m for m in messages if m.type == "note_on" and m.velocity > 0]
    assert len(ons) == 4 and len([m for m in messages if m.type == "note_off"]) == 4


# ----------------------------------------------------------------------------- feedback, thru


def test_echoed_midi_is_suppressed_not_played(notes_model):
    """A synth that echoes everything back into the input does not make a loop."""

    async def test(layer, ports, conductor):
        ports.opened["synth"].echo = ports.opened["keys"]
        await ports.play("keys", on(60))
        _, answer = await ports.next()
        await until(lambda: layer.suppressed == 1)  # the answer came back in, and was dropped
        p = conductor.performers["midi:keys:1"]
        assert p.events_in == 1 and ports.pending() == []
        await ports.play("keys", off(60))
        _, msg = await ports.next()
        assert (msg.type, msg.note) == ("note_off", answer.note)
        await until(lambda: layer.suppressed == 2)
        assert p.events_in == 2
        ports.opened["synth"].echo = None
        # each note sent explains ONE echo: the player repeating it at once is heard
        assert layer.recent == {}  # both echoes came back and were matched
        await ports.play("keys", on(64))
        _, answer = await ports.next()
        sent_at = layer.recent[("note_on", answer.note, 0)][0]
        layer.message("keys", on(answer.note), t=sent_at + layer.feedback_s / 2)  # the echo
        layer.message("keys", on(answer.note), t=sent_at + layer.feedback_s / 2)  # the player, right after it
        assert p.events_in == 4 and layer.suppressed == 3
        # outside the window the same event is the player's too
        layer.send("synth", on(30))
        sent_at = layer.recent[("note_on", 30, 0)][0]
        layer.message("keys", on(30), t=sent_at + layer.feedback_s + 0.001)
        assert p.events_in == 5 and layer.suppressed == 3

    run(notes_model, test, {"feedback_ms": 50})


def test_thru_forwards_the_player_and_echoes_of_it_are_suppressed(notes_model):
    midi = {"thru": True, "controls": {"temperature": 21},
            "performers": {"2": {"id": "bass", "output": "synth", "channel": 16}}}

    async def test(layer, ports, conductor):
        await ports.play("keys", on(48, channel=1))
        (_, forwarded), (_, answer) = await ports.next(), await ports.next()  # thru first, then duet's answer
        assert (forwarded.type, forwarded.note, forwarded.velocity, forwarded.channel) == ("note_on", 48, 100, 15)
        assert answer.type == "note_on" and answer.channel == 15  # bass answers on channel 16
        await ports.play("keys", cc(7, 90, channel=1), cc(21, 64, channel=1))
        _, msg = await ports.next()
        assert (msg.type, msg.control, msg.value, msg.channel) == ("control_change", 7, 90, 15)
        await until(lambda: layer.received == 3)
        conductor.flush()
        assert ports.pending() == []  # CC 21 is a control: acted on, not forwarded
        assert layer.forwarded == 2
        # a synth echoing the forwarded note does not feed the player's note back in
        ports.opened["synth"].echo = ports.opened["keys"]
        await ports.play("keys", off(48, channel=1))
        await until(lambda: layer.suppressed == 2)  # the forwarded note-off and the answer's note-off
        assert conductor.performers["bass"].events_in == 2  # the note-on and the note-off, not their echoes
        assert "midi:keys:16" not in conductor.performers  # echoes on channel 16 made no performer
        ports.opened["synth"].echo = None

    run(notes_model, test, midi)


# ----------------------------------------------------------------------------- ports come and go


def test_ports_that_vanish_are_reported_and_reopened(notes_model, caplog):
    caplog.set_level(logging.INFO, logger="ensemble.midi")

    async def test(layer, ports, conductor):
        await ports.play("keys", on(60))
        _, answer = await ports.next()
        ports.present_out.remove("synth")  # the synth's cable is pulled
        changed = layer.changed()
        await asyncio.wait_for(changed, TIMEOUT)
        assert layer.changes[-1] == ("lost", "synth", "synth")
        await ports.play("keys", off(60))  # the answer's note-off has nowhere to go
        await until(lambda: layer.dropped == 1)
        ports.present_out.append("synth")  # ... and plugged back in
        await asyncio.wait_for(layer.changed(), TIMEOUT)
        assert layer.changes[-1] == ("open", "synth", "synth")
        _, msg = await ports.next()  # All Notes Off on the channel whose note-off was lost
        assert (msg.type, msg.control, msg.channel) == ("control_change", 123, 0)
        await ports.play("keys", on(62))
        _, msg = await ports.next()
        assert msg.type == "note_on"
        # an input that vanishes and comes back plays on into the same performer
        ports.present_in.remove("keys")
        await asyncio.wait_for(layer.changed(), TIMEOUT)
        ports.present_in.append("keys")
        await asyncio.wait_for(layer.changed(), TIMEOUT)
        await ports.play("keys", off(62))
        _, msg = await ports.next()
        assert msg.type == "note_off"
        assert conductor.performers["midi:keys:1"].events_in == 4

    run(notes_model, test, {"poll_s": 0.02})
    text = caplog.text
    assert "'synth' is gone" in text and "'synth' is back" in text and "'keys' is back" in text


def test_a_port_that_is_not_there_yet_is_opened_when_it_appears(notes_model):
    async def test(layer, ports, conductor):
        assert layer.outputs["later"].port is None
        ports.present_out.append("later synth")
        await asyncio.wait_for(layer.changed(), TIMEOUT)
        assert layer.outputs["later"].name == "later synth"

    run(notes_model, test, {"poll_s": 0.02}, outputs=("later",), absent=("later",))


# ----------------------------------------------------------------------------- no MIDI, other codecs


def test_without_a_midi_system_osc_keeps_working_when_midi_is_optional(notes_model, tmp_path, caplog):
    """ALSA without /dev/snd (or an API not compiled in), [midi] optional = true: one clear
    log line, and OSC still answers. (Without `optional` the server refuses to start:
    test_midi_unavailable.py.)"""
    caplog.set_level(logging.ERROR, logger="ensemble.midi")
    api = "alsa" if not Path("/dev/snd/seq").exists() else "coremidi"  # coremidi: never compiled in on Linux
    cfg = ServerConfig(model=str(notes_model), port=0, record="", snapshot="", default_mode="duet",
                       midi={"inputs": ["keys"], "api": api, "optional": True})
    with ServerThread(cfg) as server:
        peer = OscPeer(server.port)
        peer.send("/ensemble/hello", "osc-player", "127.0.0.1", peer.port)
        peer.send("/ensemble/note", "osc-player", 60, 100)
        address, args = peer.recv()
        assert address == "/ensemble/note" and args[0] == "osc-player"
        peer.close()
    errors = [r for r in caplog.records if r.name == "ensemble.midi" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "MIDI is not available" in errors[0].getMessage()
    assert "serving OSC only" in errors[0].getMessage()


def test_a_model_of_another_codec_logs_midi_notes_as_an_error_once(caplog):
    caplog.set_level(logging.ERROR, logger="ensemble.midi")
    codec = TouchCodec()
    ckpt = checkpoint.Checkpoint(TokenRNN(codec.vocab_size, "lstm", 1, 16, 8).eval(), codec)

    async def main():
        loop = asyncio.get_running_loop()
        conductor = Conductor(ckpt, ServerConfig(record="", snapshot=""), loop)
        ports = Ports(["keys"], ["synth"], loop)
        layer = MidiLayer(conductor, {"inputs": ["keys"], "outputs": ["synth"]}, backend=ports)
        layer.start()
        await ports.play("keys", on(60), off(60), on(62))
        await until(lambda: layer.received == 3)
        assert conductor.performers == {} and layer.errors == 3
        layer.close()

    asyncio.run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "touch codec" in errors[0]


# ----------------------------------------------------------------------------- settings, restore


def test_settings_are_checked_with_clear_messages():
    s = parse_settings({"inputs": ["keys"], "outputs": ["synth"], "virtual": True,
                        "performers": {"3": "x", "keys:4": {"id": "y", "output": "ensemble out"}},
                        "controls": {"temperature": 21, "panic": 24}})
    assert s.all_inputs == ["keys", "ensemble in"] and s.controls == {21: "temperature", 24: "panic"}
    for bad, words in [
        ({"colour": "red"}, "unknown keys colour"),
        ({"inputs": [3]}, "list of port names"),
        ({"performers": {"17": "x"}}, "1..16"),
        ({"performers": {"pads:1": "x"}, "inputs": ["keys"]}, "not one of the inputs"),
        ({"performers": {"1": {"id": "x", "output": "nowhere"}}}, "not one of the outputs"),
        ({"performers": {"1": {"id": "x", "mode": "karaoke"}}}, "mode must be one of"),
        ({"controls": {"volume": 7}}, "unknown action"),
        ({"controls": {"temperature": 128}}, "CC number"),
        ({"controls": {"temperature": 21, "mode": 21}}, "given to both"),
        ({"feedback_ms": -1}, "feedback_ms"),
        ({"thru": "yes"}, "true or false"),
    ]:
        with pytest.raises(UserError, match=words):
            parse_settings(bad)


def test_restored_outputs_are_rebuilt_by_their_own_transport(notes_model):
    async def test(layer, ports, conductor):
        osc = OscServer(conductor, ServerConfig(port=0))
        out = layer.output("synth", 3)
        again = conductor.output_from(out.describe())
        assert isinstance(again, MidiOutput) and again.name == out.name == "midi:synth:3"
        assert layer.output_from({"type": "osc", "host": "127.0.0.1", "port": 9000}) is None
        assert conductor.output_from({"type": "osc", "host": "127.0.0.1", "port": 9000}).name == "osc:127.0.0.1:9000"
        with pytest.raises(ValueError, match="not open now"):
            conductor.output_from({"type": "midi", "port": "elsewhere", "channel": 1})
        with pytest.raises(ValueError, match="no transport"):
            conductor.output_from({"type": "pigeon", "name": "coop"})
        assert osc.output_from(out.describe()) is None

    run(notes_model, test, {})


def test_callbacks_from_many_threads_all_cross_to_the_loop(notes_model):
    async def test(layer, ports, conductor):
        barrier = threading.Barrier(4)

        def player(channel):
            barrier.wait()
            ports.opened["keys"].play(*(on(60 + i, channel=channel) for i in range(5)))

        await asyncio.gather(*(asyncio.to_thread(player, ch) for ch in range(4)))
        await until(lambda: sum(p.events_in for p in conductor.performers.values()) == 20)
        assert len(conductor.performers) == 4

    run(notes_model, test, {})


def test_notes_that_arrive_together_are_stepped_as_one_batch(notes_model):
    """Four callbacks before the loop wakes: one drain, one flush, ONE engine step for four performers."""

    async def test(layer, ports, conductor):
        steps, batched = conductor.steps, conductor.batched_events
        ports.opened["keys"].play(*(on(60, channel=ch) for ch in range(4)))  # the loop is busy here
        await until(lambda: len(conductor.performers) == 4 and conductor.steps > steps)
        assert conductor.steps - steps == 1 and conductor.batched_events - batched == 4
        answers = [await ports.next() for _ in range(4)]
        assert sorted(m.channel for _, m in answers) == [0, 1, 2, 3]

    run(notes_model, test, {})

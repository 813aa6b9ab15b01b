"""MIDI in and out on the conductor's loop: mido ports on python-rtmidi (the MIDI transport).

Three modules: the settings table (`midi_settings`), the MIDI system and its ports
(`midi_backend`), and here the transport itself: port lifecycle, echoes, routing to
performers, outputs.

MIDI is another way in and out of the same conductor, not another server: every input
channel of every input port is a performer (by default ``midi:<port>:<channel>``) in
the same conductor as the OSC performers, so `/ensemble/mode`, `/ensemble/set`,
`/ensemble/status` ... work on them too.

Threads: rtmidi calls our input callback on its own thread. The callback only stamps
the message (`time.monotonic`), appends it to an inbox and, if no drain is pending,
wakes the loop with `loop.call_soon_threadsafe`. The drain runs on the loop: it plays
every waiting message into the conductor and calls `conductor.flush()` ONCE, so
performers whose notes arrive together are stepped as one batch. Opening, closing
and listing ports (tens of ms each with JACK) happen on one worker thread, never on
the loop; only sending happens on the loop thread (a non-blocking rtmidi call).

Settings: the ``[midi]`` table of ``--config FILE.toml`` (command-line options win)::

    [midi]
    inputs = ["keys", "pads"]   # input ports, matched by substring (--midi-in, repeatable)
    outputs = ["synth"]         # output ports, matched by substring (--midi-out, repeatable)
    virtual = false             # also open virtual ports "ensemble in" / "ensemble out" (--midi-virtual)
    api = "jack"                # alsa | jack | coremidi | winmm | dummy, or a mido backend
                                # "mido.backends.rtmidi/UNIX_JACK" (--midi-api; else MIDO_BACKEND;
                                # else the first API that starts, in rtmidi's order: ALSA, JACK)
    thru = false                # forward the player's input to their output (--thru)
    feedback_ms = 20            # an input event repeating (type, note, channel) of something the
                                # server sent less than this long ago is an echo: ignored, counted
                                # (each message sent explains one echo); 0: nothing echoes here
    poll_s = 2.0                # seconds between checks for ports that vanished or came back
    mode = "respond"            # mode of new MIDI performers (default: the server's --mode)
    optional = false            # no MIDI system: serve OSC only instead of failing (--midi-optional)

    [midi.performers]           # optional; channels are 1..16 everywhere
    "1" = "alice"               # channel 1 of every input port is the performer "alice"
    "pads:10" = { id = "drums", mode = "duet", output = "synth", channel = 10 }

    [midi.controls]             # optional: CC number -> action on that channel's performer
    temperature = 21            # CC 0..127 -> temperature 0.1..2.0
    top_p = 25                  # CC 0..127 -> top_p 0.05..1.0
    threshold = 26              # CC 0..127 -> respond threshold 0..4 s
    mode = 22                   # 0-31 listen, 32-63 duet, 64-95 respond, 96-127 auto
    reset = 23                  # value >= 64: forget this performer's history
    panic = 24                  # value >= 64: every sounding note of every performer ends
    low = 27                    # steering (notes models), as /ensemble/set takes it: the pitch
    high = 28                   #   range is the CC value itself
    tonal = 29                  # 0..127 -> 0..8
    density = 30                # 0..126 -> 0.5..16 notes a second, 127: no limit
    # also vel_low, vel_high (the value, at least 1), rest (0..1), and the switches
    # scale (>= 64: auto, else off), overlap and follow (>= 64: 1)

Without a ``[midi.performers]`` entry, channel C of input port P (the name as given in
``inputs``) is the performer ``midi:P:C``; a value in the table is either the id or a
table of ``id``, ``mode``, ``output`` (one of ``outputs``) and ``channel`` (1..16).
Predictions go out on the first output port, on the channel they came in on, unless
the entry says otherwise. Mapped CCs act and are not forwarded; note-on with velocity
0 is a note-off. A model whose codec is not ``notes`` cannot take MIDI notes: that is
logged once and MIDI notes are ignored.

Echoes: a synth or DAW that sends back what it gets would feed the server its own
notes. An event that repeats (type, note, channel) of a message the server sent within
``feedback_ms`` is taken for that message's echo. When answers go out on the player's
own channel (the default), a player striking the very note the model just played
within that window is taken for the echo too: give answers their own channel
(``[midi.performers] "1" = { channel = 2 }``) or set ``feedback_ms = 0`` when nothing
echoes.

Never a hanging note: the conductor's `HeldNotes` ends every predicted note (its
note-off, the length cap, all-off on mode change, reset, panic and shutdown); `close()`
also sends All Notes Off (CC 123) on every channel the server played on.

Ports that vanish (a cable pulled) are reported and reopened when they come back. No
MIDI system at all (ALSA without a device, JACK not running) when MIDI was asked for is
one error line saying what is missing and how to get it, and the server does not start;
with ``optional = true`` (--midi-optional) it is one log line and the server goes on
with OSC only. ALSA and JACK print their own complaints straight to file descriptor 2
while rtmidi probes them; that noise is kept off the terminal (`c_stderr_captured`) and
logged at debug level.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass

import mido

from ensemble.errors import UserError
from ensemble.io.midi_backend import (MidiUnavailable, RtMidiBackend, c_stderr_captured,  # noqa: F401
                                      how_to_get_midi, match_port)
from ensemble.io.midi_settings import (VIRTUAL_IN, VIRTUAL_OUT, MidiSettings, Route, _channel,  # noqa: F401
                                       control_value, parse_settings, route_for)
from ensemble.messages import EventError, Hello, Origin, Panic, Play, Reset, SetMode, SetParam

log = logging.getLogger("ensemble.midi")

CHANNEL_MESSAGES = {"note_on", "note_off", "control_change", "pitchwheel", "aftertouch",
                    "polytouch", "program_change"}
ALL_NOTES_OFF = 123




class MidiOutput:
    """A performer's predictions as note-on/note-off on one port and channel (1..16)."""

    def __init__(self, layer: "MidiLayer", port: str | None, channel: int):
        self.layer = layer
        self.port = port
        self.channel = channel
        self.name = f"midi:{port if port is not None else 'none'}:{channel}"

    def send(self, performer: str, kind: str, values: tuple, seq: int) -> None:
        if kind != "note":
            self.layer.unsendable(kind)
            return
        pitch, velocity = int(values[0]), int(values[1])
        ch = self.channel - 1
        if velocity > 0:
            msg = mido.Message("note_on", channel=ch, note=pitch, velocity=min(velocity, 127))
        else:
            msg = mido.Message("note_off", channel=ch, note=pitch, velocity=0)
        self.layer.send(self.port, msg)

    def all_notes_off(self) -> None:
        """All Notes Off (CC 123) on this channel: after a restart, whatever was left sounding."""
        self.layer.send(self.port, mido.Message("control_change", channel=self.channel - 1,
                                                control=ALL_NOTES_OFF, value=0))

    def describe(self) -> dict:
        return {"type": "midi", "port": self.port, "channel": self.channel, "name": self.name}


# ---------------------------------------------------------------------------- the layer


@dataclass
class PortSlot:
    """One configured port: open (port set), waiting for it to appear, or being opened."""

    pattern: str
    direction: str        # "in" | "out"
    virtual: bool = False
    port: object = None   # the open mido port
    name: str | None = None
    busy: bool = False    # an open is in flight on the worker thread
    missing_logged: bool = False


class MidiLayer:
    """The MIDI transport: ports feeding and answering the conductor. `backend` is for tests
    and other systems: an object with input_names(), output_names(), open_input(name,
    callback, virtual), open_output(name, virtual) (mido ports) and close()."""

    name = "midi"

    def __init__(self, conductor, midi_config: dict | None = None, backend=None):
        self.conductor = conductor
        self.loop: asyncio.AbstractEventLoop = conductor.loop
        self.settings = parse_settings(midi_config)
        self.backend = backend
        self.available = False
        self.closed = False
        s = self.settings
        self.slots = [PortSlot(p, "in") for p in s.inputs] + [PortSlot(p, "out") for p in s.outputs]
        if s.virtual:
            self.slots += [PortSlot(VIRTUAL_IN, "in", virtual=True), PortSlot(VIRTUAL_OUT, "out", virtual=True)]
        self.outputs = {slot.pattern: slot for slot in self.slots if slot.direction == "out"}
        self.feedback_s = s.feedback_ms / 1000.0
        self.routes: dict[tuple[str, int], Route] = {}
        self.midi_outputs: dict[tuple[str | None, int], MidiOutput] = {}
        # (type, note|control, channel) -> [monotonic time last sent, copies sent within the window]
        self.recent: dict[tuple, list] = {}
        self.used: set[tuple[str, int]] = set()   # (output port, mido channel) that played notes
        self._inbox: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._wake = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._watchers: list[asyncio.Future] = []
        self._said: set[str] = set()
        self.received = self.suppressed = self.forwarded = self.sent = self.dropped = self.errors = 0
        self.changes: list[tuple[str, str, str]] = []  # ("open"|"lost", port pattern, port name)
        conductor.attach(self)

    # ------------------------------------------------------------------ ports

    def start(self) -> bool:
        """Open the ports found now and keep watching for the rest. No MIDI system: a
        UserError saying what is missing, or (with `optional`) False and one log line."""
        if self.backend is None:
            try:
                self.backend = RtMidiBackend(self.settings.api)
            except MidiUnavailable as exc:
                return self._unavailable(str(exc))
        self.available = True
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ensemble-midi")
        api = getattr(self.backend, "api", type(self.backend).__name__)
        try:
            ins, outs = self.backend.input_names(), self.backend.output_names()
        except (OSError, RuntimeError) as exc:
            self.available = False
            return self._unavailable(f"{api} cannot list its ports: {exc}")
        for slot in self.slots:
            name = slot.pattern if slot.virtual else self._match(slot, ins if slot.direction == "in" else outs)
            if name is None:
                self._missing(slot, ins if slot.direction == "in" else outs)
                continue
            try:
                self._install(slot, name, self._open(slot, name))
            except (OSError, RuntimeError, ValueError) as exc:
                log.error("MIDI %s %r: cannot open %r (%s)", slot.direction, slot.pattern, name, exc)
        opened = [f"{s.direction} {s.pattern!r} = {s.name!r}" for s in self.slots if s.port is not None]
        log.info("MIDI (%s): %s%s", api, ", ".join(opened) or "no ports open yet",
                 ", thru" if self.settings.thru else "")
        self._timer = self.loop.call_later(self.settings.poll_s, self._poll)
        return True

    def _unavailable(self, what: str) -> bool:
        if self.settings.optional:
            log.error("MIDI is not available (%s): serving OSC only (MIDI is optional)", what)
            return False
        raise UserError(f"MIDI was asked for but is not available ({what}): {how_to_get_midi()}; "
                        "or give --midi-optional ([midi] optional = true) to serve OSC only")

    def _match(self, slot: PortSlot, names: list[str]) -> str | None:
        # our own virtual ports are never taken for someone else's
        own = (VIRTUAL_IN, VIRTUAL_OUT) if self.settings.virtual else ()
        return match_port(slot.pattern, names, own)

    def _missing(self, slot: PortSlot, names: list[str]) -> None:
        if not slot.missing_logged:
            slot.missing_logged = True
            log.warning("MIDI %s %r: no such port yet (there are: %s); opened when it appears",
                        slot.direction, slot.pattern, ", ".join(map(repr, names)) or "none")

    def _open(self, slot: PortSlot, name: str):
        """Open one port (worker thread, or the loop thread in `start`)."""
        if slot.direction == "in":
            pattern = slot.pattern
            return self.backend.open_input(name, lambda msg: self._incoming(pattern, msg), virtual=slot.virtual)
        return self.backend.open_output(name, virtual=slot.virtual)

    def _open_in_worker(self, slot: PortSlot, name: str):
        port = self._open(slot, name)
        with self._lock:
            if self._closing:  # close() came while we were opening
                port.close()
                return None
        return port

    def _install(self, slot: PortSlot, name: str, port) -> None:
        reconnect = any(c[0] == "lost" and c[1] == slot.pattern for c in self.changes)
        found_late = slot.missing_logged
        slot.port, slot.name, slot.missing_logged = port, name, False
        self.changes.append(("open", slot.pattern, name))
        if reconnect:
            log.warning("MIDI %s %r: %r is back", slot.direction, slot.pattern, name)
        elif found_late:
            log.info("MIDI %s %r: %r appeared and is open", slot.direction, slot.pattern, name)
        if slot.direction == "out" and reconnect:  # notes may have lost their offs while it was away
            self._all_notes_off(slot)
        self._notify()

    def _poll(self) -> None:
        self._timer = None
        if self.closed:
            return
        future = self.loop.run_in_executor(self._worker, self._scan)
        future.add_done_callback(self._scanned)

    def _scan(self):
        return self.backend.input_names(), self.backend.output_names()

    def _scanned(self, future: asyncio.Future) -> None:
        if self.closed or future.cancelled():
            return
        self._timer = self.loop.call_later(self.settings.poll_s, self._poll)
        try:
            ins, outs = future.result()
        except Exception as exc:  # the MIDI system went away: keep trying
            self._say_once("scan", "MIDI: cannot list ports (%s); retrying every %.0f s", exc, self.settings.poll_s)
            ins, outs = [], []
        else:
            self._said.discard("scan")
        for slot in self.slots:
            if slot.virtual or slot.busy:
                continue
            names = ins if slot.direction == "in" else outs
            if slot.port is not None and slot.name not in names:
                self._lost(slot)
            if slot.port is None:
                name = self._match(slot, names)
                if name is None:
                    self._missing(slot, names)
                    continue
                slot.busy = True
                future = self.loop.run_in_executor(self._worker, self._open_in_worker, slot, name)
                future.add_done_callback(lambda f, slot=slot, name=name: self._opened(slot, name, f))

    def _opened(self, slot: PortSlot, name: str, future: asyncio.Future) -> None:
        slot.busy = False
        if future.cancelled():  # close() came first
            return
        try:
            port = future.result()
        except Exception as exc:
            self._say_once(f"open {slot.pattern}", "MIDI %s %r: cannot open %r (%s)", slot.direction, slot.pattern,
                           name, exc)
            return
        if port is None:
            return
        if self.closed:
            port.close()
            return
        self._said.discard(f"open {slot.pattern}")
        self._install(slot, name, port)

    def _lost(self, slot: PortSlot) -> None:
        port, name = slot.port, slot.name
        slot.port, slot.name, slot.missing_logged = None, None, True
        self.changes.append(("lost", slot.pattern, name))
        log.warning("MIDI %s %r: %r is gone; waiting for it to come back", slot.direction, slot.pattern, name)
        self._worker.submit(self._close_port, port)
        self._notify()

    @staticmethod
    def _close_port(port) -> None:
        try:
            port.close()
        except Exception as exc:  # closing a port whose device vanished: nothing more to do
            log.debug("MIDI: closing %r: %s", port, exc)

    def changed(self) -> asyncio.Future:
        """A future resolved at the next port change (opened, lost): for tests and tools."""
        future = self.loop.create_future()
        self._watchers.append(future)
        return future

    def _notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for future in watchers:
            if not future.done():
                future.set_result(None)

    def _say_once(self, key: str, message: str, *args) -> None:
        if key not in self._said:
            self._said.add(key)
            log.error(message, *args)

    # ------------------------------------------------------------------ in

    def _incoming(self, pattern: str, msg) -> None:
        """rtmidi's thread: stamp, queue, wake the loop (once per batch)."""
        if msg.type not in CHANNEL_MESSAGES:  # clock (24 a beat), sysex, ...: never wake the loop for them
            return
        stamped = (time.monotonic(), pattern, msg)
        with self._lock:
            self._inbox.append(stamped)
            if self._wake or self._closing:
                return
            self._wake = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    def _drain(self) -> None:
        with self._lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._wake = False
        if self.closed or not items:
            return
        for t, pattern, msg in items:
            try:
                self.message(pattern, msg, t)
            except (EventError, ValueError) as exc:  # ControlError is a ValueError
                self.errors += 1
                log.warning("MIDI %s from %r: %s", msg, pattern, exc)
            except Exception:  # a bug must cost one message, never the server
                log.exception("MIDI: internal error on %s from %r", msg, pattern)
        self.conductor.flush()

    def message(self, pattern: str, msg, t: float | None = None) -> None:
        """One message from input `pattern` (on the loop); the caller flushes the conductor."""
        if msg.type not in CHANNEL_MESSAGES:
            return  # clock, sysex, ...: not ours
        self.received += 1
        key = self._key(msg)
        if key is not None and self._echo(key, t if t is not None else time.monotonic()):
            self.suppressed += 1
            return
        route = self._route(pattern, msg.channel + 1)
        source = Origin(f"midi:{pattern}")  # gear on this machine: it owns its performers and may steer all
        if msg.type in ("note_on", "note_off"):
            if self.conductor.adapter.kind != "note":
                self._say_once("codec", "MIDI: this model (%s codec) does not take notes; MIDI input is ignored",
                               self.conductor.codec.name)
                self.errors += 1
                return
            velocity = msg.velocity if msg.type == "note_on" else 0
            self._performer(route, source)
            self.conductor.handle(Play(route.performer, "note", (msg.note, velocity)), source)
        elif msg.type == "control_change" and msg.control in self.settings.controls:
            self._control(self.settings.controls[msg.control], msg.value, route, source)
            return
        if self.settings.thru and self.send(route.output, msg.copy(channel=route.channel - 1)):
            self.forwarded += 1

    def _echo(self, key: tuple, t: float) -> bool:
        """Is this input the echo of something sent less than feedback_ms ago? Each copy sent
        explains one echo: a player repeating it after the echo came back is heard."""
        sent = self.recent.get(key)
        if sent is None or not 0.0 <= t - sent[0] <= self.feedback_s:
            return False
        sent[1] -= 1
        if sent[1] <= 0:
            del self.recent[key]
        return True

    def _route(self, pattern: str, channel: int) -> Route:
        route = self.routes.get((pattern, channel))
        if route is None:
            route = self.routes[(pattern, channel)] = route_for(self.settings, pattern, channel)
        return route

    def output(self, port: str | None, channel: int) -> MidiOutput:
        out = self.midi_outputs.get((port, channel))
        if out is None:
            out = self.midi_outputs[(port, channel)] = MidiOutput(self, port, channel)
        return out

    def _performer(self, route: Route, source: Origin):
        """The route's performer, said hello to if the conductor does not know them (yet, or any more)."""
        if route.performer not in self.conductor.performers:
            self.conductor.handle(Hello(route.performer, self.output(route.output, route.channel), route.mode), source)
        return self.conductor.performers[route.performer]

    def _control(self, action: str, value: int, route: Route, source: Origin) -> None:
        meaning = control_value(action, value)
        handle = self.conductor.handle
        if action == "panic":
            if meaning:
                handle(Panic(), source)
            return
        if action == "reset" and not meaning:
            return
        if self.conductor.adapter.kind != "note":
            return
        self._performer(route, source)
        if action == "reset":
            handle(Reset(route.performer), source)
        elif action == "mode":
            if self.conductor.performers[route.performer].mode != meaning:
                handle(SetMode(route.performer, meaning), source)
        else:
            handle(SetParam(route.performer, action, meaning if isinstance(meaning, str) else float(meaning)), source)

    # ------------------------------------------------------------------ out

    @staticmethod
    def _key(msg) -> tuple | None:
        if msg.type == "note_on":
            return ("note_on" if msg.velocity else "note_off", msg.note, msg.channel)
        if msg.type == "note_off":
            return ("note_off", msg.note, msg.channel)
        if msg.type == "control_change":
            return ("control_change", msg.control, msg.channel)
        return None

    def send(self, port: str | None, msg) -> bool:
        """Put one message on an output port (loop thread); False if it could not go out."""
        slot = self.outputs.get(port)
        if slot is None or slot.port is None:
            if port is not None:
                self.dropped += 1
            return False
        key = self._key(msg)
        if key is not None:  # noted before sending: an echo may come back at once
            now = time.monotonic()
            sent = self.recent.get(key)
            if sent is not None and now - sent[0] <= self.feedback_s:
                sent[0], sent[1] = now, sent[1] + 1
            else:
                self.recent[key] = [now, 1]
        try:
            slot.port.send(msg)
        except (OSError, ValueError, RuntimeError) as exc:
            self.dropped += 1
            self._say_once(f"send {port}", "MIDI out %r: cannot send (%s)", port, exc)
            return False
        self.sent += 1
        if msg.type == "note_on":
            self.used.add((port, msg.channel))
        return True

    def unsendable(self, kind: str) -> None:
        self.dropped += 1
        self._say_once(f"kind {kind}", "MIDI out: %s events have no MIDI form; they are dropped", kind)

    def _all_notes_off(self, slot: PortSlot) -> int:
        count = 0
        for port, channel in sorted(self.used):
            if port == slot.pattern and self.send(port, mido.Message("control_change", channel=channel,
                                                                     control=ALL_NOTES_OFF, value=0)):
                count += 1
        return count

    def output_from(self, description: dict) -> MidiOutput | None:
        """For --restore: one of our outputs from its description (None: another transport's)."""
        if description.get("type") != "midi":
            return None
        port = description.get("port")
        if port is not None and port not in self.outputs:
            raise ValueError(f"MIDI output {port!r} is not open now (outputs: {', '.join(self.outputs) or 'none'})")
        try:
            channel = _channel(description.get("channel"), "restored output")
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return self.output(port, channel)

    # ------------------------------------------------------------------ status, close

    def status(self) -> dict:
        return {
            "api": getattr(self.backend, "api", None) if self.available else None,
            "ports": [{"direction": s.direction, "pattern": s.pattern, "name": s.name, "open": s.port is not None}
                      for s in self.slots],
            "received": self.received, "suppressed": self.suppressed, "forwarded": self.forwarded,
            "sent": self.sent, "dropped": self.dropped, "errors": self.errors,
        }

    def close(self) -> None:
        """All Notes Off on every channel played on, then every port closed (call after conductor.shutdown)."""
        if self.closed:
            return
        offs = sum(self._all_notes_off(slot) for slot in self.outputs.values() if slot.port is not None)
        self.closed = True
        with self._lock:
            self._closing = True
            self._inbox.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._worker is not None:  # an open in flight closes its port itself (`_closing`)
            self._worker.shutdown(wait=False, cancel_futures=True)
        for slot in self.slots:
            if slot.port is not None:
                self._close_port(slot.port)
                slot.port = None
        if self.backend is not None and hasattr(self.backend, "close"):
            self.backend.close()
        self._notify()
        if self.available:
            log.info("MIDI closed: %d in, %d echoes suppressed, %d forwarded, %d sent, %d dropped, "
                     "all notes off on %d channel(s)", self.received, self.suppressed, self.forwarded,
                     self.sent, self.dropped, offs)

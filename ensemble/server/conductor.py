"""The conductor: performers, modes, batching and control, on one asyncio loop.

Transports (OSC in `ensemble.io.osc`, MIDI in `ensemble.io.midi`) hand it messages;
it turns each played event into a token, steps every performer with news in ONE
batched engine call (`flush`), and answers by mode:

- ``listen``: record only.
- ``duet``: answer every event at once with the model's prediction of the performer's
  next event (the answer is not fed back: the state is the performer's own playing).
  With notes, a note-on is answered by the note the model expects next (note-offs are
  masked from that draw) and a note-off ends that answer: one reply per event. A
  note-off's reply needs nothing from the model, so it goes out before its step.
- ``respond``: call and response. After `threshold` seconds of silence the machine
  continues in the performer's style, event by event at the predicted times, each
  played event fed back into the state, until the performer plays again.
- ``auto``: the machine plays on from its own output all the time; the performer's
  events are fed in too and steer it.

Everything the conductor does happens in loop callbacks; nothing blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ensemble.engine import Sampler, make_engine
from ensemble.sampling import SamplingSettings, forbidden_mask
from ensemble.server import snapshot
from ensemble.errors import UserError
from ensemble.server.config import MODES, ServerConfig
from ensemble.settings import check_value
from ensemble.messages import (  # noqa: F401 (MAX_ID and check_id: imported from here too)
    LOCAL, MAX_ID, ControlError, Event, EventError, Goodbye, Hello, Origin, Output, Panic, Play, Reset, SetMode,
    SetParam, StatusRequest, Transport, check_id)
from ensemble.server.events import OutEvent, adapter_for
from ensemble.server.performer import Performer
from ensemble.server.recorder import Recorder
from ensemble.server.scheduler import HeldNotes, cancel_machine
from ensemble.server.style import SETTINGS as STYLE_SETTINGS, Style

log = logging.getLogger("ensemble.server")

FIRST_DT = 4.0  # a performer's first event: "after a long pause"
STATUS_PERFORMERS = 16  # performers listed in one status reply (it must fit one datagram)
MAX_PENDING = 256  # events read before the conductor steps them: a transport stops reading there (see `backlogged`)
SEQ_MARGIN = 100_000  # after a restore from a periodic snapshot, numbering goes on above anything sent since

# what /ensemble/set may change per performer: ServerConfig settings, so the ranges are
# declared once (server/config.py) and a live value is checked as a TOML value is
PARAMETERS = ("temperature", "top_p", "top_k", "threshold", "max_note")


@dataclass
class Pending:
    performer: Performer
    token: int
    own: bool  # True: the machine's own event, fed back; False: the performer played it
    values: tuple = ()
    answered: bool = False  # its duet answer already went out (a note-off: see `play`)


class Conductor:
    def __init__(self, checkpoint, config: ServerConfig, loop: asyncio.AbstractEventLoop | None = None,
                 recorder: Recorder | None = None):
        self.checkpoint = checkpoint
        self.config = config
        self.codec = checkpoint.codec
        self.adapter = adapter_for(self.codec)
        self.loop = loop or asyncio.get_event_loop()
        self.engine = make_engine(checkpoint.model, config.engine, slots=16)
        self.vocab = self.engine.vocab_size
        self.sampler = Sampler(self.vocab)
        forbidden = list(getattr(self.codec, "forbidden", None) or [])
        self.mask = forbidden_mask(self.vocab, forbidden)
        self.duet_mask = forbidden_mask(self.vocab, forbidden + self.adapter.duet_forbidden)
        # notes models follow each performer's tempo, pulse and dynamics (ensemble.server.style)
        self.style_tables = self.adapter.style_tables() if hasattr(self.adapter, "style_tables") else None
        self.performers: dict[str, Performer] = {}
        self.pending: list[Pending] = []
        self._flush_soon = False
        self.held = HeldNotes(self.loop, self.send)
        self.recorder = recorder
        # callables (direction, performer, kind, values, source, seq) that see every event in
        # and out as it is recorded: a browser page watching the band, say
        self.watchers: list[Callable] = []
        self.transports: list[Transport] = []  # OSC, MIDI, ...: attached by whoever starts them
        self.band = None
        if self.adapter.kind == "gesture":  # the whole band in one token: stepped on a clock
            from ensemble.server.band import Band

            self.band = Band(self, config.gesture_interval)
        self.started = time.monotonic()
        self.steps = 0
        self.revision = 0  # counts changes, so an unchanged server writes no snapshot
        self.batched_events = 0

    # ------------------------------------------------------------------ performers

    def _rng(self, performer_id: str) -> np.random.Generator:
        seed = self.config.seed
        if seed is None:
            return np.random.default_rng()
        return np.random.default_rng([seed, zlib.crc32(performer_id.encode())])

    def hello(self, performer_id: str, output: Output, source: str = "", mode: str | None = None,
              owner: str | None = None) -> Performer:
        """Register a performer (again): a known one keeps their state and gets the new output.

        The id belongs to the address (`owner`) that said hello first, until goodbye or the
        idle timeout: a hello from anywhere else is refused, unless the id is `shared`."""
        check_id(performer_id)
        if mode is not None and mode not in MODES:
            raise ControlError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        p = self.performers.get(performer_id)
        if p is not None:
            if p.owner != owner:
                if performer_id not in self.config.shared:
                    raise ControlError(f"performer {performer_id!r} is played from another address; pick another "
                                       f"id (or they say goodbye first)")
                p.owner = owner
            if p.output.name != output.name:
                self.held.all_off(p)
                p.output = output
            p.last_heard = self.loop.time()
            return p
        cfg = self.config
        if len(self.performers) >= cfg.max_performers:
            raise ControlError(f"the server is full: {len(self.performers)} performers (max_performers "
                               f"{cfg.max_performers}); try again after someone leaves")
        p = Performer(
            id=performer_id, slot=self.engine.alloc_slot(), output=output,
            mode=mode or cfg.default_mode,
            settings=SamplingSettings(cfg.temperature, cfg.top_k, cfg.top_p),
            threshold=cfg.threshold, max_note=cfg.max_note, rng=self._rng(performer_id),
            logits=np.zeros(self.vocab, dtype=np.float32), last_heard=self.loop.time(), source=source,
            owner=owner,
        )
        if self.style_tables is not None:
            p.style = Style(self.style_tables, cfg.style, self.mask)
        self.performers[performer_id] = p
        if self.band is not None:
            try:
                self.band.join(performer_id)
            except EventError:
                self.engine.free_slot(p.slot)
                del self.performers[performer_id]
                raise
        log.info("hello %s (slot %d, %s mode, answers to %s)", performer_id, p.slot, p.mode, output.name)
        if p.mode == "auto":
            self.loop.call_soon(self._start_generating, p)  # after a restore has set the state
        return p

    def get(self, performer_id: str) -> Performer:
        p = self.performers.get(performer_id)
        if p is None:
            raise ControlError(f"unknown performer {performer_id!r}: send /ensemble/hello {performer_id} first")
        return p

    def authorized(self, performer_id: str, origin: Origin) -> Performer:
        """The performer, if `origin` may play or steer them: their own address, or an admin."""
        p = self.get(performer_id)
        if not origin.admin and p.owner != origin.owner:
            raise ControlError(f"performer {performer_id!r} belongs to another address")
        return p

    def goodbye(self, performer_id: str) -> None:
        p = self.get(performer_id)
        self._silence(p)
        self.engine.free_slot(p.slot)
        del self.performers[performer_id]
        if self.band is not None:
            self.band.leave(performer_id)
        self._drop_pending(p)
        log.info("goodbye %s", performer_id)

    def reset(self, performer_id: str) -> None:
        p = self.get(performer_id)
        self._silence(p)
        self.engine.reset_slot(p.slot)
        self._drop_pending(p)
        p.has_logits, p.stream_time = False, None
        if p.style is not None:
            p.style.reset()

    def set_mode(self, performer_id: str, mode: str) -> None:
        if mode not in MODES:
            raise ControlError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        p = self.get(performer_id)
        self._silence(p)
        p.mode = mode
        p.panicked = False
        if mode == "auto":
            self._start_generating(p)

    def set_parameter(self, performer_id: str, name: str, value: float | str) -> None:
        if name in STYLE_SETTINGS and self.style_tables is not None:  # ensemble.server.style checks them
            targets = list(self.performers.values()) if performer_id == "*" else [self.get(performer_id)]
            for p in targets:
                try:
                    p.style.set(name, value)
                except ValueError as exc:
                    raise ControlError(str(exc)) from None
            return
        if name not in PARAMETERS:
            known = list(PARAMETERS) + (list(STYLE_SETTINGS) if self.style_tables is not None else [])
            raise ControlError(f"unknown parameter {name!r}; known: {', '.join(known)}")
        try:
            value = check_value(ServerConfig, name, value)
        except UserError as exc:
            raise ControlError(str(exc)) from None
        targets = list(self.performers.values()) if performer_id == "*" else [self.get(performer_id)]
        for p in targets:
            if name in ("temperature", "top_p", "top_k"):
                setattr(p.settings, name, int(value) if name == "top_k" else float(value))
            else:
                setattr(p, name, float(value))

    def panic(self, performer_id: str | None = None) -> int:
        """Silence everyone (or one performer) now: pending events cancelled, every sounding
        note ended. An emergency stop: the machine stays quiet, in every mode, until that
        performer plays again or sets a mode (status shows `silenced_by_panic`)."""
        count = 0
        for p in self.performers.values() if performer_id is None else [self.get(performer_id)]:
            count += self._silence(p)
            p.panicked = True
        log.warning("panic%s: %d notes ended", "" if performer_id is None else f" ({performer_id})", count)
        return count

    def _silence(self, p: Performer) -> int:
        cancel_machine(p)
        return self.held.all_off(p)

    def expire_idle(self) -> list[str]:
        now = self.loop.time()
        gone = [pid for pid, p in self.performers.items() if now - p.last_heard > self.config.idle_timeout]
        for pid in gone:
            log.info("%s idle for %.0f s: dropped", pid, self.config.idle_timeout)
            self.goodbye(pid)
        return gone

    def status(self, detail: str | None = None, addresses: bool = True) -> dict:
        """The server at a glance: it always fits one datagram (the first STATUS_PERFORMERS
        performers, or the one named by `detail`); reply addresses only if `addresses`."""
        m = self.checkpoint.model.config
        chosen = [self.get(detail)] if detail is not None else list(self.performers.values())[:STATUS_PERFORMERS]
        listed = [p.status() for p in chosen]
        if not addresses:
            for entry in listed:
                entry.pop("output", None)
        return {
            "model": self.checkpoint.name, "codec": self.codec.name, "vocab": self.vocab,
            "cell": f"{m.layers}x{m.hidden} {m.cell}", "engine": self.engine.kind,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "steps": self.steps, "events_stepped": self.batched_events, "errors": self.errors,
            "recording": str(self.recorder.path) if self.recorder and self.recorder.path else None,
            "performers_total": len(self.performers), "max_performers": self.config.max_performers,
            "performers": listed, "midi": None,
            **{t.name: t.status() for t in self.transports},
        }

    @property
    def errors(self) -> int:
        """Bad messages, counted by the transports that refused them."""
        return sum(getattr(t, "errors", 0) for t in self.transports)

    def record(self, direction: str, performer: str, kind: str, values, source: str = "", seq=None,
               token: int | None = None) -> None:
        """One event in or out: into the session log, and to whoever watches."""
        if self.recorder is not None:
            self.recorder.record(direction, performer, kind, values, source, seq, token=token)
        for watch in self.watchers:
            watch(direction, performer, kind, values, source, seq)

    def attach(self, transport: Transport) -> None:
        """A transport that hands this conductor events (its status shows under its name)."""
        self.transports.append(transport)

    # ------------------------------------------------------------------ events in

    def play(self, performer_id: str, kind: str, values: tuple, origin: Origin = LOCAL) -> None:
        """A performer played an event; it is stepped at the next `flush`."""
        source = origin.source
        p = self.performers.get(performer_id)
        if p is None or (not origin.admin and p.owner != origin.owner):
            p = self.authorized(performer_id, origin)  # raises with the reason
        p.panicked = False
        if kind != self.adapter.kind:
            raise EventError(f"this model ({self.codec.name} codec) takes /ensemble/{self.adapter.kind}, "
                             f"not /ensemble/{kind}")
        if self.band is not None:  # the band's clock steps the model
            g = self.band.gesture(p.id, values)
            p.events_in += 1
            p.last_heard = self.loop.time()
            self.record("in", p.id, kind, (g,), source)
            return
        values = self.adapter.check(values)
        now = self.loop.time()
        dt = FIRST_DT if p.stream_time is None else now - p.stream_time
        token = self.adapter.token(dt, values) if p.style is None else p.style.hear(now, dt, *values)
        p.stream_time = now
        p.last_heard = now
        p.events_in += 1
        self.revision += 1
        self.record("in", p.id, kind, values, source, token=token)
        if p.mode == "respond":
            self._silence(p)  # the performer plays again: the machine stops
        elif p.mode == "auto" and p.next_event is not None:
            p.next_event.cancel()  # re-planned from the new state after the step
            p.next_event = None
        answered = False
        if p.mode == "duet" and not self.adapter.answers(values) and not p.queued:
            # a note-off is answered by ending the answer note: nothing the step makes is
            # needed, so it goes out now and the step follows (~0.1 ms sooner). Not when this
            # performer has an event still to step: its answer must come first.
            self._duet(p, values)
            answered = True
        self._queue(Pending(p, token, own=False, values=values, answered=answered))

    def _queue(self, e: Pending) -> None:
        self.pending.append(e)
        e.performer.queued += 1

    def _drop_pending(self, p: Performer) -> None:
        if p.queued:
            self.pending = [e for e in self.pending if e.performer is not p]
            p.queued = 0

    def backlogged(self) -> bool:
        """Enough events read for one turn of the loop: a transport stops reading (the rest
        wait in its socket) and the conductor steps these first, so one flood of
        datagrams never keeps the loop from its timers and its other performers for long."""
        return len(self.pending) >= MAX_PENDING

    def flush(self) -> None:
        """Step every performer with news, as few batched engine calls as possible: the
        k-th engine call takes each performer's k-th event (in the order they came)."""
        self._flush_soon = False
        while self.pending:
            pending, self.pending = self.pending, []
            if len(pending) == 1:  # the usual case: one event, nothing to group
                self._step(pending)
                continue
            batches: list[list[Pending]] = []
            nth: dict[int, int] = {}
            for e in pending:  # one event per performer per engine call, in linear time
                k = nth.get(e.performer.slot, 0)
                nth[e.performer.slot] = k + 1
                if k == len(batches):
                    batches.append([])
                batches[k].append(e)
            for batch in batches:
                self._step(batch)

    def _step(self, batch: list[Pending]) -> None:
        if len(batch) == 1:  # the usual case: no batch arrays to build and check
            logits = self.engine.step_one(batch[0].performer.slot, batch[0].token)[None]
        else:
            logits = self.engine.step([e.performer.slot for e in batch], [e.token for e in batch])
        self.steps += 1
        self.revision += 1
        self.batched_events += len(batch)
        for row, e in enumerate(batch):
            p = e.performer
            p.queued -= 1
            np.copyto(p.logits, logits[row])
            p.has_logits = True
            try:
                self._after_step(p, e)
            except Exception:  # a bug (or an output that fails) costs this answer, never the others'
                log.exception("internal error answering %s", p.id)

    def _flush_later(self) -> None:
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self.flush)

    def _present(self, p: Performer) -> bool:
        """Still this very performer (not one who left, nor a new one under the same id)."""
        return self.performers.get(p.id) is p

    def _after_step(self, p: Performer, e: Pending) -> None:
        if not self._present(p):
            return
        if e.own:
            if p.generating:
                self._plan_next(p)
            return
        if p.mode == "duet":
            if not e.answered:
                self._duet(p, e.values)
        elif p.mode == "respond":
            if p.silence is not None:  # several events in one flush (a chord): one timer
                p.silence.cancel()
            p.silence = self.loop.call_later(p.threshold, self._start_generating, p)
        elif p.mode == "auto":
            p.generating = True
            self._plan_next(p)

    # ------------------------------------------------------------------ the machine plays

    def _duet(self, p: Performer, values: tuple) -> None:
        """Answer at once: the performer's next event as the model expects it."""
        previous = p.extra.pop("duet_note", None)  # one answer note at a time: the last one ends now
        if not self.adapter.answers(values):
            if previous is not None:
                self.held.note(p, previous, 0)
            return
        if p.style is None:
            event = self.adapter.event(int(self.sampler(p.logits, p.settings, p.rng, self.duet_mask)))
        else:
            token = int(self.sampler(self._logits(p), p.settings, p.rng, p.style.duet_mask))
            event = OutEvent("note", 0.0, p.style.answer(token, self.loop.time()))
        if event.kind == "note":
            p.extra["duet_note"] = event.values[0]
        self._emit(p, event)
        # the last answer's note-off goes after the new answer, not before it: the player is
        # waiting for the new note, and outputs end notes by pitch (MIDI, Pd's [poly], the
        # page). The same pitch again was already ended by HeldNotes before it was struck.
        if previous is not None and not (event.kind == "note" and event.values[0] == previous):
            self.held.note(p, previous, 0)

    def _sample(self, p: Performer) -> int:
        if p.style is None:
            return int(self.sampler(p.logits, p.settings, p.rng, self.mask))
        return int(self.sampler(self._logits(p), p.settings, p.rng, p.style.mask))

    @staticmethod
    def _logits(p: Performer) -> np.ndarray:
        return p.style.steer(p.logits)

    def _start_generating(self, p: Performer) -> None:
        p.silence = None
        if not self._present(p) or self.band is not None or p.mode not in ("respond", "auto"):
            return  # gone, a band model (it plays on its clock), or no longer a playing mode
        p.generating = True
        if not p.has_logits:  # nothing heard yet: begin from a rest
            p.stream_time = self.loop.time()
            self._queue(Pending(p, self.adapter.start_token, own=True))
            self._flush_later()
            return
        self._plan_next(p)

    def _plan_next(self, p: Performer) -> None:
        """Sample the next machine event and schedule it at its predicted time."""
        if p.next_event is not None:  # one planned event per performer, ever
            p.next_event.cancel()
        token = self._sample(p)
        now = self.loop.time()
        if p.style is not None:  # at the performer's tempo, on their pulse, at their loudness
            event = p.style.place(token, p.stream_time, now)
            when = event.when
        else:
            event = self.adapter.event(token)
            when = max(now, (p.stream_time if p.stream_time is not None else now) + event.dt)
        p.next_event = self.loop.call_at(when, self._play_machine_event, p, token, event, when)

    def _play_machine_event(self, p: Performer, token: int, event, when: float) -> None:
        p.next_event = None
        if not p.generating or not self._present(p):
            return
        p.stream_time = when  # planned time, so timing does not drift
        if not (p.style is not None and event.values[1] > 0 and p.style.rests(p.rng)):
            self._emit(p, event)  # (a rest: not sounded; its note-off then finds nothing to end)
        self._queue(Pending(p, token, own=True))
        self._flush_later()

    # ------------------------------------------------------------------ events out

    def _emit(self, p: Performer, event) -> None:
        if event.kind == "note":
            if p.style is not None and not p.style.settings.overlap and event.values[1] > 0:
                self.held.all_off(p)  # one note at a time
            self.held.note(p, *event.values)
        else:
            self.send(p, event.kind, event.values)

    def send(self, p: Performer, kind: str, values: tuple) -> None:
        """One event out to the performer's output, numbered and recorded."""
        p.seq += 1
        p.events_out += 1
        p.output.send(p.id, kind, values, p.seq)
        self.record("out", p.id, kind, values, p.output.name, p.seq)

    # ------------------------------------------------------------------ control messages

    def handle(self, event: Event, origin: Origin = LOCAL):
        """Carry out one event from a transport; raises EventError/ControlError with the reason.

        `origin.owner` is bound to a performer id at hello; an `origin.admin` may steer any
        performer and everyone at once ("*", panic), anyone else only their own. Returns
        the status for a StatusRequest, else None."""
        if isinstance(event, Play):
            self.play(event.performer, event.kind, event.values, origin)
            return None
        if not isinstance(event, Hello):  # a hello changes nobody's pending events: they stay batched
            self.flush()  # events that came before a control message are answered before it
        if isinstance(event, StatusRequest):
            if event.performer is not None:
                self.authorized(event.performer, origin)
            return self.status(event.performer, event.addresses)
        self.revision += 1
        if isinstance(event, Hello):
            self.hello(event.performer, event.output, origin.source, event.mode, origin.owner)
            kind, values = "hello", [event.output.name]
        elif isinstance(event, SetMode):
            self.authorized(event.performer, origin)
            self.set_mode(event.performer, event.mode)
            kind, values = "mode", [event.mode]
        elif isinstance(event, SetParam):
            if event.performer == "*" and not origin.admin:
                raise ControlError("set for everyone (*) is only taken from this machine or the admin networks")
            if event.performer != "*":
                self.authorized(event.performer, origin)
            self.set_parameter(event.performer, event.name, event.value)
            kind, values = "set", [event.name, event.value]
        elif isinstance(event, Reset):
            self.authorized(event.performer, origin)
            self.reset(event.performer)
            kind, values = "reset", []
        elif isinstance(event, Goodbye):
            self.authorized(event.performer, origin)
            self.goodbye(event.performer)
            kind, values = "goodbye", []
        elif isinstance(event, Panic):
            if event.performer is None and not origin.admin:
                raise ControlError("panic for everyone is only taken from this machine or the admin networks; "
                                   "name your performer")
            if event.performer is not None:
                self.authorized(event.performer, origin)
            self.panic(event.performer)
            kind, values = "panic", []
        else:
            raise ControlError(f"unknown event {type(event).__name__}")
        self.record("in", getattr(event, "performer", None) or "*", kind, values, origin.source)
        return None

    # ------------------------------------------------------------------ snapshots

    def snapshot_data(self, clean: bool = False) -> tuple[list[dict], list[dict]]:
        """Every performer's state, copied now (on the loop). `clean`: written at shutdown, when
        nothing more can be sent, so sequence numbers may continue exactly from it."""
        performers, arrays = [], []
        now, wall = self.loop.time(), time.time()
        for p in self.performers.values():
            out = p.output
            performers.append({
                "id": p.id, "mode": p.mode, **p.settings_dict(), "seq": p.seq, "has_logits": p.has_logits,
                "output": getattr(out, "describe", lambda: {"name": out.name})(), "owner": p.owner,
                "rng": p.rng.bit_generator.state, "clean": clean,
                # wall-clock time of their last event: the pause across a restart counts too
                "last_event_wall": None if p.stream_time is None else wall - (now - p.stream_time),
                "style": p.style.settings.as_dict() if p.style is not None else None,
                "style_state": p.style.state(now) if p.style is not None else None,
            })
            arrays.append({**self.engine.get_state(p.slot), "logits": p.logits.copy()})
        return performers, arrays

    def save_snapshot(self, path, clean: bool = False) -> int:
        performers, arrays = self.snapshot_data(clean)
        snapshot.save(path, self.checkpoint.name, performers, arrays)
        return len(performers)

    def output_from(self, description: dict) -> Output:
        """A restored performer's output, rebuilt by the transport that made it."""
        for t in self.transports:
            out = t.output_from(description)
            if out is not None:
                return out
        raise ValueError(f"no transport running for output {description.get('name', description)!r}")

    def restore(self, path) -> tuple[int, int]:
        """Bring performers back from a snapshot: (restored, not restored). Each one's output
        first gets all-notes-off (notes sounding at a crash were never ended); numbering goes
        on above anything that could have been sent after a periodic snapshot."""
        meta, arrays = snapshot.load(path)
        if meta.get("model") != self.checkpoint.name:
            log.warning("snapshot %s was taken with model %s, serving %s", path, meta.get("model"), self.checkpoint.name)
        restored = failed = 0
        for info, state in zip(meta["performers"], arrays):
            pid = info.get("id") if isinstance(info, dict) else None
            try:
                p = self.hello(info["id"], self.output_from(info["output"]), mode=info["mode"], owner=info.get("owner"))
                self.engine.set_state(p.slot, {k: v for k, v in state.items() if k != "logits"})
                np.copyto(p.logits, state["logits"], casting="same_kind")
                for name in PARAMETERS:
                    if name in info:
                        self.set_parameter(p.id, name, info[name])
                seq = info["seq"]
                if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
                    raise ValueError(f"seq {seq!r}")
                p.rng.bit_generator.state = info["rng"]
                if info["mode"] not in MODES:
                    raise ValueError(f"mode {info['mode']!r}")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("snapshot %s: performer %r not restored (%s)", path, pid, exc)
                if isinstance(pid, str) and pid in self.performers:
                    self.goodbye(pid)
                failed += 1
                continue
            p.has_logits = bool(info["has_logits"])
            p.seq = seq if info.get("clean") else seq + SEQ_MARGIN
            last = info.get("last_event_wall")
            if isinstance(last, (int, float)) and not isinstance(last, bool):
                p.stream_time = self.loop.time() - max(0.0, time.time() - last)
            self.all_notes_off(p)
            for name, value in (info.get("style") or {}).items() if p.style is not None else ():
                try:
                    p.style.set(name, value)
                except ValueError as exc:
                    log.error("snapshot %s: %s's style setting not restored (%s)", path, p.id, exc)
            if p.style is not None and info.get("style_state"):
                try:
                    p.style.load_state(info["style_state"], self.loop.time())
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("snapshot %s: %s's tempo and dynamics not restored (%s)", path, p.id, exc)
                    p.style.reset()
            restored += 1
        return restored, failed

    def all_notes_off(self, p: Performer) -> None:
        """End any note that may sound on this performer's output, tracked or not."""
        if self.adapter.kind != "note":
            return
        off = getattr(p.output, "all_notes_off", None)
        if off is not None:
            off()
            return
        for pitch in range(getattr(self.codec, "low_pitch", 0), getattr(self.codec, "high_pitch", 127) + 1):
            p.seq += 1
            p.output.send(p.id, "note", (pitch, 0), p.seq)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """End every sounding note and stop every machine event (the caller snapshots first)."""
        for p in self.performers.values():
            self._silence(p)
        if self.band is not None:
            self.band.close()

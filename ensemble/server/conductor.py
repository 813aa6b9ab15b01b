"""The conductor: performers, modes, batching and control, on one asyncio loop.

Transports (OSC in `ensemble.io.osc`, MIDI in `ensemble.io.midi`) hand it messages;
it turns each played event into a token, steps every performer with news in ONE
batched engine call (`flush`), and answers by mode:

- ``listen``: record only.
- ``duet``: answer every event at once with the model's prediction of the performer's
  next event (the answer is not fed back: the state is the performer's own playing).
  With notes, a note-on is answered by the note the model expects next (note-offs are
  masked from that draw) and a note-off ends that answer: one reply per event.
- ``respond``: call and response. After `threshold` seconds of silence the machine
  continues in the performer's style, event by event at the predicted times, each
  played event fed back into the state, until the performer plays again.
- ``auto``: the machine plays on from its own output all the time; the performer's
  events are fed in too and steer it.

Everything the conductor does happens in loop callbacks; nothing blocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ensemble.engine import Sampler, make_engine
from ensemble.sampling import SamplingSettings, forbidden_mask
from ensemble.server import snapshot
from ensemble.server.config import MODES, ServerConfig
from ensemble.server.events import EventError, OutEvent, adapter_for
from ensemble.server.performer import Output, Performer
from ensemble.server.recorder import Recorder
from ensemble.server.scheduler import HeldNotes, cancel_machine
from ensemble.server.style import SETTINGS as STYLE_SETTINGS, Style

log = logging.getLogger("ensemble.server")

FIRST_DT = 4.0  # a performer's first event: "after a long pause"

# /ensemble/set parameters and the values each accepts
PARAMETERS = {
    "temperature": lambda v: v > 0,
    "top_p": lambda v: 0 < v <= 1,
    "top_k": lambda v: v >= 0 and float(v).is_integer(),
    "threshold": lambda v: v >= 0,
    "max_note": lambda v: v > 0,
}


class ControlError(ValueError):
    """A control message that cannot be carried out; its text goes into /ensemble/error."""


@dataclass
class Pending:
    performer: Performer
    token: int
    own: bool  # True: the machine's own event, fed back; False: the performer played it
    values: tuple = ()


class Conductor:
    def __init__(self, checkpoint, config: ServerConfig, loop: asyncio.AbstractEventLoop | None = None):
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
        self.held = HeldNotes(self.loop, self._send)
        self.recorder: Recorder | None = None
        self.midi = None  # the MIDI layer, when one runs
        self.reply: Callable[[tuple, str, list], None] = lambda addr, address, args: None
        self.band = None
        if self.codec.name == "gestures":
            from ensemble.server.band import Band

            self.band = Band(self, config.gesture_interval)
        self.started = time.monotonic()
        self.steps = 0
        self.batched_events = 0
        self.errors = 0

    # ------------------------------------------------------------------ performers

    def _rng(self, performer_id: str) -> np.random.Generator:
        seed = self.config.seed
        if seed is None:
            return np.random.default_rng()
        return np.random.default_rng([seed, zlib.crc32(performer_id.encode())])

    def hello(self, performer_id: str, output: Output, source: str = "", mode: str | None = None) -> Performer:
        """Register a performer (again): a known one keeps their state and gets the new output."""
        p = self.performers.get(performer_id)
        if p is not None:
            if p.output.name != output.name:
                self.held.all_off(p)
                p.output = output
            p.last_heard = self.loop.time()
            return p
        cfg = self.config
        if len(self.engine.slots_in_use) >= self.engine.capacity:
            self.engine.grow(self.engine.capacity * 2)
        p = Performer(
            id=performer_id, slot=self.engine.alloc_slot(), output=output,
            mode=mode or cfg.default_mode,
            settings=SamplingSettings(cfg.temperature, cfg.top_k, cfg.top_p),
            threshold=cfg.threshold, max_note=cfg.max_note, rng=self._rng(performer_id),
            logits=np.zeros(self.vocab, dtype=np.float32), last_heard=self.loop.time(), source=source,
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

    def goodbye(self, performer_id: str) -> None:
        p = self.get(performer_id)
        self._silence(p)
        self.engine.free_slot(p.slot)
        del self.performers[performer_id]
        if self.band is not None:
            self.band.leave(performer_id)
        self.pending = [e for e in self.pending if e.performer is not p]
        log.info("goodbye %s", performer_id)

    def reset(self, performer_id: str) -> None:
        p = self.get(performer_id)
        self._silence(p)
        self.engine.reset_slot(p.slot)
        self.pending = [e for e in self.pending if e.performer is not p]
        p.has_logits, p.stream_time = False, None
        if p.style is not None:
            p.style.reset()

    def set_mode(self, performer_id: str, mode: str) -> None:
        if mode not in MODES:
            raise ControlError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        p = self.get(performer_id)
        self._silence(p)
        p.mode = mode
        if mode == "auto":
            self._start_generating(p)

    def set_parameter(self, performer_id: str, name: str, value: float | str) -> None:
        if name in STYLE_SETTINGS and self.style_tables is not None:
            targets = list(self.performers.values()) if performer_id == "*" else [self.get(performer_id)]
            for p in targets:
                try:
                    p.style.set(name, value)
                except ValueError as exc:
                    raise ControlError(str(exc)) from None
            return
        check = PARAMETERS.get(name)
        if check is None:
            known = list(PARAMETERS) + (list(STYLE_SETTINGS) if self.style_tables is not None else [])
            raise ControlError(f"unknown parameter {name!r}; known: {', '.join(known)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                or not check(value):
            raise ControlError(f"{name} {value!r} is out of range")
        targets = list(self.performers.values()) if performer_id == "*" else [self.get(performer_id)]
        for p in targets:
            if name in ("temperature", "top_p", "top_k"):
                setattr(p.settings, name, int(value) if name == "top_k" else float(value))
            else:
                setattr(p, name, float(value))

    def panic(self) -> int:
        """Silence everything now: pending events cancelled, every sounding note ended."""
        count = 0
        for p in self.performers.values():
            count += self._silence(p)
        log.warning("panic: %d notes ended", count)
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

    def status(self) -> dict:
        m = self.checkpoint.model.config
        return {
            "model": self.checkpoint.name, "codec": self.codec.name, "vocab": self.vocab,
            "cell": f"{m.layers}x{m.hidden} {m.cell}", "engine": self.engine.kind,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "steps": self.steps, "events_stepped": self.batched_events, "errors": self.errors,
            "recording": str(self.recorder.path) if self.recorder and self.recorder.path else None,
            "performers": [p.status() for p in self.performers.values()],
            "midi": self.midi.status() if self.midi else None,
        }

    # ------------------------------------------------------------------ events in

    def play(self, performer_id: str, kind: str, values: tuple, source: str = "") -> None:
        """A performer played an event; it is stepped at the next `flush`."""
        p = self.get(performer_id)
        if kind != self.adapter.kind:
            raise EventError(f"this model ({self.codec.name} codec) takes /ensemble/{self.adapter.kind}, "
                             f"not /ensemble/{kind}")
        if self.band is not None:  # the band's clock steps the model
            g = self.band.gesture(p.id, values)
            p.events_in += 1
            p.last_heard = self.loop.time()
            if self.recorder:
                self.recorder.record("in", p.id, kind, (g,), source)
            return
        values = self.adapter.check(values)
        now = self.loop.time()
        dt = FIRST_DT if p.stream_time is None else now - p.stream_time
        token = self.adapter.token(dt, values) if p.style is None else p.style.hear(now, dt, *values)
        p.stream_time = now
        p.last_heard = now
        p.events_in += 1
        if self.recorder:
            self.recorder.record("in", p.id, kind, values, source, token=token)
        if p.mode == "respond":
            self._silence(p)  # the performer plays again: the machine stops
        elif p.mode == "auto" and p.next_event is not None:
            p.next_event.cancel()  # re-planned from the new state after the step
            p.next_event = None
        self.pending.append(Pending(p, token, own=False, values=values))

    def flush(self) -> None:
        """Step every performer with news, as few batched engine calls as possible."""
        self._flush_soon = False
        while self.pending:
            batch, rest, seen = [], [], set()
            for e in self.pending:  # one event per performer per engine call
                (rest if e.performer.slot in seen else batch).append(e)
                seen.add(e.performer.slot)
            self.pending = rest
            logits = self.engine.step([e.performer.slot for e in batch], [e.token for e in batch])
            self.steps += 1
            self.batched_events += len(batch)
            for row, e in enumerate(batch):
                p = e.performer
                np.copyto(p.logits, logits[row])
                p.has_logits = True
                self._after_step(p, e)

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
        answer = p.extra.pop("duet_note", None)
        if answer is not None:  # one answer note at a time: the last one ends now
            self.held.note(p, answer, 0)
        if not self.adapter.answers(values):
            return
        if p.style is None:
            event = self.adapter.event(int(self.sampler(p.logits, p.settings, p.rng, self.duet_mask)))
        else:
            token = int(self.sampler(self._logits(p), p.settings, p.rng, p.style.duet_mask))
            event = OutEvent("note", 0.0, p.style.answer(token, self.loop.time()))
        if event.kind == "note":
            p.extra["duet_note"] = event.values[0]
        self._emit(p, event)

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
            self.pending.append(Pending(p, self.adapter.start_token, own=True))
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
        self._emit(p, event)
        self.pending.append(Pending(p, token, own=True))
        self._flush_later()

    # ------------------------------------------------------------------ events out

    def _emit(self, p: Performer, event) -> None:
        if event.kind == "note":
            if p.style is not None and not p.style.settings.overlap and event.values[1] > 0:
                self.held.all_off(p)  # one note at a time
            self.held.note(p, *event.values)
        else:
            self._send(p, event.kind, event.values)

    def _send(self, p: Performer, kind: str, values: tuple) -> None:
        p.seq += 1
        p.events_out += 1
        p.output.send(p.id, kind, values, p.seq)
        if self.recorder:
            self.recorder.record("out", p.id, kind, values, p.output.name, p.seq)

    # ------------------------------------------------------------------ control messages

    def control(self, address: str, args: list, reply_to: tuple | None, source: str,
                make_output: Callable[[str, list], Output] | None = None) -> None:
        """Carry out one /ensemble/... message; raises EventError/ControlError with the reason."""
        verb = address.rsplit("/", 1)[-1]
        if verb in ("note", "touch", "gesture"):
            self.play(args[0], verb, tuple(args[1:]), source)
            return
        self.flush()  # events that came before a control message are answered before it
        if verb == "hello":
            if make_output is None:
                raise ControlError("hello needs a reply address")
            self.hello(args[0], make_output(args[0], args[1:]), source)
        elif verb == "mode":
            self.set_mode(args[0], args[1])
        elif verb == "set":
            self.set_parameter(args[0], args[1], args[2])
        elif verb == "reset":
            self.reset(args[0])
        elif verb == "goodbye":
            self.goodbye(args[0])
        elif verb == "panic":
            self.panic()
        elif verb == "status":
            if reply_to is not None:
                self.reply(reply_to, "/ensemble/status", [json.dumps(self.status())])
        else:
            raise ControlError(f"unknown address {address}")
        if self.recorder and verb != "status":
            self.recorder.record("in", args[0] if args else "*", verb, args[1:], source)

    # ------------------------------------------------------------------ snapshots

    def snapshot_data(self) -> tuple[list[dict], list[dict]]:
        performers, arrays = [], []
        for p in self.performers.values():
            out = p.output
            performers.append({
                "id": p.id, "mode": p.mode, **p.settings_dict(), "seq": p.seq, "has_logits": p.has_logits,
                "output": getattr(out, "describe", lambda: {"name": out.name})(),
                "rng": p.rng.bit_generator.state,
                "since_last": None if p.stream_time is None else self.loop.time() - p.stream_time,
                "style": p.style.settings.as_dict() if p.style is not None else None,
                "style_state": p.style.state(self.loop.time()) if p.style is not None else None,
            })
            arrays.append({**self.engine.get_state(p.slot), "logits": p.logits.copy()})
        return performers, arrays

    def save_snapshot(self, path) -> int:
        performers, arrays = self.snapshot_data()
        snapshot.save(path, self.checkpoint.name, performers, arrays)
        return len(performers)

    def restore(self, path, make_output: Callable[[dict], Output]) -> int:
        meta, arrays = snapshot.load(path)
        if meta.get("model") != self.checkpoint.name:
            log.warning("snapshot %s was taken with model %s, serving %s", path, meta.get("model"), self.checkpoint.name)
        restored = 0
        for info, state in zip(meta["performers"], arrays):
            try:
                p = self.hello(info["id"], make_output(info["output"]), mode=info["mode"])
                self.engine.set_state(p.slot, {k: v for k, v in state.items() if k != "logits"})
                np.copyto(p.logits, state["logits"])
            except (ValueError, KeyError, TypeError) as exc:
                log.error("snapshot %s: performer %r not restored (%s)", path, info.get("id"), exc)
                if info.get("id") in self.performers:
                    self.goodbye(info["id"])
                continue
            p.has_logits = info["has_logits"]
            p.seq = info["seq"]
            p.settings = SamplingSettings(info["temperature"], int(info["top_k"]), info["top_p"])
            p.threshold, p.max_note = info["threshold"], info["max_note"]
            p.rng.bit_generator.state = info["rng"]
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
            if info.get("since_last") is not None:
                p.stream_time = self.loop.time() - info["since_last"]
            restored += 1
        return restored

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """End every sounding note and stop every machine event (the caller snapshots first)."""
        for p in self.performers.values():
            self._silence(p)
        if self.band is not None:
            self.band.close()

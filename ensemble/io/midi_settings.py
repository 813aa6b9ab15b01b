"""The [midi] settings table: checked once, into typed settings and routes.

Which input port and channel is which performer, where their predictions go, which
CC does what. Every key is checked when the server starts (one error line naming the
key); see `ensemble.io.midi` for the table's keys and what they mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ensemble.errors import UserError
from ensemble.messages import MODES
from ensemble.server.style import SETTINGS as STYLE_SETTINGS
from ensemble.settings import check, setting

VIRTUAL_IN, VIRTUAL_OUT = "ensemble in", "ensemble out"
KNOWN_KEYS = {"inputs", "outputs", "virtual", "api", "thru", "feedback_ms", "poll_s", "mode",
              "performers", "controls", "optional"}
# sampling and mode, then every style setting of `ensemble.server.style` (notes models)
CONTROL_ACTIONS = ("temperature", "top_p", "threshold", "mode", "reset", "panic", *STYLE_SETTINGS)

@dataclass(frozen=True)
class Route:
    """Where one input channel goes: its performer, and where that performer's MIDI goes."""

    performer: str
    mode: str | None
    output: str | None   # an output port as named in `outputs`; None: no MIDI output
    channel: int         # 1..16


@dataclass
class MidiSettings:
    """Typed and range-checked by the same validator as the server's settings."""

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    virtual: bool = False
    api: str | None = None
    thru: bool = False
    feedback_ms: float = setting(20.0, low=0, high=1000)
    poll_s: float = setting(2.0, low=0.001, high=3600)
    mode: str | None = setting(None, choices=MODES)
    performers: dict = field(default_factory=dict)
    controls: dict = field(default_factory=dict)  # CC number -> action
    optional: bool = False  # no MIDI system: go on with OSC only instead of failing

    @property
    def all_inputs(self) -> list[str]:
        return self.inputs + ([VIRTUAL_IN] if self.virtual else [])

    @property
    def all_outputs(self) -> list[str]:
        return self.outputs + ([VIRTUAL_OUT] if self.virtual else [])


def _names(value, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"[midi] {key} must be a list of port names, got {value!r}")
    return list(dict.fromkeys(value))


def _channel(value, where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
        raise UserError(f"[midi] {where}: a MIDI channel is 1..16, got {value!r}")
    return value


def _mode(value, where: str) -> str | None:
    if value is not None and value not in MODES:
        raise UserError(f"[midi] {where}: mode must be one of {', '.join(MODES)}, got {value!r}")
    return value


def parse_settings(table: dict | None) -> MidiSettings:
    """The [midi] table (merged with the command line by `ensemble serve`), checked."""
    table = dict(table or {})
    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        raise UserError(f"[midi]: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KEYS))})")
    s = MidiSettings(**{k: table[k] for k in ("virtual", "api", "thru", "feedback_ms", "poll_s", "mode", "optional")
                        if k in table})
    s.inputs = _names(table.get("inputs", []), "inputs")
    s.outputs = _names(table.get("outputs", []), "outputs")
    check(s, "[midi]")
    if s.api is not None and not s.api:
        raise UserError("[midi] api must be a name such as 'alsa' or 'jack', got ''")

    controls = table.get("controls", {})
    if not isinstance(controls, dict):
        raise UserError(f"[midi.controls] must be a table of action = CC number, got {controls!r}")
    for action, cc in controls.items():
        if action not in CONTROL_ACTIONS:
            raise UserError(f"[midi.controls] unknown action {action!r} (known: {', '.join(CONTROL_ACTIONS)})")
        if isinstance(cc, bool) or not isinstance(cc, int) or not 0 <= cc <= 127:
            raise UserError(f"[midi.controls] {action} must be a CC number 0..127, got {cc!r}")
        if cc in s.controls:
            raise UserError(f"[midi.controls] CC {cc} is given to both {s.controls[cc]} and {action}")
        s.controls[cc] = action

    performers = table.get("performers", {})
    if not isinstance(performers, dict):
        raise UserError(f"[midi.performers] must be a table, got {performers!r}")
    for key, value in performers.items():
        port, _, ch = str(key).rpartition(":")
        ch = _channel(ch, f"performers {key!r}")
        if port and port not in s.all_inputs:
            raise UserError(f"[midi.performers] {key!r}: {port!r} is not one of the inputs "
                            f"({', '.join(s.all_inputs) or 'none given'})")
        if isinstance(value, str):
            value = {"id": value}
        if not isinstance(value, dict) or not set(value) <= {"id", "mode", "output", "channel"}:
            raise UserError(f"[midi.performers] {key!r} must be a performer id or a table of "
                            f"id, mode, output, channel; got {value!r}")
        if "id" in value and (not isinstance(value["id"], str) or not value["id"]):
            raise UserError(f"[midi.performers] {key!r}: id must be a non-empty string")
        _mode(value.get("mode"), f"performers {key!r}")
        if "channel" in value:
            _channel(value["channel"], f"performers {key!r}")
        if "output" in value and value["output"] not in s.all_outputs:
            raise UserError(f"[midi.performers] {key!r}: output {value['output']!r} is not one of the outputs "
                            f"({', '.join(s.all_outputs) or 'none given'})")
        s.performers[(port or None, ch)] = value
    return s


def route_for(settings: MidiSettings, port: str, channel: int) -> Route:
    """The performer playing on `channel` (1..16) of input `port` (as named in the settings)."""
    entry = settings.performers.get((port, channel)) or settings.performers.get((None, channel)) or {}
    outputs = settings.all_outputs
    return Route(
        performer=entry.get("id", f"midi:{port}:{channel}"),
        mode=entry.get("mode", settings.mode),
        output=entry.get("output", outputs[0] if outputs else None),
        channel=int(entry.get("channel", channel)),
    )


def control_value(action: str, value: int):
    """What a CC value 0..127 means for an action."""
    if action == "temperature":
        return 0.1 + 1.9 * value / 127
    if action == "top_p":
        return 0.05 + 0.95 * value / 127
    if action == "threshold":
        return 4.0 * value / 127
    if action == "mode":
        return MODES[min(value // 32, len(MODES) - 1)]
    if action in ("low", "high"):
        return value  # the pitch itself
    if action in ("vel_low", "vel_high"):
        return max(1, value)
    if action == "tonal":
        return 8.0 * value / 127
    if action == "density":  # a knob fully open is no limit; below it 0.5..16 notes a second
        return 0.0 if value == 127 else 0.5 + 15.5 * value / 126
    if action == "rest":
        return value / 127
    if action == "scale":  # a switch: the player's own scale, or none
        return "auto" if value >= 64 else "off"
    if action in ("overlap", "follow"):
        return int(value >= 64)
    return value >= 64  # reset, panic: a button


# ---------------------------------------------------------------------------- backends

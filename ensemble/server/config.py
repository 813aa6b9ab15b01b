"""Server settings: one typed dataclass, filled from defaults, a TOML file and the CLI.

The same keys work in `--config FILE.toml` (top level, or under `[server]`) and as
command-line options (`--reply-port 6006` is `reply_port = 6006`); the command line wins.
"""

from __future__ import annotations

import ipaddress
import math
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ensemble.errors import UserError

MODES = ("listen", "duet", "respond", "auto")
def _default_model() -> Path:
    """The bundled model: in the source tree (editable installs), else where pip put it."""
    here = Path(__file__).resolve().parents[2] / "models" / "folk-notes"
    installed = Path(sys.prefix) / "share" / "ensemble" / "models" / "folk-notes"
    return here if here.is_dir() or not installed.is_dir() else installed


DEFAULT_MODEL = _default_model()


@dataclass
class ServerConfig:
    model: str = str(DEFAULT_MODEL)
    host: str = "127.0.0.1"
    port: int = 5005
    reply_port: int = 5006               # where predictions go when a hello names no port
    record: str | None = "recordings"    # session logs; None or "" to record nothing
    snapshot: str | None = "ensemble-snapshot.npz"  # performer states across restarts
    snapshot_every: float = 5.0          # seconds between snapshots
    restore: bool = False
    allow: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    rate_limit: float = 1000.0           # messages per second per source when bound wider
    log_level: str = "info"
    default_mode: str = "respond"
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 0
    threshold: float = 1.5               # respond: seconds of silence before answering
    max_note: float = 2.0                # seconds: no predicted note lasts longer
    gesture_interval: float = 1.0        # gesture models: seconds between band steps
    idle_timeout: float = 3600.0         # seconds without events before a performer is dropped
    engine: str = "numpy"
    seed: int | None = None              # fixed seed: predictions reproducible per performer
    midi: dict = field(default_factory=dict)  # [midi] table, read by the MIDI layer
    style: dict = field(default_factory=dict)  # [style] table: every performer's style settings at hello

    def _check_types(self) -> None:
        """TOML can hold any type: each setting is checked before it is used."""
        def fail(name, want):
            raise UserError(f"{name} must be {want}, got {getattr(self, name)!r}")

        for name in ("port", "reply_port", "top_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                fail(name, "an integer")
        for name in ("snapshot_every", "rate_limit", "temperature", "top_p", "threshold", "max_note",
                     "gesture_interval", "idle_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                fail(name, "a finite number")
            setattr(self, name, float(v))
        for name in ("model", "host", "log_level", "default_mode", "engine"):
            if not isinstance(getattr(self, name), str):
                fail(name, "a string")
        for name in ("record", "snapshot"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                fail(name, 'a path string ("" for none)')
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            fail("seed", "an integer")
        if not isinstance(self.restore, bool):
            fail("restore", "true or false")
        if not isinstance(self.allow, list) or not all(isinstance(n, str) for n in self.allow):
            fail("allow", 'a list of networks, e.g. ["192.168.1.0/24"]')
        if not isinstance(self.midi, dict):
            fail("midi", "a table")
        if not isinstance(self.style, dict):
            fail("style", "a table")

    def validate(self) -> None:
        self._check_types()
        if self.engine not in ("numpy", "torch"):
            raise UserError(f"engine must be numpy or torch, got {self.engine!r}")
        if self.default_mode not in MODES:
            raise UserError(f"default_mode must be one of {', '.join(MODES)}, got {self.default_mode!r}")
        for name in ("port", "reply_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise UserError(f"{name} must be 0..65535, got {value}")
        if not self.temperature > 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise UserError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if self.threshold < 0 or self.max_note <= 0 or self.snapshot_every <= 0:
            raise UserError("threshold must be >= 0, max_note and snapshot_every > 0")
        from ensemble.server.style import StyleSettings

        try:
            StyleSettings.from_dict(self.style)
        except ValueError as exc:
            raise UserError(f"style: {exc}") from None
        try:
            self.networks()
        except ValueError as exc:
            raise UserError(f"allow: {exc}") from None

    def networks(self):
        return [ipaddress.ip_network(n, strict=False) for n in self.allow]

    @property
    def loopback_only(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


def load_toml(path) -> dict:
    """The settings in a TOML file, checked against the known keys."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--config {path}: not valid TOML ({exc})") from None
    if "server" in data:
        data = {**{k: v for k, v in data.items() if k != "server"}, **data["server"]}
    known = {f.name for f in fields(ServerConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"--config {path}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return data


def make_config(file_values: dict, cli_values: dict) -> ServerConfig:
    values = {**file_values, **{k: v for k, v in cli_values.items() if v is not None}}
    try:
        cfg = ServerConfig(**values)
    except TypeError as exc:
        raise UserError(f"bad server settings: {exc}") from None
    cfg.validate()
    return cfg

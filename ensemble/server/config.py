"""Server settings: one typed dataclass, filled from defaults, a TOML file and the CLI.

The same keys work in `--config FILE.toml` (top level, or under `[server]`) and as
command-line options (`--reply-port 6006` is `reply_port = 6006`); the command line wins.
"""

from __future__ import annotations

import ipaddress
import sys
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from ensemble.errors import UserError
from ensemble.settings import check, setting

from ensemble.messages import MODES  # noqa: E402  (re-exported: the CLI and TOML check modes here)
def _default_model() -> Path:
    """The bundled model: in the source tree (editable installs), else where pip put it."""
    here = Path(__file__).resolve().parents[2] / "models" / "folk-notes"
    installed = Path(sys.prefix) / "share" / "ensemble" / "models" / "folk-notes"
    return here if here.is_dir() or not installed.is_dir() else installed


DEFAULT_MODEL = _default_model()
DEFAULT_CLASSIFIER = DEFAULT_MODEL.parent / "gesture-classifier"  # bundled next to folk-notes


LOOPBACK = ["127.0.0.0/8", "::1/128"]


@dataclass
class ServerConfig:
    model: str = str(DEFAULT_MODEL)
    host: str = "127.0.0.1"
    port: int = setting(5005, low=0, high=65535)
    reply_port: int = setting(5006, low=1, high=65535)  # where predictions go when a hello names no port
    record: str | None = "recordings"    # session logs; None or "" to record nothing
    snapshot: str | None = "ensemble-snapshot.npz"  # performer states across restarts
    snapshot_every: float = setting(5.0, low=0.5, high=86400)  # seconds between snapshots
    restore: bool = False
    allow: list[str] = setting(default_factory=lambda: list(LOOPBACK))  # who is heard when bound wider
    admin: list[str] = setting(default_factory=lambda: list(LOOPBACK))  # who may control everyone ("*", panic)
    shared: list[str] = setting(default_factory=list)  # performer ids any allowed source may take over
    rate_limit: float = setting(1000.0, low=0, low_open=True)   # messages/s per source address and port (bound wider)
    performer_rate: float = setting(500.0, low=0, low_open=True)  # events/s per performer (bound wider)
    error_rate: float = setting(5.0, low=0, low_open=True)  # error replies and log lines/s per source
    max_performers: int = setting(64, low=1, high=4096)
    resolve_timeout: float = setting(2.0, low=0.05, high=30)  # seconds for a hello's host name lookup
    log_level: str = setting("info", choices=("debug", "info", "warning", "error"))
    default_mode: str = setting("respond", choices=MODES)
    temperature: float = setting(1.0, low=0, low_open=True, high=100)
    top_p: float = setting(0.95, low=0, low_open=True, high=1)
    top_k: int = setting(0, low=0)
    threshold: float = setting(1.5, low=0, high=3600)    # respond: seconds of silence before answering
    max_note: float = setting(2.0, low=0, low_open=True, high=60)  # seconds: no predicted note lasts longer
    gesture_interval: float = setting(1.0, low=0.05, high=60)  # gesture models: seconds between band steps
    idle_timeout: float = setting(3600.0, low=1, high=7 * 86400)  # seconds without events before a performer is dropped
    engine: str = setting("numpy", choices=("numpy", "int8", "torch"))
    seed: int | None = None              # fixed seed: predictions reproducible per performer
    midi: dict = setting(default_factory=dict)  # [midi] table, read by the MIDI layer
    style: dict = setting(default_factory=dict)  # [style] table: every performer's style settings at hello
    web: str | None = None               # "[HOST:]PORT": the browser page and its WebSocket (host: loopback)
    web_rate: float = setting(200.0, low=0, low_open=True)  # WebSocket messages/s per browser connection
    web_connections: int = setting(32, low=1, high=1024)    # browser connections at once
    # Metatone iPad apps (Neural iPad Band): their own UDP port (None: off), see ensemble.io.metatone
    metatone: int | None = setting(None, low=0, high=65535)
    metatone_reply_port: int = setting(51200, low=0, high=65535)  # the apps listen here; 0: the sender's port
    metatone_classifier: str = str(DEFAULT_CLASSIFIER)  # gesture-classifier model folder
    metatone_pd: str | None = None  # HOST:PORT that also gets the band's touches (ensemble-touch.pd: 127.0.0.1:5007)
    metatone_bonjour: str = setting("auto", choices=("auto", "on", "off"))  # auto: advertise when bound beyond loopback

    def validate(self, where: str = "") -> None:
        """Every value type- and range-checked before anything starts (one line naming the key)."""
        self.log_level = self.log_level.lower() if isinstance(self.log_level, str) else self.log_level
        check(self, where)
        for key in ("allow", "admin"):
            try:
                [ipaddress.ip_network(n, strict=False) for n in getattr(self, key)]
            except ValueError as exc:
                raise UserError(f"{where + ': ' if where else ''}{key}: {exc}") from None
        from ensemble.server.style import StyleSettings

        try:
            StyleSettings.from_dict(self.style)
        except ValueError as exc:
            raise UserError(f"{where + ': ' if where else ''}style: {exc}") from None
        if self.web is not None:
            self.web_address  # noqa: B018  (raises UserError naming the key)

    @property
    def web_address(self) -> tuple[str, int] | None:
        """`web = "[HOST:]PORT"` as (host, port); the host defaults to loopback, like OSC's."""
        if self.web is None:
            return None
        host, _, port = str(self.web).rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise UserError(f"web: {self.web!r} is not [HOST:]PORT (e.g. 8080 or 0.0.0.0:8080)")
        return host, int(port)

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
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"--config {path}: not a text file (byte {exc.start} is not UTF-8)") from None
    except OSError as exc:
        raise UserError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--config {path}: not valid TOML ({exc})") from None
    if "server" in data:
        if not isinstance(data["server"], dict):
            raise UserError(f"--config {path}: server must be a table ([server])")
        data = {**{k: v for k, v in data.items() if k != "server"}, **data["server"]}
    known = {f.name for f in fields(ServerConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"--config {path}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    ServerConfig(**data).validate(f"--config {path}")  # a bad value names the file and the key
    return data


def make_config(file_values: dict, cli_values: dict) -> ServerConfig:
    values = {**file_values, **{k: v for k, v in cli_values.items() if v is not None}}
    try:
        cfg = ServerConfig(**values)
    except TypeError as exc:
        raise UserError(f"bad server settings: {exc}") from None
    cfg.validate()
    return cfg

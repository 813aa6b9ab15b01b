"""`ensemble serve`: the real-time server, OSC (and MIDI) in and out, on one asyncio loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from pathlib import Path

from ensemble import checkpoint
from ensemble.errors import UserError
from ensemble.server import snapshot
from ensemble.server.config import MODES, ServerConfig, load_toml, make_config
from ensemble.server.snapshot import SnapshotError

log = logging.getLogger("ensemble.server")


async def serve(cfg: ServerConfig, ready=None, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set). `ready(info)` is called once listening."""
    from ensemble.io.osc import OscServer
    from ensemble.server.conductor import Conductor
    from ensemble.server.recorder import Recorder

    from ensemble.engine import set_blas_threads

    # one thread each: a live step is far too small to split, and idle BLAS threads
    # spinning on the other core would steal it from the OS, the network and the peers
    if cfg.engine == "torch":  # the reference engine; the live path never imports torch
        import torch

        torch.set_num_threads(1)
    set_blas_threads(1)
    loop = asyncio.get_running_loop()
    ckpt = checkpoint.load_live(cfg.model)  # numpy weights: no torch
    m = ckpt.model.config
    recorder = None
    if cfg.record:
        recorder = Recorder(cfg.record, {"model": ckpt.name, "codec": ckpt.codec.describe(),
                                         "cell": f"{m.layers}x{m.hidden} {m.cell}"}, loop)
    conductor = Conductor(ckpt, cfg, loop, recorder)
    midi = None
    if cfg.midi.get("inputs") or cfg.midi.get("outputs") or cfg.midi.get("virtual"):
        from ensemble.io.midi import MidiLayer

        midi = MidiLayer(conductor, cfg.midi)  # a bad [midi] table fails here, before anything opens
    osc = OscServer(conductor, cfg)
    try:
        host, port = osc.start()
    except OSError as exc:
        raise UserError(f"cannot listen on udp {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
    if midi is not None:
        try:
            midi.start()  # no MIDI system: a UserError, unless [midi] optional
        except UserError:
            osc.close()
            raise
    web = None
    if cfg.web is not None:
        from ensemble.io.web import WebServer

        web = WebServer(conductor, cfg)
        try:
            web_host, web_port = await web.start()
        except OSError as exc:
            osc.close()
            if midi is not None:
                midi.close()
            raise UserError(f"cannot listen on tcp {cfg.web}: {exc.strerror or exc}") from None
    metatone = None
    if cfg.metatone is not None:
        from ensemble.io.metatone import MetatoneServer

        try:
            metatone = MetatoneServer(conductor, cfg)
            metatone.start()
        except OSError as exc:
            osc.close()
            raise UserError(f"cannot listen for Metatone apps on udp {cfg.host}:{cfg.metatone}: "
                            f"{exc.strerror or exc}") from None
        except (UserError, ValueError) as exc:
            osc.close()
            raise UserError(f"--metatone: {exc}") from None
    kept = restore_or_keep(conductor, cfg)
    if recorder is not None:
        recorder.open()

    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), Windows
            pass

    snapshots = PeriodicSnapshots(conductor, cfg, loop)
    # everything loaded so far (model, torch, codecs) lives for the whole gig: keep it out
    # of the garbage collector's scans, which would otherwise pause the loop now and then
    gc.collect()
    gc.freeze()
    info = {"host": host, "port": port, "model": ckpt.name, "codec": ckpt.codec.name,
            "recording": str(recorder.path) if recorder else None,
            "web": f"http://{web_host}:{web_port}/" if web is not None else None}
    print(f"ensemble: ready on udp {host}:{port}, model {ckpt.name} ({ckpt.codec.name} codec, "
          f"{ckpt.codec.vocab_size} tokens, {m.layers}x{m.hidden} {m.cell}, {conductor.engine.label}), "
          f"replies to port {cfg.reply_port}"
          + (f", recording to {recorder.path}" if recorder else ", not recording")
          + (f", browsers on {info['web']}" if web is not None else "")
          + (f", previous snapshot kept as {kept}" if kept else ""),
          flush=True)
    if metatone is not None:
        print(f"ensemble: Metatone apps on udp {host}:{metatone.port}, gestures from {metatone.classifier.path}, "
              f"answers to device port {cfg.metatone_reply_port or 'of the sender'}", flush=True)
    if ready is not None:
        ready({**info, "conductor": conductor, "osc": osc, "midi": midi, "web_server": web, "metatone": metatone})
    try:
        await stop.wait()
    finally:
        await snapshots.stop()  # the last periodic write finishes before the final one
        conductor.shutdown()  # every sounding note gets its note-off
        if midi is not None:
            midi.close()
        if metatone is not None:
            metatone.close()
        snapshots.save_final()
        if conductor.recorder:
            conductor.recorder.close()
        osc.close()
        if web is not None:
            await web.close()
    return 0


def restore_or_keep(conductor, cfg: ServerConfig) -> Path | None:
    """--restore brings performers back from the snapshot. A snapshot that is not restored
    (no --restore, unreadable, or restored only in part) is moved aside, never overwritten;
    returns where it went."""
    if not cfg.snapshot or not Path(cfg.snapshot).exists():
        if cfg.restore and cfg.snapshot:
            log.warning("--restore: no snapshot %s yet; starting with no performers", cfg.snapshot)
        return None
    if cfg.restore:
        try:
            restored, failed = conductor.restore(cfg.snapshot)
            log.info("restored %d performer(s) from %s", restored, cfg.snapshot)
        except SnapshotError as exc:
            log.error("%s; starting with no performers", exc)
            failed = 1
        if not failed:
            return None
    kept = snapshot.keep_previous(cfg.snapshot)
    log.warning("the snapshot %s was not%s restored: kept as %s", cfg.snapshot, "" if not cfg.restore else " fully", kept)
    return kept


class PeriodicSnapshots:
    """Performer states saved every `snapshot_every` seconds, and once more at shutdown.

    The states are copied on the loop (small: at most max_performers rows); the file,
    fsync included, is written on a worker thread, so a slow disk never delays an
    answer. Nothing is written while nothing has changed."""

    def __init__(self, conductor, cfg: ServerConfig, loop: asyncio.AbstractEventLoop):
        self.conductor, self.cfg, self.loop = conductor, cfg, loop
        self.saved_revision = conductor.revision
        self.writing: asyncio.Future | None = None
        self.timer = loop.call_later(cfg.snapshot_every, self._tick)

    def _tick(self) -> None:
        try:
            self.conductor.expire_idle()
            revision = self.conductor.revision
            if self.cfg.snapshot and self.writing is None and revision != self.saved_revision:
                performers, arrays = self.conductor.snapshot_data()
                self.writing = self.loop.run_in_executor(None, snapshot.save, self.cfg.snapshot,
                                                         self.conductor.checkpoint.name, performers, arrays)
                self.writing.add_done_callback(lambda future: self._written(future, revision))
        except Exception:  # a bug here must not end snapshots for the rest of the gig
            log.exception("periodic snapshot")
        finally:
            self.timer = self.loop.call_later(self.cfg.snapshot_every, self._tick)

    def _written(self, future: asyncio.Future, revision: int) -> None:
        self.writing = None
        if future.exception() is not None:
            log.error("snapshot %s: %s", self.cfg.snapshot, future.exception())
        else:
            self.saved_revision = revision

    async def stop(self) -> None:
        self.timer.cancel()
        if self.writing is not None:
            await asyncio.wait([self.writing])

    def save_final(self) -> None:
        """At shutdown (after every note is ended): exact, so numbering continues from it."""
        if not self.cfg.snapshot or self.conductor.revision == self.saved_revision:
            return
        try:
            n = self.conductor.save_snapshot(self.cfg.snapshot, clean=True)
            log.info("saved %d performer state(s) to %s", n, self.cfg.snapshot)
        except OSError as exc:
            log.error("snapshot %s: %s", self.cfg.snapshot, exc)


def add_parser(subparsers) -> None:
    d = ServerConfig()
    p = subparsers.add_parser(
        "serve", help="run the real-time server (OSC, MIDI)",
        description="Serve a model live: performers send OSC (or MIDI) events, each keeps their own "
                    "hidden state, and predictions come back by OSC (or MIDI). Stop with Ctrl-C or SIGTERM: "
                    "every sounding note is ended, states are snapshotted and the session log is closed. "
                    "Every setting can also come from --config FILE.toml (see README: keys are the names "
                    "below with - as _, --mode is default_mode, MIDI options live in a [midi] table).",
    )
    p.add_argument("--config", help="a TOML file with any of these settings (the command line wins)")
    p.add_argument("--model", help=f"model folder (default: the bundled {d.model})")
    p.add_argument("--host", help=f"address to listen on (default {d.host}; wider needs --allow)")
    p.add_argument("--port", type=int, help=f"UDP port for OSC in (default {d.port}; 0 picks a free one)")
    p.add_argument("--reply-port", type=int, help=f"port predictions go to when a hello names none (default {d.reply_port})")
    p.add_argument("--record", metavar="FOLDER", help=f"session logs go here (default {d.record})")
    p.add_argument("--no-record", action="store_true", help="record nothing")
    p.add_argument("--snapshot", metavar="FILE", help=f"performer states are saved here (default {d.snapshot})")
    p.add_argument("--no-snapshot", action="store_true", help="save no states")
    p.add_argument("--restore", action="store_true", default=None, help="bring performers back from the snapshot")
    p.add_argument("--allow", action="append", metavar="NETWORK",
                   help="a network allowed to send when bound beyond loopback (repeatable), e.g. 192.168.1.0/24")
    p.add_argument("--mode", dest="default_mode", choices=MODES, help=f"mode of new performers (default {d.default_mode})")
    p.add_argument("--temperature", type=float, help=f"sampling temperature (default {d.temperature})")
    p.add_argument("--top-p", type=float, help=f"nucleus sampling (default {d.top_p})")
    p.add_argument("--threshold", type=float, help=f"respond mode: seconds of silence before answering (default {d.threshold})")
    p.add_argument("--engine", choices=["numpy", "int8", "torch"],
                   help=f"inference engine (default {d.engine}; int8: int8 weights through onnxruntime, for big "
                        f"models, pip install 'ensemble[int8]')")
    p.add_argument("--seed", type=int, help="fixed seed: each performer's predictions become reproducible")
    p.add_argument("--web", metavar="[HOST:]PORT",
                   help="serve the browser page and its WebSocket here (host default 127.0.0.1; wider needs --allow)")
    p.add_argument("--midi-in", action="append", metavar="NAME", help="MIDI input port (substring match, repeatable)")
    p.add_argument("--midi-out", action="append", metavar="NAME", help="MIDI output port (substring match, repeatable)")
    p.add_argument("--midi-virtual", action="store_true", help="open virtual ports 'ensemble in' / 'ensemble out'")
    p.add_argument("--midi-api", help="rtmidi API: alsa, jack, coremidi, ... (MIDO_BACKEND is honoured too)")
    p.add_argument("--thru", action="store_true", default=None, help="MIDI: forward the player's input to the output")
    p.add_argument("--midi-optional", action="store_true",
                   help="when MIDI was asked for but there is no MIDI system, serve OSC only instead of failing")
    p.add_argument("--metatone", type=int, metavar="PORT",
                   help="also listen for Metatone iPad apps (/metatone/...) on this UDP port (0 picks one); "
                        "advertised by Bonjour with the zeroconf extra")
    p.add_argument("--metatone-reply-port", type=int, metavar="PORT",
                   help=f"port the Metatone apps listen on (default {d.metatone_reply_port}; 0: the sender's port)")
    p.add_argument("--metatone-classifier", metavar="MODEL", help="gesture-classifier model folder "
                   "(default: the bundled one)")
    p.add_argument("--metatone-pd", metavar="HOST:PORT",
                   help="also send the band's touches here, e.g. 127.0.0.1:5007 for patches/ensemble-touch.pd")
    p.add_argument("--metatone-bonjour", choices=["auto", "on", "off"],
                   help="advertise the Metatone port by Bonjour (zeroconf extra): auto (default) when bound beyond "
                        "loopback, on also on loopback (an iOS simulator on this machine), off never")
    p.set_defaults(func=run)


def run(args) -> int:
    file_values = load_toml(args.config) if args.config else {}
    names = set(ServerConfig.__dataclass_fields__)
    cli = {k: v for k, v in vars(args).items() if k in names}
    if args.no_record:
        cli["record"] = ""
    if args.no_snapshot:
        cli["snapshot"] = ""
    if args.allow:
        cli["allow"] = args.allow
    midi = dict(file_values.get("midi", {}))
    for key, value in (("inputs", args.midi_in), ("outputs", args.midi_out), ("api", args.midi_api)):
        if value:
            midi[key] = value
    if args.midi_virtual:
        midi["virtual"] = True
    if args.thru is not None:
        midi["thru"] = True
    if args.midi_optional:
        midi["optional"] = True
    cli["midi"] = midi
    cli["log_level"] = args.log_level
    cfg = make_config(file_values, cli)
    logging.getLogger().setLevel(cfg.log_level.upper())
    if not cfg.loopback_only and cfg.allow == ServerConfig().allow:
        log.warning("listening on %s: only loopback senders are allowed until you give --allow NETWORK", cfg.host)
    try:
        return asyncio.run(serve(cfg))
    except KeyboardInterrupt:
        return 0

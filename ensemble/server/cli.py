"""`ensemble serve`: the real-time server, OSC (and MIDI) in and out, on one asyncio loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from pathlib import Path

from ensemble import checkpoint
from ensemble.errors import UserError
from ensemble.server.config import MODES, ServerConfig, load_toml, make_config

log = logging.getLogger("ensemble.server")


async def serve(cfg: ServerConfig, ready=None, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set). `ready(info)` is called once listening."""
    from ensemble.io.osc import OscServer
    from ensemble.server.conductor import Conductor
    from ensemble.server import snapshot
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
    conductor = Conductor(ckpt, cfg, loop)
    midi = None
    if cfg.midi.get("inputs") or cfg.midi.get("outputs") or cfg.midi.get("virtual"):
        from ensemble.io.midi import MidiLayer

        midi = MidiLayer(conductor, cfg.midi)  # a bad [midi] table fails here, before anything opens
    osc = OscServer(conductor, cfg.host, cfg.port, cfg.reply_port, cfg.allow, cfg.rate_limit)
    try:
        host, port = osc.start()
    except OSError as exc:
        raise UserError(f"cannot listen on udp {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
    if midi is not None:
        midi.start()
        conductor.midi = midi
    if cfg.restore and cfg.snapshot:
        if Path(cfg.snapshot).exists():
            restored = conductor.restore(cfg.snapshot, osc.output_from if midi is None else midi.output_or(osc))
            log.info("restored %d performer(s) from %s", restored, cfg.snapshot)
        else:
            log.warning("--restore: no snapshot %s yet; starting with no performers", cfg.snapshot)
    if cfg.record:
        m = ckpt.model.config
        conductor.recorder = Recorder(cfg.record, {"model": ckpt.name, "codec": ckpt.codec.describe(),
                                                   "cell": f"{m.layers}x{m.hidden} {m.cell}"}, loop)
        conductor.recorder.open()

    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), Windows
            pass

    writing: list = [None]  # the snapshot write in flight, if any

    def snapshot_written(future) -> None:
        writing[0] = None
        if future.exception() is not None:
            log.error("snapshot %s: %s", cfg.snapshot, future.exception())

    def periodic():
        try:
            conductor.expire_idle()
            if cfg.snapshot and writing[0] is None:
                # the states are copied here, on the loop; the file (fsync included) is
                # written on a worker thread, so a slow disk never delays an answer
                performers, arrays = conductor.snapshot_data()
                writing[0] = loop.run_in_executor(None, snapshot.save, cfg.snapshot, ckpt.name, performers, arrays)
                writing[0].add_done_callback(snapshot_written)
        except Exception:  # a bug here must not end snapshots for the rest of the gig
            log.exception("periodic snapshot")
        finally:
            timer[0] = loop.call_later(cfg.snapshot_every, periodic)

    timer = [loop.call_later(cfg.snapshot_every, periodic)]
    # everything loaded so far (model, torch, codecs) lives for the whole gig: keep it out
    # of the garbage collector's scans, which would otherwise pause the loop now and then
    gc.collect()
    gc.freeze()
    info = {"host": host, "port": port, "model": ckpt.name, "codec": ckpt.codec.name,
            "recording": str(conductor.recorder.path) if conductor.recorder else None}
    m = ckpt.model.config
    print(f"ensemble: ready on udp {host}:{port}, model {ckpt.name} ({ckpt.codec.name} codec, "
          f"{ckpt.codec.vocab_size} tokens, {m.layers}x{m.hidden} {m.cell}, {conductor.engine.kind} engine), "
          f"replies to port {cfg.reply_port}"
          + (f", recording to {conductor.recorder.path}" if conductor.recorder else ", not recording"),
          flush=True)
    if ready is not None:
        ready({**info, "conductor": conductor, "osc": osc, "midi": midi})
    try:
        await stop.wait()
    finally:
        timer[0].cancel()
        if writing[0] is not None:
            await asyncio.wait([writing[0]])  # the last periodic write, before the final one
        conductor.shutdown()  # every sounding note gets its note-off
        if midi is not None:
            midi.close()
        if cfg.snapshot:
            try:
                n = conductor.save_snapshot(cfg.snapshot)
                log.info("saved %d performer state(s) to %s", n, cfg.snapshot)
            except OSError as exc:
                log.error("snapshot %s: %s", cfg.snapshot, exc)
        if conductor.recorder:
            conductor.recorder.close()
        osc.close()
    return 0


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
    p.add_argument("--engine", choices=["numpy", "torch"], help=f"inference engine (default {d.engine})")
    p.add_argument("--seed", type=int, help="fixed seed: each performer's predictions become reproducible")
    p.add_argument("--midi-in", action="append", metavar="NAME", help="MIDI input port (substring match, repeatable)")
    p.add_argument("--midi-out", action="append", metavar="NAME", help="MIDI output port (substring match, repeatable)")
    p.add_argument("--midi-virtual", action="store_true", help="open virtual ports 'ensemble in' / 'ensemble out'")
    p.add_argument("--midi-api", help="rtmidi API: alsa, jack, coremidi, ... (MIDO_BACKEND is honoured too)")
    p.add_argument("--thru", action="store_true", default=None, help="MIDI: forward the player's input to the output")
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

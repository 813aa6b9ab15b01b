"""The gesture classifier: a bidirectional LSTM over a performer's last 5 s of touches.

The Neural iPad Band labels what each iPad performer is doing, once a second, with one
of 9 gestures (n ft st fs fsa vss bs ss c); the ensemble model then reasons over those
labels. This model is that classifier, a sequence -> class model next to TokenRNN:

- input: the touch points of one performer in the last `window` seconds (at most
  `max_points`, the most recent), each turned into a few features computed from the
  raw stream: position (0..1), movement since the previous point, time since the
  previous point (log), touch-down flag (velocity 0 or first point after a touch
  ended), and the point's age within the window;
- a bidirectional LSTM reads the points both ways (a gesture is recognised from its
  whole shape: where a stroke starts is as telling as where it ends), and its two final
  states go through one linear layer to 9 logits;
- no touches in the window is gesture 0 (nothing), without running the model.

A model folder holds `config.json` (`"model_type": "gesture-classifier"`), weights in
safetensors and a card. Training (`ensemble train --codec gesture-classifier`) uses
torch; live inference (`GestureClassifier`) is numpy only, so the server's live path
never imports torch: ~5 s of touches once a second per performer is a few hundred
small matrix-vector products.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from ensemble.errors import UserError

log = logging.getLogger("ensemble.classifier")

TYPE = "gesture-classifier"
GESTURE_CODES = ("n", "ft", "st", "fs", "fsa", "vss", "bs", "ss", "c")
FEATURES = 7
WIDTH, HEIGHT = 1024.0, 768.0


class ClassifierError(UserError):
    """A classifier folder or a touch log that cannot be used; one line says why."""


# ---------------------------------------------------------------------------- features


def features(points, end: float, window: float = 5.0, max_points: int = 160, scale: float = 100.0) -> np.ndarray:
    """(n, FEATURES) float32 for the touch points (t, x_px, y_px, down) in (end - window, end].

    `down` is True where a touch begins. Only the `max_points` most recent are kept; movement
    is in units of `scale` pixels (a model's config says which it was trained with)."""
    pts = [p for p in points if end - window < p[0] <= end][-max_points:]
    out = np.zeros((len(pts), FEATURES), dtype=np.float32)
    prev = None
    for i, (t, x, y, down) in enumerate(pts):
        dt = 1.0 if prev is None else max(0.0, t - prev[0])
        dx = 0.0 if prev is None or down else (x - prev[1]) / scale
        dy = 0.0 if prev is None or down else (y - prev[2]) / scale
        out[i] = (x / WIDTH, y / HEIGHT, max(-3.0, min(3.0, dx)), max(-3.0, min(3.0, dy)),
                  (math.log(dt + 1e-3) + 3.0) / 3.0, 1.0 if down or prev is None else 0.0, (end - t) / window)
        prev = (t, x, y)
    return out


# ---------------------------------------------------------------------------- touch + gesture logs


def parse_time(text: str, what: str) -> float:
    """Seconds: a number, or an ISO 8601 time (Metatone logs), read as `prepare` reads them."""
    from ensemble.corpora import log_time

    try:
        return log_time(text)
    except ValueError as exc:
        raise ClassifierError(f"{what}: {exc}") from None


def read_touch_log(path) -> dict[str, list[tuple[float, float, float, bool]]]:
    """time,device_id,x_pos,y_pos,velocity -> {device: [(t, x, y, down), ...]} by time.

    A touch-down is a point of velocity 0 (how Metatone apps mark touchesBegan)."""
    path = Path(path)
    by_device: dict[str, list] = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f)
        header = [h.strip().lower() for h in next(rows, [])]
        if header != ["time", "device_id", "x_pos", "y_pos", "velocity"]:
            raise ClassifierError(f"{path}: not a touch log (header must be time,device_id,x_pos,y_pos,velocity)")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != 5:
                raise ClassifierError(f"{path} line {line}: {len(row)} fields, expected 5")
            try:
                x, y, v = float(row[2]), float(row[3]), float(row[4])
            except ValueError:
                raise ClassifierError(f"{path} line {line}: x_pos, y_pos, velocity must be numbers") from None
            if not all(map(math.isfinite, (x, y, v))):
                raise ClassifierError(f"{path} line {line}: x_pos, y_pos, velocity must be finite")
            by_device.setdefault(row[1].strip(), []).append((parse_time(row[0], f"{path} line {line}"), x, y, v == 0.0))
    for pts in by_device.values():
        pts.sort(key=lambda p: p[0])
    return by_device


def read_gesture_log(path) -> tuple[list[str], list[tuple[float, list[int]]]]:
    """time,<performer 1>,... -> (performers, [(t, [g per performer]), ...])."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows[0]) < 2 or rows[0][0].strip().lower() != "time":
        raise ClassifierError(f"{path}: not a gesture log (header must be time,<performer 1>,...)")
    performers = [h.strip() for h in rows[0][1:]]
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(performers) + 1:
            raise ClassifierError(f"{path} line {line}: {len(row)} fields, expected {len(performers) + 1}")
        try:
            gs = [int(c) for c in row[1:]]
        except ValueError:
            raise ClassifierError(f"{path} line {line}: gestures must be whole numbers 0..8") from None
        if any(not 0 <= g <= 8 for g in gs):
            raise ClassifierError(f"{path} line {line}: gestures must be 0..8")
        out.append((parse_time(row[0], f"{path} line {line}"), gs))
    return performers, out


def is_touch_log(path) -> bool:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return f.readline().strip().lower().replace(" ", "") == "time,device_id,x_pos,y_pos,velocity"


def labelled_windows(folder, window: float, max_points: int, scale: float = 100.0):
    """Every (features, gesture) of the labelled logs in `folder`, grouped by gesture log
    (so whole sessions can be held out): [[(features, label), ...] per gesture log]."""
    folder = Path(folder)
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else [folder]
    if not files:
        raise ClassifierError(f"{folder}: no .csv touch and gesture logs")
    touches: dict[str, list] = {}
    gesture_logs = []
    for path in files:
        if is_touch_log(path):
            for device, pts in read_touch_log(path).items():
                touches.setdefault(device, []).extend(pts)
        else:
            gesture_logs.append(path)
    if not gesture_logs or not touches:
        raise ClassifierError(f"{folder}: needs both touch logs (time,device_id,x_pos,y_pos,velocity) and "
                              "gesture logs (time,<performers>...)")
    times = {}
    for device, pts in touches.items():
        pts.sort(key=lambda p: p[0])
        times[device] = np.array([p[0] for p in pts])
    groups = []
    for path in gesture_logs:
        performers, rows = read_gesture_log(path)
        group = []
        for t, gs in rows:
            for device, g in zip(performers, gs):
                pts = touches.get(device)
                if pts is None:
                    continue
                lo, hi = np.searchsorted(times[device], [t - window, t], side="right")
                group.append((features(pts[lo:hi], t, window, max_points, scale), g))
        groups.append(group)
    return groups


# ---------------------------------------------------------------------------- live inference (numpy)


def _sigmoid(x):
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


@dataclass
class GestureClassifier:
    """A trained classifier for live use: numpy only (safetensors.numpy), no torch."""

    weights: dict
    hidden: int
    window: float = 5.0
    max_points: int = 160
    scale: float = 100.0
    meta: dict | None = None
    path: Path | None = None

    @classmethod
    def load(cls, folder) -> "GestureClassifier":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        if (folder / "best" / "config.json").exists() and not (folder / "config.json").exists():
            folder = folder / "best"
        config = read_config(folder)
        spec = config.get("classifier", {})
        try:
            weights = load_file(str(folder / "weights.safetensors"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ClassifierError(f"{folder}: unreadable weights ({exc})") from None
        hidden = int(spec.get("hidden", 0))
        shapes = {"lstm.weight_ih_l0": (4 * hidden, FEATURES), "lstm.weight_hh_l0": (4 * hidden, hidden),
                  "lstm.weight_ih_l0_reverse": (4 * hidden, FEATURES), "out.weight": (9, 2 * hidden)}
        for key, shape in shapes.items():
            if key not in weights or weights[key].shape != shape:
                raise ClassifierError(f"{folder}: weights do not match the config ({key} should be {shape})")
        w = {k: v.astype(np.float32) for k, v in weights.items()}
        return cls(w, hidden, float(spec.get("window", 5.0)), int(spec.get("max_points", 160)),
                   float(spec.get("movement_scale", 100.0)), {k: v for k, v in config.items() if k not in ("format", "version")}, folder)

    def _direction(self, x: np.ndarray, suffix: str) -> np.ndarray:
        w = self.weights
        pre = x @ w[f"lstm.weight_ih_l0{suffix}"].T + (w[f"lstm.bias_ih_l0{suffix}"] + w[f"lstm.bias_hh_l0{suffix}"])
        whh = w[f"lstm.weight_hh_l0{suffix}"]
        H = self.hidden
        h = np.zeros(H, dtype=np.float32)
        c = np.zeros(H, dtype=np.float32)
        for row in pre:
            g = row + whh @ h
            i, f, gg, o = _sigmoid(g[:H]), _sigmoid(g[H:2 * H]), np.tanh(g[2 * H:3 * H]), _sigmoid(g[3 * H:])
            c = f * c + i * gg
            h = o * np.tanh(c)
        return h

    def _masked(self, x: np.ndarray, mask: np.ndarray, suffix: str) -> np.ndarray:
        """One direction over a (B, L, F) batch whose rows end early (mask False): a row's
        state stops changing after its last point, so it ends as if run alone."""
        w = self.weights
        pre = x @ w[f"lstm.weight_ih_l0{suffix}"].T + (w[f"lstm.bias_ih_l0{suffix}"] + w[f"lstm.bias_hh_l0{suffix}"])
        whh_t = w[f"lstm.weight_hh_l0{suffix}"].T
        H = self.hidden
        h = np.zeros((x.shape[0], H), dtype=np.float32)
        c = np.zeros((x.shape[0], H), dtype=np.float32)
        for t in range(x.shape[1]):
            g = pre[:, t] + h @ whh_t
            sg = _sigmoid(g)  # one call for the three gates (the cell input's share is unused)
            c_new = sg[:, H:2 * H] * c + sg[:, :H] * np.tanh(g[:, 2 * H:3 * H])
            o = sg[:, 3 * H:]
            m = mask[:, t:t + 1]
            c = np.where(m, c_new, c)
            h = np.where(m, o * np.tanh(c_new), h)
        return h

    def logits_batch(self, windows: list[np.ndarray]) -> np.ndarray:
        """(B, 9) logits for several windows (each n >= 1 points) in one pass: the live tick
        classifies every performer at once, so its cost grows with the longest window, not
        with the number of performers."""
        lengths = [len(x) for x in windows]
        forward = np.zeros((len(windows), max(lengths), FEATURES), dtype=np.float32)
        backward = np.zeros_like(forward)
        mask = np.zeros(forward.shape[:2], dtype=bool)
        for b, x in enumerate(windows):
            forward[b, :len(x)], backward[b, :len(x)], mask[b, :len(x)] = x, x[::-1], True
        h = np.concatenate([self._masked(forward, mask, ""), self._masked(backward, mask, "_reverse")], axis=1)
        return h @ self.weights["out.weight"].T + self.weights["out.bias"]

    def classify_many(self, windows: list, end: float) -> list[int]:
        """The gesture of each device's touch points (as `classify`), in one batched pass."""
        feats = [features(points, end, self.window, self.max_points, self.scale) for points in windows]
        full = [i for i, f in enumerate(feats) if len(f)]
        out = [0] * len(feats)
        if full:
            for i, row in zip(full, self.logits_batch([feats[i] for i in full])):
                out[i] = int(np.argmax(row))
        return out

    def logits(self, x: np.ndarray) -> np.ndarray:
        """9 logits for one window of features (n >= 1 points)."""
        h = np.concatenate([self._direction(x, ""), self._direction(x[::-1], "_reverse")])
        return self.weights["out.weight"] @ h + self.weights["out.bias"]

    def classify(self, points, end: float) -> int:
        """The gesture (0..8) of the touch points (t, x_px, y_px, down) in the window ending at `end`."""
        x = features(points, end, self.window, self.max_points, self.scale)
        if len(x) == 0:
            return 0
        return int(np.argmax(self.logits(x)))


def read_config(folder) -> dict:
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClassifierError(f"{folder}: not a model folder (no config.json)") from None
    except (OSError, ValueError) as exc:
        raise ClassifierError(f"{path}: unreadable ({exc})") from None
    if not isinstance(config, dict) or config.get("model_type") != TYPE:
        raise ClassifierError(f"{folder}: not a gesture classifier (config.json model_type is not {TYPE!r})")
    return config


# ---------------------------------------------------------------------------- training (torch)


def _build(hidden: int):
    import torch
    from torch import nn

    class BiLSTMClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(FEATURES, hidden, batch_first=True, bidirectional=True)
            self.out = nn.Linear(2 * hidden, 9)

        def forward(self, x, lengths):
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            _, (h, _) = self.lstm(packed)
            return self.out(torch.cat([h[0], h[1]], dim=1))

    return BiLSTMClassifier()


def _batch(items):
    import torch

    lengths = [len(x) for x, _ in items]
    x = np.zeros((len(items), max(lengths), FEATURES), dtype=np.float32)
    for i, (f, _) in enumerate(items):
        x[i, :len(f)] = f
    return torch.from_numpy(x), torch.tensor(lengths), torch.tensor([g for _, g in items])


def confusion(model_logits_fn, items) -> np.ndarray:
    """9 x 9 counts: row = true gesture, column = predicted."""
    m = np.zeros((9, 9), dtype=np.int64)
    for f, g in items:
        m[g, model_logits_fn(f)] += 1
    return m


def train_classifier(data, out, *, hidden: int = 32, steps: int = 1500, batch: int = 64, lr: float = 3e-3,
                     val_fraction: float = 0.2, seed: int = 0, window: float = 5.0, max_points: int = 160,
                     max_time: float | None = None, retrain: str = "", movement_scale: float = 20.0) -> dict:
    """Train on labelled touch logs in `data`; writes OUT/best (a model folder). Returns the metrics."""
    import time

    import torch
    import torch.nn.functional as F

    # a small packed LSTM is bound by per-step overhead, not arithmetic: more threads only contend
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    groups = labelled_windows(data, window, max_points, movement_scale)
    n_val = 0 if val_fraction <= 0 else max(1, round(len(groups) * val_fraction)) if len(groups) > 1 else 0
    train_groups, val_groups = groups[:len(groups) - n_val], groups[len(groups) - n_val:]
    # empty windows are gesture 0 by rule: the model only sees windows with touches
    train = [it for g in train_groups for it in g if len(it[0])]
    val = [it for g in val_groups for it in g if len(it[0])]
    val_empty = [it for g in val_groups for it in g if not len(it[0])]
    if not train:
        raise ClassifierError(f"{data}: no labelled windows with touches to train on")
    model = _build(hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    started = time.monotonic()
    model.train()
    step = 0
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        pick = rng.integers(0, len(train), size=min(batch, len(train)))
        x, lengths, y = _batch([train[i] for i in pick])
        loss = F.cross_entropy(model(x, lengths), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            log.info("step %d: train loss %.4f", step, loss.item())
        if max_time is not None and time.monotonic() - started >= max_time:
            log.info("max time: stopped after step %d", step)
            break
    model.eval()
    metrics: dict = {"step": step, "train_windows": len(train), "val_windows": len(val) + len(val_empty),
                     "train_loss": round(float(loss.item()), 4)}
    matrix = np.zeros((9, 9), dtype=np.int64)
    if val:
        with torch.no_grad():
            losses = []
            for i in range(0, len(val), 256):
                x, lengths, y = _batch(val[i:i + 256])
                logits = model(x, lengths)
                losses.append(F.cross_entropy(logits, y, reduction="sum").item())
                for t, p in zip(y.tolist(), logits.argmax(1).tolist()):
                    matrix[t, p] += 1
        for _, g in val_empty:
            matrix[g, 0] += 1
        metrics.update(loss_nats=round(sum(losses) / len(val), 4),
                       accuracy=round(float(np.trace(matrix) / matrix.sum()), 4),
                       confusion=matrix.tolist())
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": "ensemble-model", "version": 1, "model_type": TYPE,
        "classifier": {"hidden": hidden, "window": window, "max_points": max_points, "features": FEATURES,
                       "movement_scale": movement_scale,
                       "cell": "bidirectional lstm", "gestures": list(GESTURE_CODES)},
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": {"source": Path(str(data)).name, "train_logs": len(train_groups), "val_logs": len(val_groups)},
        "validation": metrics, "retrain": retrain,
    }
    save(Path(out) / "best", weights, config)
    return metrics


def save(folder: Path, weights: dict, config: dict) -> Path:
    """A model folder, written atomically (readers see the old one or the new one, whole)."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)
    try:
        save_file(weights, str(tmp / "weights.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(card(folder.name, config))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def format_confusion(matrix) -> str:
    head = "| true \\ predicted | " + " | ".join(GESTURE_CODES) + " |"
    lines = [head, "|" + "---|" * (len(GESTURE_CODES) + 1)]
    for code, row in zip(GESTURE_CODES, matrix):
        lines.append(f"| **{code}** | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def card(name: str, config: dict) -> str:
    spec, val = config["classifier"], config.get("validation", {})
    lines = [
        f"# Model card: {name}", "",
        "A gesture classifier for the Neural iPad Band: a bidirectional LSTM over a performer's "
        f"last {spec['window']:g} s of touches (at most {spec['max_points']} points) -> one of 9 gestures "
        f"({' '.join(spec['gestures'])}).", "",
        "## Model", f"- 1 x {spec['hidden']} bidirectional LSTM, {spec['features']} features per touch point, "
        f"linear layer to 9 classes; {config.get('parameters', 'n/a')} parameters", "",
        "## Data", *[f"- {k}: {v}" for k, v in config.get("data", {}).items()], "",
        "## Validation (held-out logs)",
        f"- windows: {val.get('val_windows', 'n/a')}, accuracy: {val.get('accuracy', 'n/a')}, "
        f"loss: {val.get('loss_nats', 'n/a')} nats",
        f"- after step {val.get('step', 'n/a')}", "",
    ]
    if "confusion" in val:
        lines += ["Confusion matrix (rows: true gesture, columns: predicted):", "", format_confusion(val["confusion"]), ""]
    for ev in config.get("evaluations", []):  # checks beyond the held-out logs, each saying what it is
        lines += [f"## {ev['title']}", "", ev["what"], "", *[f"    {c}" for c in ev.get("commands", [])], "",
                  f"- {ev['result']}", ""]
        if "confusion" in ev:
            lines += [ev.get("confusion_title", "Confusion matrix (rows: true gesture, columns: predicted):"), "",
                      format_confusion(ev["confusion"]), ""]
    lines += ["## Caveat", "",
              "If the data is the output of `ensemble synth-touches`, this model was trained and validated on "
              "SYNTHETIC touches only: hand-written recipes of each gesture, not real performers. Its accuracy "
              "on real iPad performances will be lower, and gestures real players do differently from the "
              "recipes (combinations, swirls drawn as strokes) will be confused more often.", ""]
    if config.get("retrain"):
        lines += ["## How to retrain", "", "```", config["retrain"], "```", ""]
    return "\n".join(lines)


def train_from_args(args) -> int:
    """`ensemble train --codec gesture-classifier --data LOGS --out RUN` (dispatched from train.py)."""
    if not args.data or not args.out:
        raise ClassifierError("--data (a folder of touch + gesture logs) and --out are needed")
    steps = getattr(args, "steps", None) or 1500  # train's own options default to "chosen later": absent here
    retrain = (f"ensemble train --codec gesture-classifier --data {args.data} --out {args.out} "
               f"--hidden {args.hidden or 32} --steps {steps} --batch {args.batch} --seed {args.seed}")
    metrics = train_classifier(args.data, args.out, hidden=args.hidden or 32, steps=steps, batch=args.batch,
                               val_fraction=args.val_fraction, seed=args.seed,
                               **({"lr": args.lr} if getattr(args, "lr", None) is not None else {}),
                               max_time=args.max_time, retrain=retrain)
    if "accuracy" in metrics:
        print(f"held-out accuracy {metrics['accuracy']:.3f} on {metrics['val_windows']} windows; "
              f"model in {Path(args.out) / 'best'}")
        print(format_confusion(metrics["confusion"]))
    else:
        print(f"no held-out logs; model in {Path(args.out) / 'best'}")
    return 0


# ---------------------------------------------------------------------------- ensemble classify


def classify_log(model: GestureClassifier, touches: dict, every: float = 1.0) -> tuple[list[str], list]:
    """A gesture log for a touch log: one row per second, every device's gesture."""
    devices = sorted(touches)
    if not devices:
        return [], []
    start = min(pts[0][0] for pts in touches.values() if pts)
    end = max(pts[-1][0] for pts in touches.values() if pts)
    times = {d: np.array([p[0] for p in touches[d]]) for d in devices}
    rows = []
    t = start + every
    while t < end + every:
        gs = []
        for d in devices:
            lo, hi = np.searchsorted(times[d], [t - model.window, t], side="right")
            gs.append(model.classify(touches[d][lo:hi], t))
        rows.append((t, gs))
        t += every
    return devices, rows


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "classify", help="label a touch log with gestures (Neural iPad Band classifier)",
        description="Read a Metatone touch log (time,device_id,x_pos,y_pos,velocity) and write a gesture "
                    "log (time,<device>...): each device's gesture, once a second, from its last 5 s of touches.")
    p.add_argument("--model", required=True, help="a gesture-classifier model folder")
    p.add_argument("--input", required=True, help="touch log CSV")
    p.add_argument("--output", help="gesture log CSV to write (default: stdout)")
    p.set_defaults(func=run_classify)


def run_classify(args) -> int:
    import sys
    from datetime import timezone

    model = GestureClassifier.load(args.model)
    if not Path(args.input).is_file():
        raise ClassifierError(f"--input {args.input}: no such file")
    devices, rows = classify_log(model, read_touch_log(args.input))
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        w = csv.writer(out)
        w.writerow(["time", *devices])
        for t, gs in rows:
            w.writerow([datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds"), *gs])
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"wrote {len(rows)} seconds x {len(devices)} devices to {args.output}", file=sys.stderr)
    return 0

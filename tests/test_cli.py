"""The command line as a user meets it: train, generate, clear errors."""

import os
import subprocess

from conftest import ENSEMBLE
from ensemble.cli import main


def run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest and fair to others
    return subprocess.run(ENSEMBLE + list(args), capture_output=True, text=True, timeout=300, env=env)


def test_train_then_generate_with_prime(tmp_path, periodic_text):
    out = tmp_path / "run"
    r = run("train", "--codec", "text", "--data", str(periodic_text), "--out", str(out), "--size", "xs",
            "--steps", "150", "--seq-len", "32", "--batch", "16", "--eval-every", "75", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "val" in r.stderr and "nats/token" in r.stderr and "bits" in r.stderr
    g = run("generate", "--model", str(out), "--prime", "the quick", "--length", "40", "--seed", "3",
            "--temperature", "0.3")
    assert g.returncode == 0, g.stderr
    assert g.stdout.startswith("the quick")
    assert len(g.stdout) >= len("the quick") + 40
    again = run("generate", "--model", str(out), "--prime", "the quick", "--length", "40", "--seed", "3",
                "--temperature", "0.3")
    assert again.stdout == g.stdout


def test_corrupt_checkpoint_is_one_clear_line(tmp_path, text_run):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((text_run / "best" / "config.json").read_text())
    data = (text_run / "best" / "weights.safetensors").read_bytes()
    (bad / "weights.safetensors").write_bytes(data[: len(data) // 2])
    r = run("generate", "--model", str(bad))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "truncated" in lines[0] and "Traceback" not in r.stderr

    (bad / "config.json").write_text("{not json")
    r = run("generate", "--model", str(bad))
    assert r.returncode != 0 and "corrupt JSON" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    r = run("generate", "--model", str(tmp_path / "missing"))
    assert r.returncode != 0 and "no such model folder" in r.stderr


def test_mismatched_weights_are_reported(tmp_path, text_run):
    import json
    bad = tmp_path / "mismatch"
    bad.mkdir()
    config = json.loads((text_run / "best" / "config.json").read_text())
    config["model"]["hidden"] *= 2
    if config["model"].get("tie"):  # a valid config (tied: embedding = hidden) whose weights do not fit it
        config["model"]["embedding"] = config["model"]["hidden"]
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "weights.safetensors").write_bytes((text_run / "best" / "weights.safetensors").read_bytes())
    r = run("generate", "--model", str(bad))
    assert r.returncode != 0 and "shape" in r.stderr and "Traceback" not in r.stderr


def test_every_command_explains_its_options(capsys):
    import pytest

    for command in ["train", "generate"]:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--seed" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "train" in capsys.readouterr().out


def test_unknown_characters_in_prime_are_warned_about(text_run):
    r = run("generate", "--model", str(text_run), "--prime", "the QUICK", "--length", "5", "--seed", "1")
    assert r.returncode == 0
    assert "never saw" in r.stderr and "Q" in r.stderr
    assert "\ufffd" not in r.stdout[len("the QUICK"):]

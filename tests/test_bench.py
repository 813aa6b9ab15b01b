"""The benchmarks run end to end (their numbers are reported, never asserted)."""

from ensemble.bench.serve import bench_serve
from ensemble.bench.train import bench_train
from ensemble.cli import main


def test_bench_serve_answers_every_event(notes_model):
    result = bench_serve(str(notes_model), events=100, performers=2, rate=20.0, seconds=1.0, startups=1)
    solo, band, echo = result["solo"], result["band"], result["echo"]
    assert echo["answered"] == 100 and 0 < echo["median_ms"] <= echo["p99_ms"]
    assert len(result["startup_s"]) == 2 and all(0 < s < 30 for s in result["startup_s"])
    assert solo["events"] == 100 and solo["lost"] == 0 and solo["answered"] == 100
    assert solo["on"]["answered"] == solo["off"]["answered"] == 50  # reported by kind too
    assert band["events"] == 40 and band["answered"] + band["lost"] == 40
    assert band["unexpected"] == 0
    assert 0 < solo["median_ms"] <= solo["p99_ms"]


def test_bench_train_reports_throughput(capsys):
    r = bench_train(vocab=50, size="xs", cell="gru", seq_len=16, batch=4, steps=3, warmup=1, device_name="cpu")
    assert r["tokens_per_s"] > 0 and r["size"] == "1x64 gru"
    assert main(["bench", "train", "--vocab", "40", "--size", "xs", "--steps", "2", "--warmup", "1",
                 "--batch", "2", "--seq-len", "8"]) == 0
    assert "tokens/s" in capsys.readouterr().out


def test_bench_serve_runs_again_while_web_pages_watch(notes_model):
    result = bench_serve(str(notes_model), events=100, performers=2, rate=20.0, seconds=1.0, watchers=2)
    watched_solo, watched_band, pages = result["watched_solo"], result["watched_band"], result["watchers"]
    assert watched_solo["answered"] == 100 and watched_solo["lost"] == 0
    assert watched_band["events"] == 40 and watched_band["answered"] + watched_band["lost"] == 40
    assert watched_band["unexpected"] == 0
    assert pages["pages"] == 2 and pages["messages"] > 0 and pages["bytes"] > 0
    assert pages["cells"] > 0  # the pages asked for the watched performer's LSTM cells, and got them

"""The page in a real browser: Debian's chromium, headless, driven by Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium (`.ci/run`
installs it) with a fresh profile. Every wait is on something the page shows (a data
attribute, a table row), never a sleep. An OSC performer plays at the same time.
"""

from __future__ import annotations

import os
import shutil

import pytest

from oscpeer import OscPeer, ServerThread
from test_server import config

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright python package is not installed")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason="Debian's chromium is not installed (apt-get install chromium)")


def launch(playwright, profile):
    """Chromium with a fresh profile and nothing that reaches beyond this machine."""
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=ARGS,
        viewport={"width": 1100, "height": 900})


def press(page, pitch: int, pointer_type: str = "touch", pointer_id: int = 2, down: bool = True, pressure=0.8):
    """A synthetic pointer event at the middle of a key, as a finger on a touch screen makes it."""
    page.eval_on_selector(f'.key[data-pitch="{pitch}"]', """(key, [type, id, kind, pressure]) => {
        const r = key.getBoundingClientRect();
        key.dispatchEvent(new PointerEvent(type, {bubbles: true, cancelable: true, pointerId: id,
            pointerType: kind, isPrimary: id === 1, pressure, clientX: r.left + r.width / 2,
            clientY: r.top + r.height * 0.7}));
    }""", ["pointerdown" if down else "pointerup", pointer_id, pointer_type, pressure])


def count(page, attribute: str) -> int:
    return int(page.get_attribute("#roll", f"data-{attribute}"))


# the leftmost painted pixel in the middle of a pitch's row of the piano roll (-1: none)
FIRST_LIT = """(pitch) => {
    const c = document.getElementById('roll'), lo = S.welcome.low_pitch, span = S.welcome.high_pitch - lo + 1;
    const y = Math.floor(c.height - (pitch - lo + 0.5) * (c.height / span));
    const d = c.getContext('2d').getImageData(0, y, c.width, 1).data;
    for (let x = 0; x < c.width; x++) if (d[4 * x + 3] > 0) return x;
    return -1;
}"""


def test_join_play_hear_watch_steer_and_panic_beside_an_osc_performer(notes_model, tmp_path):
    cfg = config(notes_model, tmp_path, web="127.0.0.1:0", default_mode="duet", max_note=60.0)
    with ServerThread(cfg) as server, sync_api.sync_playwright() as pw:
        url = server.info["web"]
        peer = OscPeer(server.port)
        peer.send("/ensemble/hello", "oscbob", "127.0.0.1", peer.port)
        peer.send("/ensemble/mode", "oscbob", "duet")
        browser = launch(pw, tmp_path / "profile")
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector('#conn[data-state="open"]')
        page.wait_for_function("document.getElementById('join-mode').options.length > 0")
        page.fill("#name", "ada")
        page.select_option("#join-mode", "duet")
        page.click("#join-button")
        page.wait_for_selector("#keyboard .key", state="visible")

        # a mouse click (a real pointer sequence), then a two-finger chord by touch pointers
        box = page.locator('.key.white[data-pitch="60"]').bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.8)
        press(page, 64, pointer_id=2)
        press(page, 67, pointer_id=3)
        press(page, 64, pointer_id=2, down=False)
        press(page, 67, pointer_id=3, down=False)
        for k in range(6):  # the OSC performer plays too
            peer.send("/ensemble/note", "oscbob", 48 + k, 80 if k % 2 == 0 else 0)

        # answers heard (counted by the page), both performers on the roll, latency measured in the page
        page.wait_for_function("+document.getElementById('roll').dataset.answers >= 3")
        page.wait_for_function("+document.getElementById('roll').dataset.mine >= 3")
        page.wait_for_function("+document.getElementById('roll').dataset.out >= 4")
        page.wait_for_selector('#performers tr[data-performer="oscbob"]')
        page.wait_for_selector('#performers tr[data-performer="ada"][data-mode="duet"]')
        page.wait_for_function("+document.getElementById('latency').dataset.count >= 1")
        assert count(page, "in") >= count(page, "mine") + 1  # oscbob's notes are on the roll too
        # painted, not only counted: E4 (a white key's row, transparent but for notes) is lit,
        # and the roll scrolls it left as time passes, further than the strip it repaints
        first = page.evaluate(FIRST_LIT, 64)
        assert first > 0
        page.wait_for_function(f"({FIRST_LIT})(64) >= 0 && ({FIRST_LIT})(64) < {first} - REPAINT_MS * ROLL.pxPerMs - 20")
        ada = server.conductor.performers["ada"]
        assert ada.events_in == 6 and ada.owner.startswith("web:127.0.0.1:")

        # steer: mode and temperature, as the page's controls send them
        page.select_option("#mode", "listen")
        page.wait_for_selector('#performers tr[data-performer="ada"][data-mode="listen"]')
        page.eval_on_selector("#temperature", "el => { el.value = 0.5; el.dispatchEvent(new Event('change')); }")
        page.wait_for_function("""[...document.querySelectorAll('#performers tr[data-performer="ada"] td')]
                                  .some(td => td.textContent === '0.50')""")
        assert server.conductor.performers["ada"].settings.temperature == 0.5
        # style steering from the page: a range and a scale, then a refused value comes back as an error
        page.wait_for_selector("#style-row", state="visible")
        page.eval_on_selector("#high", "el => { el.value = 72; el.dispatchEvent(new Event('change')); }")
        page.eval_on_selector("#scale", "el => { el.value = 'D dorian'; el.dispatchEvent(new Event('change')); }")
        page.eval_on_selector("#overlap", "el => { el.checked = false; el.dispatchEvent(new Event('change')); }")
        # the server's status (it comes every second) says what it holds now
        page.wait_for_function("""(() => { const p = S.performers.ada;
            return p && p.style && p.style.high === 72 && p.style.scale === 'D dorian' && p.style.overlap === 0; })()""")
        style = server.conductor.performers["ada"].style.settings
        assert (style.high, style.scale, style.overlap) == (72, "D dorian", 0)
        page.eval_on_selector("#scale", "el => { el.value = 'H lydian'; el.dispatchEvent(new Event('change')); }")
        page.wait_for_function("+document.getElementById('errors').dataset.count === 1")
        assert style.scale == "D dorian"
        assert "H lydian" in page.inner_text("#errors")

        # panic: ada is silenced until she plays again
        page.select_option("#mode", "auto")
        page.wait_for_selector('#performers tr[data-performer="ada"][data-mode="auto"]')
        page.click("#panic")
        page.wait_for_function("""[...document.querySelectorAll('#performers tr[data-performer="ada"] td')]
                                  .some(td => td.textContent.includes('(panic)'))""")
        assert server.conductor.performers["ada"].panicked
        assert page.get_attribute("#errors", "data-count") == "1"  # the refused scale, nothing else
        assert errors == []
        page.screenshot(path=str(tmp_path / "web.png"))
        browser.close()
        peer.close()


# A Web MIDI system with one output that keeps what it is sent: headless chromium has no
# MIDI ports, so the page is given this one before any of its scripts run.
FAKE_MIDI = """
window.__midiSent = [];
const output = {id: "synth-1", name: "Test synth", type: "output",
                send(data) { window.__midiSent.push(Array.from(data)); }};
navigator.requestMIDIAccess = () => Promise.resolve({inputs: new Map(), outputs: new Map([[output.id, output]])});
"""


def test_answers_go_to_the_web_midi_output_picked_on_the_page(notes_model, tmp_path):
    cfg = config(notes_model, tmp_path, web="127.0.0.1:0", default_mode="duet", max_note=60.0)
    with ServerThread(cfg) as server, sync_api.sync_playwright() as pw:
        browser = launch(pw, tmp_path / "profile")
        browser.add_init_script(FAKE_MIDI)
        page = browser.new_page()
        page.goto(server.info["web"])
        page.wait_for_selector('#conn[data-state="open"]')
        page.fill("#name", "mia")
        page.select_option("#join-mode", "duet")
        page.click("#join-button")  # the first gesture starts the sound, and asks for MIDI
        page.wait_for_selector("#midi-label", state="visible")
        page.select_option("#midi-out", "synth-1")
        for pitch in (60, 62, 64):
            press(page, pitch, pointer_id=2)
            press(page, pitch, pointer_id=2, down=False)
        page.wait_for_function("window.__midiSent.length >= 6")  # three answers, each on and off
        sent = page.evaluate("window.__midiSent")
        assert page.get_attribute("#roll", "data-answers") == "3"
        ons = [m for m in sent if m[0] == 0x90]
        offs = [m for m in sent if m[0] == 0x80]
        assert len(ons) == 3 and len(offs) == 3 and len(sent) == 6
        assert all(len(m) == 3 and 0 <= m[1] <= 127 and 0 <= m[2] <= 127 for m in sent)
        assert all(m[2] > 0 for m in ons) and all(m[2] == 0 for m in offs)
        sounding = set()
        for status, pitch, _ in sent:  # every answer ends, and only what was started ends
            if status == 0x90:
                sounding.add(pitch)
            else:
                assert pitch in sounding
                sounding.discard(pitch)
        assert not sounding
        assert server.conductor.performers["mia"].events_in == 6
        browser.close()


def test_a_touch_model_gets_an_xy_pad_whose_touches_are_answered(touch_model, tmp_path):
    cfg = config(touch_model, tmp_path, web="127.0.0.1:0", default_mode="duet")
    with ServerThread(cfg) as server, sync_api.sync_playwright() as pw:
        browser = launch(pw, tmp_path / "profile")
        page = browser.new_page()
        page.goto(server.info["web"])
        page.wait_for_selector('#conn[data-state="open"]')
        page.fill("#name", "tina")
        page.click("#join-button")
        page.wait_for_selector("#pad", state="visible")
        assert page.is_hidden("#keyboard")
        for x, y in ((0.2, 0.3), (0.5, 0.5), (0.8, 0.7)):
            page.eval_on_selector("#pad", """(pad, [x, y]) => {
                const r = pad.getBoundingClientRect();
                for (const type of ["pointerdown", "pointerup"])
                    pad.dispatchEvent(new PointerEvent(type, {bubbles: true, pointerId: 5, pointerType: "touch",
                        clientX: r.left + x * r.width, clientY: r.top + y * r.height}));
            }""", [x, y])
        page.wait_for_function("+document.getElementById('pad').dataset.answers >= 3")
        assert page.get_attribute("#pad", "data-sent") == "3"
        assert server.conductor.performers["tina"].events_in == 3
        browser.close()


@pytest.mark.parametrize("driver", ["devtools", "playwright"])
def test_bench_web_runs_and_counts_every_event(notes_model, driver):
    """`ensemble bench web`, briefly, with either driver: it must keep working (its timings
    are not checked here)."""
    from ensemble.bench.web import bench_web

    [(n, result)] = bench_web(str(notes_model), [2], rate=20.0, seconds=0.5, chromium=CHROMIUM, warmup=0.2,
                              driver=driver)
    assert n == 2 and result["events"] == 2 * 10  # 20/s x 0.7 s = 14 each, less the 4 of the warm-up
    assert result["lost"] < result["events"] and result["median_ms"] > 0

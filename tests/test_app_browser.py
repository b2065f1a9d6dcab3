"""The dashboard end to end in a real browser: upload, validate, train, stop, resume, compare.

Needs Debian's chromium at /usr/bin/chromium and the playwright package (no browser download).
Run with `pytest tests/test_app_browser.py -s` to see the launch-to-first-curve-point time.
Tab screenshots go to tmp_path (with app.log, timing.json and last-page.png, the page when the
test ended, for a failure); `WORKBENCH_UPDATE_SCREENSHOTS=1` also rewrites docs/screenshots/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TAB_SHOTS = ["Data", "Train", "Runs", "Compare", "Export"]
# Timeouts in milliseconds, sized for a busy 2-core CPU.
STEP_MS = 60_000
TRAIN_MS = 600_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: apt-get install chromium"
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is absent: pip install -e '.[test]'"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"app.py did not answer at {url} in {timeout:.0f} s:\n{log.read_text()}")


@pytest.fixture
def app_url(tmp_path):
    """`python app.py` on a free port with its runs under tmp_path; killed with its children."""
    port = _free_port()
    env = os.environ | {
        "WORKBENCH_RUNS_DIR": str(tmp_path / "runs"),
        "WORKBENCH_HOST": "127.0.0.1",
        "WORKBENCH_PORT": str(port),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log = tmp_path / "app.log"
    with open(log, "w", encoding="utf-8") as output:
        # A session of its own, so teardown also ends the training process the app starts.
        process = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_up(url, process, log, timeout=180)
        yield url
    finally:
        _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the app's process group, then SIGKILL what is left (a training child)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(15)


@pytest.fixture
def page(app_url, tmp_path):
    """Chromium on the app's page; the last view is saved to tmp_path to debug a failure."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(STEP_MS)
            page.goto(app_url)
            page.get_by_role("button", name="Load data").wait_for()
            yield page
            page.screenshot(path=tmp_path / "last-page.png", full_page=True)
        finally:
            browser.close()


@pytest.fixture
def pairs_csv(tmp_path) -> Path:
    """30 SciFact train claims as (query, passage, label) rows: positives and 3 BM25 negatives."""
    from workbench.job import JobConfig, prepare_data, training_pairs

    data = prepare_data(JobConfig(dev_queries=0, max_train_queries=30, max_test_queries=1))
    path = tmp_path / "scifact-pairs.csv"
    training_pairs(data, 3).to_pandas().to_csv(path, index=False)
    return path


# Page helpers


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def _panel(page):
    """The open tab (role queries skip the hidden ones)."""
    return page.get_by_role("tabpanel")


def _block(page, label: str):
    """The Gradio block on the open tab whose label reads `label`."""
    label_text = page.get_by_text(label, exact=True)
    return _panel(page).locator(".block").filter(has=label_text).last


def _field(page, label: str):
    return _panel(page).get_by_label(label, exact=True)


def _fill(page, label: str, value) -> None:
    field = _field(page, label)
    field.fill(str(value))
    field.press("Tab")


def _choose(page, label: str, option: str) -> None:
    """Open a dropdown and click one of its options."""
    field = _field(page, label)
    field.click()
    options = page.locator(f"#{field.get_attribute('aria-controls')}")
    options.get_by_role("option", name=option, exact=True).click()


def _progress_text(page) -> str:
    return page.locator("progress").locator("xpath=..").inner_text()


def _wait_for_state(page, state: str, timeout_ms: int) -> None:
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        text = _progress_text(page)
        if re.search(rf":\s*{state}\b", text):
            return
        assert not re.search(r":\s*failed\b", text), text
        page.wait_for_timeout(500)
    raise AssertionError(f"the run did not reach {state!r}: {_progress_text(page)!r}")


def _loss_traces(page) -> int:
    return _block(page, "Loss").locator(".scatterlayer .trace").count()


def _screenshot(page, name: str, copies: list[Path]) -> None:
    _tab(page, name)
    page.wait_for_timeout(1000)  # plotly lays out figures after the tab shows
    image = page.screenshot(full_page=True)
    for folder in copies:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name.lower()}.png").write_bytes(image)


# Steps of the flow


def _load_and_validate(page, csv: Path) -> None:
    _field(page, "Upload a file").check()
    upload = _block(page, "Training file (CSV, TSV, JSONL, Parquet; may be .gz)")
    upload.locator("input[type=file]").set_input_files(csv)
    upload.get_by_label(csv.name, exact=True).wait_for()  # the uploaded file's row
    page.get_by_role("button", name="Load data").click()
    page.get_by_text("123 rows, columns").wait_for()

    page.get_by_role("button", name="Validate").click()
    page.get_by_text("ready to train").wait_for()


def _launch(page) -> tuple[str, float]:
    """Set a short run on the tiny model and launch it.

    Returns:
        The run id, and the seconds from clicking Launch to the loss chart's first point.
    """
    _tab(page, "Train")
    for label in ("Base model", "Baseline"):
        _choose(page, label, "minilm-l6-tiny")
    settings = {
        "Max length": 64,
        "Batch size": 8,
        "Max steps (0 = epochs)": 40,
        "Eval every N steps (0 = 3x)": 4,
        "Frozen bottom layers": 1,
    }
    for label, value in settings.items():
        _fill(page, label, value)

    assert _loss_traces(page) == 0
    # The Train tab polls every 2 s, so the time is up to one poll late.
    page.get_by_role("button", name="Launch").click()
    start = time.monotonic()
    note = page.get_by_text(re.compile(r"Run \S+: (starting|queued)"))
    run_id = note.inner_text().split()[1].rstrip(":")
    deadline = start + TRAIN_MS / 1000
    while _loss_traces(page) == 0 or not re.search(r"step [1-9]\d* /", _progress_text(page)):
        assert time.monotonic() < deadline, f"no curve point: {_progress_text(page)!r}"
        assert "failed" not in _progress_text(page), _progress_text(page)
        page.wait_for_timeout(100)
    return run_id, time.monotonic() - start


def _stop_and_resume(page) -> None:
    page.get_by_role("button", name="Stop").click()
    _wait_for_state(page, "stopped", STEP_MS * 2)
    page.get_by_role("button", name="Resume").click()
    page.get_by_text("queued to resume").wait_for()
    _wait_for_state(page, "finished", TRAIN_MS)
    assert "step 40 / 40" in _progress_text(page)
    _panel(page).get_by_text("Training now: none").wait_for()


def _compare(page, run_id: str) -> None:
    _tab(page, "Runs")
    page.get_by_role("button", name="Refresh").click()
    table = _block(page, "Runs")
    table.get_by_text("finished", exact=True).filter(visible=True).first.wait_for()

    _tab(page, "Compare")
    assert _field(page, "Run A").input_value() == run_id  # Refresh fills every tab's picker
    for side, system in (("A", "baseline"), ("B", "fine-tuned")):
        _choose(page, f"Run {side}", run_id)
        _choose(page, f"System {side}", system)
    page.get_by_role("button", name="Compare").click()
    page.get_by_text("95% bootstrap CI").wait_for()

    queries = _field(page, "Query")
    queries.click()
    page.locator(f"#{queries.get_attribute('aria-controls')}").get_by_role("option").last.click()
    ranking = page.locator("table.ranking")
    ranking.get_by_text("A passage", exact=True).wait_for()
    ranking.get_by_text("B passage", exact=True).wait_for()
    assert ranking.locator("tr").count() > 1


def _export(page, run_id: str) -> None:
    _tab(page, "Export")
    assert _field(page, "Run").input_value() == run_id
    page.get_by_role("button", name="Show model card").click()
    card = _panel(page)
    card.get_by_text("Reranker fine-tuned from").wait_for()
    assert card.locator("code", has_text="library_name: sentence-transformers").count() == 1


def test_dashboard_trains_and_compares_in_a_browser(page, pairs_csv, tmp_path, record_property):
    shots = [tmp_path / "screenshots"]
    if os.environ.get("WORKBENCH_UPDATE_SCREENSHOTS") == "1":
        shots.append(SCREENSHOTS)
    _load_and_validate(page, pairs_csv)
    _screenshot(page, "Data", shots)

    run_id, seconds = _launch(page)
    print(f"\nlaunch to first loss point: {seconds:.1f} s")
    record_property("launch_to_first_point_s", round(seconds, 1))
    (tmp_path / "timing.json").write_text(json.dumps({"launch_to_first_point_s": seconds}))
    _stop_and_resume(page)
    _screenshot(page, "Train", shots)

    _compare(page, run_id)
    _screenshot(page, "Runs", shots)
    _screenshot(page, "Compare", shots)
    _export(page, run_id)
    _screenshot(page, "Export", shots)
    for name in TAB_SHOTS:
        assert (SCREENSHOTS / f"{name.lower()}.png").stat().st_size > 10_000

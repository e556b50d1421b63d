"""A sweep against a real MLflow server, checked in the MLflow UI with headless Chromium.

The sweep runs ASHA with ``max_t: 1``: every trial is stopped by the scheduler after its first
epoch, so the test also shows that stopped trials end FINISHED (tag early_stopped), never
RUNNING. The screenshot goes to ``.artifacts/mlflow_ui.png``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from shiftlab.tracking import runs

from train_fixtures import tiny_demo_sweep

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "demo.yaml"
ARTIFACTS = ROOT / ".artifacts"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"mlflow server at {url} not up after {timeout} s")


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "art"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        # The server's own process group: gunicorn/uvicorn workers go with it.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,1000",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
    ):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def test_sweep_trials_show_as_nested_runs_in_the_mlflow_ui(
    ray_local, tmp_path: Path, mlflow_server: str
) -> None:
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which(
        "chromedriver"
    ):
        pytest.skip(
            "needs chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
        )
    out = tmp_path / "runs"
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "parameters": {"method.zodi_weight": {"grid": [0.0, 0.1]}},
                "asha": {"max_t": 1},
            }
        )
    )
    overrides = tiny_demo_sweep(out)
    # In this process, on the session's Ray: the sweep is the same one `shiftlab sweep
    # --scheduler asha --tracking-uri <server>` runs (tests/test_sweep.py runs the command).
    from shiftlab.sweep.driver import run_sweep
    from shiftlab.sweep.state import SweepOptions

    options = SweepOptions(name="uisweep", scheduler="asha", tracking_uri=mlflow_server)
    outcome = run_sweep(DEMO, space, overrides, options)
    assert outcome.errors == 0 and outcome.trials == 2

    client = runs.client_for(mlflow_server)
    exp = client.get_experiment_by_name("demo")
    parent = client.search_runs(
        [exp.experiment_id], filter_string="tags.`shiftlab.kind` = 'sweep'"
    )[0]
    children = runs.children(client, exp.experiment_id, parent.info.run_id)
    assert len(children) == 2
    for child in children:
        # stopped by ASHA at max_t, closed by the driver: FINISHED, marked, never RUNNING
        assert child.info.status == "FINISHED"
        # marked early-stopped exactly when ASHA's stop came before the trial's own end (under
        # load a 2-epoch trial can finish first; then it keeps its final metrics, unmarked)
        stopped = "final/val_miou" not in child.data.metrics
        assert child.data.tags[runs.TAG_EARLY] == ("true" if stopped else "false")
        assert "val_miou" in child.data.metrics
    assert parent.info.status == "FINISHED"

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome()
    try:
        driver.get(f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs")
        row = WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.CSS_SELECTOR, f"[role=row][row-id='{parent.info.run_id}']")
        )
        assert parent.info.run_name in row.text

        def child_rows(d):
            return [
                r
                for r in d.find_elements(By.CSS_SELECTOR, "[role=row][row-id]")
                if r.get_attribute("row-id") in {c.info.run_id for c in children}
            ]

        assert not child_rows(driver)  # nested runs are collapsed under their parent
        row.find_element(
            By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']"
        ).click()
        WebDriverWait(driver, 60).until(
            lambda d: len({r.get_attribute("row-id") for r in child_rows(d)}) == 2
        )
        body = driver.find_element(By.TAG_NAME, "body").text
        for child in children:
            assert child.info.run_name.split(" ")[0] in body  # t00 / t01
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "mlflow_ui.png"))
    finally:
        driver.quit()
    show_per_class_chart(mlflow_server, exp.experiment_id, children)


def show_per_class_chart(url: str, experiment_id: str, children: list) -> None:
    """The chart view draws each per-class IoU (``val/<set>/iou/<class>``) across the trials.

    A browser of its own: the UI remembers expanded rows, and the parent's row must start
    collapsed here for one click to show its trials. The UI draws only the charts in view
    (runs carry dozens of metrics), so the chart search narrows it to one per-class key.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    keys = sorted(k for k in children[0].data.metrics if k.startswith("val/") and "/iou/" in k)
    assert keys, children[0].data.metrics  # per-class metrics are in the MLflow store
    key = keys[0]
    names = [c.info.run_name for c in children]

    def per_class_chart_of_every_trial(d) -> bool:
        body = d.find_element(By.TAG_NAME, "body").text
        return all(f"{n} ({key})" in body for n in names)

    driver = chrome()
    try:
        driver.get(f"{url}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART")
        expand = WebDriverWait(driver, 120).until(
            lambda d: d.find_element(
                By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']"
            )
        )
        expand.click()  # the trials, nested under the sweep's run, are drawn once visible
        # The UI draws only the charts in view; the chart search brings this one there.
        search = WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder='Search metric charts']")
        )
        search.send_keys(key)
        WebDriverWait(driver, 120).until(per_class_chart_of_every_trial)
        driver.save_screenshot(str(ARTIFACTS / "mlflow_ui_per_class.png"))
    finally:
        driver.quit()

"""A real headless browser (Debian's Chromium + chromedriver, driven by selenium) and an `mlflow ui` to point it at."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

# Chromium as root in a container, without network: no sandbox, no GPU, no first-run/sync/update traffic.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,800")


def browser_or_skip() -> tuple[str, str]:
    """(chromium, chromedriver) paths; skips when absent, fails instead where ``VAURA_REQUIRE_BROWSER`` is set (CI)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    reason = ""
    if chromium is None or driver is None:
        reason = "no Chromium + chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"
    elif importlib.util.find_spec("selenium") is None:
        reason = "selenium is not installed (pip install -e '.[dev]')"
    if reason:
        if os.environ.get("VAURA_REQUIRE_BROWSER"):
            pytest.fail(f"VAURA_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(reason)
    return chromium, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def chromium(binary: str, driver: str) -> Iterator[object]:
    """A headless Chromium WebDriver with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = binary
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            opts.add_argument(flag)
        browser = webdriver.Chrome(service=Service(driver), options=opts)
        try:
            yield browser
        finally:
            browser.quit()


@contextlib.contextmanager
def served(cmd: list[str], cwd: Path, env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """Run a server command until its ``/health`` answers; yields its base URL, stops it afterwards."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{cmd} did not come up:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield base
    finally:  # its own session: the server's worker processes go with it
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

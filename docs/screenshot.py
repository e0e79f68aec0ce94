"""Take the README's picture of the dashboard: docs/dashboard.png.

    .venv/bin/python docs/screenshot.py [--out docs/dashboard.png] [--width 1280] [--month 2026-10]

What it does, with nothing but this machine: makes a fresh SQLite file in a temporary folder, loads
the sample tenant into it with `taskmeter demo` (the key is read from its JSON output), starts
`taskmeter serve` on a free loopback port, signs in to the dashboard in headless Chromium (Debian's
`chromium` and `chromium-driver`, driven by Selenium from the test extras) with a window `--width`
wide, waits for the month's figures (the first visit of a month may show "Preparing the figures"
while they are computed) and writes a full-page PNG. The browser resolves no host but 127.0.0.1, so
the picture also shows that the dashboard needs no network. Everything is removed afterwards.

Retake it whenever the dashboard or the demo data change. Exits non-zero, saying why, if a step fails.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
TASKMETER = Path(sys.executable).with_name("taskmeter")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo(env: dict[str, str]) -> str:
    """Loads the sample tenant; its read key."""
    done = subprocess.run([str(TASKMETER), "demo"], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"taskmeter demo failed:\n{done.stderr}")
    try:  # its JSON summary names the key; failing that, anything that looks like a key
        return str(json.loads(done.stdout)["key"])
    except (ValueError, KeyError, TypeError):
        found = re.search(r"\btm_[A-Za-z0-9]+_[A-Za-z0-9_-]+", done.stdout)
        if found is None:
            sys.exit(f"taskmeter demo printed no API key:\n{done.stdout}")
        return found.group(0)


def wait_healthy(url: str, server: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"taskmeter serve stopped (exit {server.returncode})")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"taskmeter serve did not answer on {url} within {seconds:.0f} s")


def browser(width: int, profile: Path) -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)


def capture(driver: Any, url: str, key: str, path: str, seconds: float = 120) -> bytes:
    """Signs in, opens `path` and waits for its figures; a full-page PNG."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/dashboard/sign-in")
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(driver, 30).until(lambda d: "/dashboard/sign-in" not in d.current_url)
    driver.get(url + path)
    # The loading page refreshes itself until the month is computed; earlier months of the chart
    # still being computed ("…") appear on a reload.
    deadline = time.monotonic() + seconds
    while True:
        WebDriverWait(driver, seconds).until(lambda d: d.find_elements(By.CSS_SELECTOR, "section.kpis, section.empty"))
        if not driver.find_elements(By.CSS_SELECTOR, "svg text.pending, [data-empty-chart][data-pending]"):
            break
        if time.monotonic() > deadline:
            sys.exit(f"{path}: months still being computed after {seconds:.0f} s")
        time.sleep(1)
        driver.refresh()
    driver.execute_script("window.scrollTo(0, 0)")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    image = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    })  # fmt: skip
    return base64.b64decode(image["data"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--month", help="YYYY-MM; default: the dashboard's (the last closed month)")
    args = parser.parse_args(argv)
    for need in (TASKMETER, Path(CHROMIUM), Path(DRIVER)):
        if not need.exists():
            sys.exit(f"{need} is missing (make install; apt-get install -y chromium chromium-driver)")
    with tempfile.TemporaryDirectory(prefix="taskmeter-screenshot-") as folder:
        env = {**os.environ, "TASKMETER_DATABASE_URL": f"sqlite:///{folder}/demo.db"}
        key = demo(env)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(folder) / "serve.log", "wb")  # noqa: SIM115 - closed below
        server = subprocess.Popen([str(TASKMETER), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        driver = None
        try:
            wait_healthy(url, server)
            driver = browser(args.width, Path(folder) / "profile")
            png = capture(driver, url, key, "/dashboard" + (f"?month={args.month}" if args.month else ""))
        finally:
            if driver is not None:
                driver.quit()
            server.terminate()
            server.wait(30)
            log.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"{args.out} ({len(png):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

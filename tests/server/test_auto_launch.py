"""``--auto-launch`` opens the frontend in the user's browser, ``--disable-auto-launch`` never does.

The browser is whatever the BROWSER environment variable names, as Python's webbrowser module reads it: here a
small script that records the address it is given.
"""
from __future__ import annotations

import stat
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import URL_LINE


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A BROWSER command for the ``comfyui`` processes of the test; returns the file it appends addresses to."""
    opened = tmp_path / "opened.txt"
    script = tmp_path / "record-browser"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> "{opened}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("BROWSER", str(script))
    return opened


def printed_url(process) -> str:
    """The address ``comfyui`` printed, exactly as printed (``start_comfyui`` rewrites localhost)."""
    return URL_LINE.search(process.text()).group(1)


def wait_for_file(path: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    raise TimeoutError(f"{path} was not written in {timeout}s")


@pytest.mark.parametrize("options, environment", [(["--auto-launch"], {}), ([], {"COMFYUI_AUTO_LAUNCH": "true"})],
                         ids=["option", "environment variable"])
def test_auto_launch_opens_the_frontend_in_the_browser(comfyui_process, browser, monkeypatch, options, environment):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    process = comfyui_process("--listen", "127.0.0.1", *options)
    assert wait_for_file(browser) == printed_url(process) + "\n"
    # What it opened is the frontend of this server.
    with urllib.request.urlopen(process.url + "/") as response:
        assert response.status == 200 and b"<html" in response.read().lower()


@pytest.mark.parametrize("options, environment", [
    (["--disable-auto-launch"], {}),
    ([], {}),
    (["--disable-auto-launch"], {"COMFYUI_AUTO_LAUNCH": "true"}),
    (["--auto-launch", "--disable-auto-launch"], {}),
], ids=["disabled", "default", "disable overrides the environment", "disable overrides the option"])
def test_no_browser_by_default_or_when_disabled(comfyui_process, browser, monkeypatch, options, environment):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    process = comfyui_process("--listen", "127.0.0.1", *options)
    with urllib.request.urlopen(process.url + "/api/system_stats") as response:
        assert response.status == 200
    # --auto-launch opens the browser right after printing the address; give a wrong launch ample time.
    time.sleep(2)
    assert not browser.exists() and process.process.poll() is None

"""Headless Chromium for page tests: Debian's chromium and chromedriver, installed with apt when missing
(the test machine's own packages; nothing downloads a browser of its own)."""

import fcntl
import os
import shutil
import subprocess

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

PACKAGES = ("chromium", "chromium-driver")


def ensure_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing the Debian packages if needed (needs root)."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    if os.geteuid() != 0:
        raise RuntimeError("chromium and chromedriver are missing: apt-get install chromium chromium-driver")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    # one install at a time: the suite's parallel workers (pytest-xdist) may all reach here first, and a second
    # apt-get would fail on dpkg's lock
    with open("/tmp/tenure-tests-chromium.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((shutil.which("chromium"), shutil.which("chromedriver"))):
            if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=True)
                subprocess.run(install, env=env, capture_output=True, timeout=600, check=True)
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "apt installed chromium but it is not on PATH"
    return chromium, driver


def headless_chromium(*, javascript: bool = True, phone_width: int | None = None,
                      language: str = "en-US") -> webdriver.Chrome:
    """A desktop window (1024×768) or, with ``phone_width``, a phone's screen (mobile emulation: that many CSS
    pixels wide, touch, a phone's user agent); ``javascript=False`` switches scripts off; ``language`` is what
    the browser asks for in Accept-Language."""
    chromium, driver = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--lang={language}"):
        options.add_argument(arg)
    prefs: dict[str, object] = {"intl.accept_languages": language}
    if not javascript:
        prefs["profile.managed_default_content_settings.javascript"] = 2
    options.add_experimental_option("prefs", prefs)
    if phone_width:
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": phone_width, "height": 740, "pixelRatio": 3.0, "touch": True},
            "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/156.0.0.0 Mobile Safari/537.36"})
    else:
        options.add_argument("--window-size=1024,768")
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))

"""Serve a built site on 127.0.0.1 and drive headless Chromium over it (the browser test and the screenshots).

Chromium and its driver come from Debian (`apt-get install chromium chromium-driver`: /usr/bin/chromium,
/usr/bin/chromedriver); BYTROPIX_CHROMIUM and BYTROPIX_CHROMEDRIVER point elsewhere (e.g. Chrome on a CI runner).
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHROMIUM = os.environ.get('BYTROPIX_CHROMIUM', '/usr/bin/chromium')
CHROMEDRIVER = os.environ.get('BYTROPIX_CHROMEDRIVER', '/usr/bin/chromedriver')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--disable-dev-shm-usage', '--hide-scrollbars']


def missing() -> str | None:
    "Why the browser cannot run here, or None."
    for what, path in (('chromium', CHROMIUM), ('chromedriver', CHROMEDRIVER)):
        if not (Path(path).is_file() or shutil.which(path)):
            return f'{what} not found at {path}: `apt-get install chromium chromium-driver` (or set BYTROPIX_{what.upper()})'
    try: import selenium  # noqa: F401
    except ImportError: return 'selenium is not installed: pip install -e ".[dev]"'
    return None


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError): super().handle_error(request, client_address)  # a browser cancelling a load is fine


@contextlib.contextmanager
def serve(directory: Path):
    "Serve `directory` on a free port of 127.0.0.1; yields the base URL (ending in '/')."
    httpd = _Server(('127.0.0.1', 0), functools.partial(_QuietHandler, directory=str(directory)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try: yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900):
    "A headless Chromium WebDriver that records the console (`driver.get_log('browser')`)."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which(CHROMIUM) or CHROMIUM
    for f in FLAGS + [f'--window-size={width},{height}']: opts.add_argument(f)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which(CHROMEDRIVER) or CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try: yield driver
    finally: driver.quit()


# Resolves once the page has settled: fonts loaded, mermaid diagrams drawn, plotly figures drawn.
SETTLED_JS = '''
const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function poll() {
  const mermaidPending = [...document.querySelectorAll('pre.mermaid')].some(e => !e.querySelector('svg'));
  const plotlyPending = [...document.querySelectorAll('.plotly-graph-div')].some(e => !e.querySelector('.main-svg'));
  const fontsReady = document.fonts ? document.fonts.status === 'loaded' : true;
  if ((!mermaidPending && !plotlyPending && fontsReady && document.readyState === 'complete') || Date.now() - t0 > 15000) done(true);
  else setTimeout(poll, 50);
})();
'''


def settle(driver) -> None:
    driver.set_script_timeout(20)
    driver.execute_async_script(SETTLED_JS)


def screenshot(driver, url: str, path: Path, height: int = 1100) -> None:
    "A PNG of the top of the page at `url` (1280 px wide)."
    driver.set_window_size(1280, height)
    driver.get(url)
    settle(driver)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))

"""The playground page (`GET /`) in a real browser: headless Chromium from Debian, driven by selenium.

A server with an API key and a tiny model whose engine is slowed to 20 ms a token (so streaming is visible): the page
shows the server's 401 until a key is typed, lists the models, streams a reply in several pieces, and shows the
server's refusal of an oversized request.
"""
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'/'docsite'))
import browser  # noqa: E402

from bytropix.data.tokenizers import byte_tokenizer  # noqa: E402
from bytropix.models.base import build_model  # noqa: E402
from bytropix.serving.server import BackgroundServer, ServedModel, ServerSettings, create_app  # noqa: E402

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))


@pytest.fixture(scope='module')
def server():
    torch.manual_seed(0)
    sm = ServedModel.build('tiny', build_model('gpt', vocab_size=256, block_size=256, n_layer=1, n_embd=32, n_head=2),
                           byte_tokenizer())
    step = sm.engine.step
    def slow_step():
        time.sleep(0.02); step()
    sm.engine.step = slow_step
    with BackgroundServer(create_app([sm], ServerSettings(api_keys=('sk-play',), max_tokens=100))) as s: yield s


def wait_for(cond, timeout=20.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if v := cond(): return v
        time.sleep(0.02)
    raise AssertionError('timed out waiting for the page')


def test_playground_streams_and_shows_errors(server):
    from selenium.webdriver.common.by import By
    with browser.chromium() as d:
        d.get(server.url + '/')
        el = lambda i: d.find_element(By.ID, i)
        wait_for(lambda: 'API key' in el('error').text)            # no key yet: the server's 401 is shown
        el('key').send_keys('sk-play'); d.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
        wait_for(lambda: d.execute_script("return document.getElementById('model').options.length") == 1)
        assert el('model').get_attribute('value') == 'tiny'
        el('max_tokens').clear(); el('max_tokens').send_keys('40'); el('temperature').clear(); el('temperature').send_keys('0')
        el('prompt').send_keys('Hello there'); el('send').click()
        seen = set()
        def finished():
            spans = d.find_elements(By.CSS_SELECTOR, '.msg.assistant span')
            if spans: seen.add(len(spans[0].get_property('textContent')))
            return spans and el('send').is_enabled() and len(seen) > 1
        wait_for(finished)
        assert len(seen - {0}) >= 3, f"the reply did not stream in pieces: lengths seen {sorted(seen)}"
        assert d.find_element(By.CSS_SELECTOR, '.msg.user span').text == 'Hello there'
        assert el('error').text == ''
        el('max_tokens').clear(); el('max_tokens').send_keys('5000')  # above the server's limit of 100
        el('prompt').send_keys('again'); el('send').click()
        wait_for(lambda: 'limit of 100' in el('error').text)
        severe = [l['message'] for l in d.get_log('browser') if l['level'] == 'SEVERE' and 'Failed to load resource' not in l['message']]  # the refused requests
        assert severe == []

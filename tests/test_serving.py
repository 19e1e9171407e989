"The OpenAI-compatible server end to end: a real uvicorn on 127.0.0.1, the official `openai` client, raw HTTP for the edges."
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from bytropix.cli import main
from bytropix.data.tokenizers import byte_tokenizer
from bytropix.models.base import build_model
from bytropix.serving.server import BackgroundServer, ServedModel, ServerSettings, create_app, load_served

KEY = 'sk-test'


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp('exports')
    build_model('gpt', vocab_size=256, block_size=64, n_layer=2, n_embd=32, n_head=4).save_pretrained(d/'gpt', tokenizer=byte_tokenizer())
    bdh = build_model('bdh', vocab_size=256, block_size=64, n_layer=2, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4)
    trm = build_model('trm', vocab_size=6, block_size=16, n_embd=32, n_head=2, multiple_of=16, halt_max_steps=3)
    models = [load_served('gpt', d/'gpt'), ServedModel.build('bdh', bdh.eval(), byte_tokenizer()),
              ServedModel.build('trm', trm, byte_tokenizer())]
    app = create_app(models, ServerSettings(api_keys=(KEY,), max_body_bytes=8192, max_tokens=128, cors=('http://allowed.example',)))
    with BackgroundServer(app) as s: yield s


@pytest.fixture(scope='module')
def client(server): return openai.OpenAI(base_url=server.url + '/v1', api_key=KEY, max_retries=0, timeout=60)


def post(server, path, body, key=KEY, **kw):
    return httpx.post(server.url + path, headers={'Authorization': f'Bearer {key}'}, timeout=60, **kw,
                      **({'json': body} if body is not None else {}))


def metric(server, name, model) -> float:
    text = httpx.get(server.url + '/metrics').text
    line = next(l for l in text.splitlines() if l.startswith(f'{name}{{model="{model}"}}'))
    return float(line.split()[-1])


def test_models_health_playground(server, client):
    assert [m.id for m in client.models.list().data] == ['gpt', 'bdh', 'trm']
    assert httpx.get(server.url + '/health').json()['status'] == 'ok'
    pre = httpx.options(server.url + '/v1/models', headers={'Origin': 'http://allowed.example', 'Access-Control-Request-Method': 'GET'})
    assert pre.headers.get('access-control-allow-origin') == 'http://allowed.example'
    other = httpx.options(server.url + '/v1/models', headers={'Origin': 'http://evil.example', 'Access-Control-Request-Method': 'GET'})
    assert 'access-control-allow-origin' not in other.headers
    page = httpx.get(server.url + '/')
    assert page.status_code == 200 and '/v1/chat/completions' in page.text and 'https://' not in page.text


@pytest.mark.parametrize('model', ['gpt', 'bdh'])
def test_completions_n_logprobs_seed(client, model):
    r = client.completions.create(model=model, prompt=['Hello', 'A longer prompt'], max_tokens=5, n=2, temperature=1.0,
                                  seed=3, logprobs=2, extra_body={'top_k': 20, 'repetition_penalty': 1.1})
    assert [c.index for c in r.choices] == [0, 1, 2, 3] and r.object == 'text_completion'
    assert all(c.finish_reason == 'length' and len(c.logprobs.token_logprobs) == 5 for c in r.choices)
    lp = [c.logprobs for c in r.choices]   # the two likeliest and the chosen token (OpenAI: up to logprobs + 1 entries)
    assert all(len(t) <= 3 and all(v <= 0 for v in t.values()) and tt in t for l in lp for t, tt in zip(l.top_logprobs, l.tokens))
    assert r.usage.prompt_tokens == 5 + 15 and r.usage.completion_tokens == 20 and r.usage.total_tokens == 40
    again = client.completions.create(model=model, prompt=['Hello', 'A longer prompt'], max_tokens=5, n=2, temperature=1.0,
                                      seed=3, logprobs=2, extra_body={'top_k': 20, 'repetition_penalty': 1.1})
    assert [c.text for c in again.choices] == [c.text for c in r.choices]  # a seed reproduces the sample


def test_chat_stream_equals_plain(client):
    msgs = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi there'}]
    plain = client.chat.completions.create(model='gpt', messages=msgs, max_tokens=12, temperature=0, logprobs=True, top_logprobs=1)
    assert plain.object == 'chat.completion' and plain.choices[0].message.role == 'assistant'
    assert len(plain.choices[0].logprobs.content) >= 1
    chunks = list(client.chat.completions.create(model='gpt', messages=msgs, max_tokens=12, temperature=0, stream=True,
                                                 stream_options={'include_usage': True}))
    assert chunks[0].choices[0].delta.role == 'assistant'
    text = ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens and chunks[-1].choices == []


def test_metrics_histograms(server, client):
    client.completions.create(model='bdh', prompt='metrics', max_tokens=3, temperature=0, stream=True).close()
    client.completions.create(model='bdh', prompt='metrics', max_tokens=3, temperature=0)
    text = httpx.get(server.url + '/metrics').text
    for name in ('bytropix_time_to_first_token_seconds_count', 'bytropix_inter_token_latency_seconds_count',
                 'bytropix_generation_tokens_total', 'bytropix_prompt_tokens_total'):
        assert metric(server, name, 'bdh') > 0, name
    assert 'bytropix_queue_depth{model="bdh"} 0.0' in text
    assert 'bytropix_requests_total{path="/v1/completions",status="200"}' in text


def test_echo(client):
    r = client.completions.create(model='gpt', prompt='Echo me', max_tokens=3, temperature=0, echo=True)
    plain = client.completions.create(model='gpt', prompt='Echo me', max_tokens=3, temperature=0)
    assert r.choices[0].text == 'Echo me' + plain.choices[0].text
    streamed = client.completions.create(model='gpt', prompt='Echo me', max_tokens=3, temperature=0, echo=True, stream=True)
    assert ''.join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_echo_logprobs_score_the_prompt():
    "echo + logprobs + max_tokens 0 (what evaluation harnesses send): the prompt's log-probabilities, nothing generated."
    torch.manual_seed(0)
    m = build_model('gpt', vocab_size=256, block_size=64, n_layer=2, n_embd=32, n_head=4).eval()
    prompt = 'Score me: café'   # 'é' is two byte tokens: each alone is part of a character
    ids = list(prompt.encode())
    with torch.no_grad(): ref = m(torch.tensor([ids])).logits[0].log_softmax(-1)
    with BackgroundServer(create_app([ServedModel.build('m', m, byte_tokenizer())], ServerSettings())) as s:
        client = openai.OpenAI(base_url=s.url + '/v1', api_key='none', max_retries=0, timeout=60)
        c = client.completions.create(model='m', prompt=prompt, max_tokens=0, echo=True, logprobs=2).choices[0]
        assert c.text == prompt and c.finish_reason == 'length'
        l = c.logprobs
        assert l.tokens == list('Score me: caf') + ['bytes:\\xc3', 'bytes:\\xa9']
        assert l.token_logprobs[0] is None and l.top_logprobs[0] is None
        assert max(abs(l.token_logprobs[t] - float(ref[t - 1, ids[t]])) for t in range(1, len(ids))) < 1e-4
        assert all(len(t) <= 3 and tok in t for t, tok in zip(l.top_logprobs[1:], l.tokens[1:]))
        assert l.text_offset == list(range(13)) + [13, 13]   # 'é' starts where its first byte is
        streamed = list(client.completions.create(model='m', prompt=prompt, max_tokens=2, echo=True, logprobs=2,
                                                  temperature=0, stream=True))
        plain = client.completions.create(model='m', prompt=prompt, max_tokens=2, echo=True, logprobs=2, temperature=0).choices[0]
        assert ''.join(ch.choices[0].text for ch in streamed if ch.choices) == plain.text
        joined = [x for ch in streamed if ch.choices and ch.choices[0].logprobs for x in ch.choices[0].logprobs.text_offset]
        assert joined == plain.logprobs.text_offset and len(joined) == len(ids) + 2
        gen = client.completions.create(model='m', prompt=prompt, max_tokens=2, logprobs=1, temperature=0).choices[0]
        assert gen.logprobs.text_offset[0] == len(prompt) and gen.logprobs.token_logprobs == plain.logprobs.token_logprobs[-2:]
        r = httpx.post(s.url + '/v1/completions', json={'model': 'm', 'prompt': 'x', 'max_tokens': 0}, timeout=60)
        assert r.status_code == 400 and 'set `echo` to score the prompt' in r.json()['error']['message']
        chat = client.chat.completions.create(model='m', messages=[{'role': 'user', 'content': 'hi'}], max_tokens=8,
                                              temperature=0, logprobs=True, top_logprobs=2)
        for t in chat.choices[0].logprobs.content:   # 'bytes' are the token's own bytes, not U+FFFD's
            assert t.bytes == list(bytes.fromhex(t.token[6:].replace('\\x', ''))) if t.token.startswith('bytes:') else t.bytes == list(t.token.encode())


def test_request_timeout():
    sm = ServedModel.build('t', build_model('gpt', vocab_size=256, block_size=16, n_layer=1, n_embd=16, n_head=2), byte_tokenizer())
    step = sm.engine.step
    def slow_step():
        time.sleep(0.01); step()
    sm.engine.step = slow_step
    with BackgroundServer(create_app([sm], ServerSettings(request_timeout=0.3, max_tokens=1000))) as s:
        r = httpx.post(s.url + '/v1/completions', json={'model': 't', 'prompt': 'a', 'max_tokens': 1000}, timeout=60)
        assert r.status_code == 504 and r.json()['error']['code'] == 'timeout'
        with httpx.stream('POST', s.url + '/v1/completions', timeout=60,
                          json={'model': 't', 'prompt': 'a', 'max_tokens': 1000, 'stream': True}) as r:
            events = [l for l in r.iter_lines() if l]
        assert '"code": "timeout"' in events[-2] and events[-1] == 'data: [DONE]'
        t0 = time.monotonic()
        while sm.engine.num_running:   # the timed-out sequences were cancelled
            assert time.monotonic() - t0 < 20
            time.sleep(0.05)


def test_raw_sse_wire_format(server):
    with httpx.stream('POST', server.url + '/v1/completions', headers={'Authorization': f'Bearer {KEY}'}, timeout=60,
                      json={'model': 'gpt', 'prompt': 'ab', 'max_tokens': 3, 'stream': True}) as r:
        body = r.read().decode()
    events = body.split('\n\n')
    assert events[-2] == 'data: [DONE]' and events[-1] == ''
    assert all(e.startswith('data: ') for e in events[:-1])
    assert json.loads(events[0][6:])['object'] == 'text_completion'


def test_stop_string_cuts_text(client):
    full = client.completions.create(model='gpt', prompt='Once', max_tokens=24, temperature=0).choices[0].text
    stop = full[5:8]
    cut = client.completions.create(model='gpt', prompt='Once', max_tokens=24, temperature=0, stop=[stop]).choices[0]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == 'stop'
    streamed = client.completions.create(model='gpt', prompt='Once', max_tokens=24, temperature=0, stop=stop, stream=True)
    assert ''.join(c.choices[0].text for c in streamed if c.choices) == cut.text


def test_errors_in_openai_schema(server, client):
    with pytest.raises(openai.AuthenticationError): openai.OpenAI(base_url=server.url + '/v1', api_key='bad', max_retries=0).models.list()
    r = httpx.get(server.url + '/v1/models')
    assert r.status_code == 401 and r.json()['error']['code'] == 'invalid_api_key'
    with pytest.raises(openai.NotFoundError): client.completions.create(model='nope', prompt='x')
    with pytest.raises(openai.BadRequestError) as e: client.completions.create(model='gpt', prompt='x' * 65, max_tokens=2)
    assert e.value.code == 'context_length_exceeded'
    with pytest.raises(openai.BadRequestError, match='128'): client.completions.create(model='gpt', prompt='x', max_tokens=129)
    with pytest.raises(openai.BadRequestError, match='puzzle'): client.completions.create(model='trm', prompt='x')
    bad = post(server, '/v1/completions', {'model': 'gpt', 'prompt': 'x', 'temperature': 'hot'})
    assert bad.status_code == 400 and bad.json()['error']['param'] == 'temperature'
    broken = httpx.post(server.url + '/v1/chat/completions', content=b'{"model": "gpt", "messages": [',
                                 headers={'Authorization': f'Bearer {KEY}', 'Content-Type': 'application/json'})
    assert broken.status_code == 400 and 'not valid JSON' in broken.json()['error']['message']
    assert post(server, '/v1/chat/completions', {'model': 'gpt', 'messages': []}).status_code == 400
    assert post(server, '/v1/completions', {'model': 'gpt', 'prompt': []}).status_code == 400
    ids = post(server, '/v1/completions', {'model': 'gpt', 'prompt': [72, 105], 'max_tokens': 2})   # token ids work too
    assert ids.status_code == 200 and ids.json()['usage']['prompt_tokens'] == 2
    assert post(server, '/v1/completions', {'model': 'gpt', 'prompt': [72, 999]}).status_code == 400
    big = post(server, '/v1/completions', {'model': 'gpt', 'prompt': 'x' * 10_000})
    assert big.status_code == 413 and set(big.json()['error']) == {'message', 'type', 'param', 'code'}
    assert httpx.get(server.url + '/nowhere').json()['error']['message'] == 'Not Found'


def test_greedy_alone_equals_busy(client):
    prompts = ['x' * n + 'Hello' for n in range(16)]
    ask = lambda p: client.completions.create(model='gpt', prompt=p, max_tokens=10, temperature=0).choices[0].text
    alone = [ask(p) for p in prompts]
    with ThreadPoolExecutor(16) as pool: busy = list(pool.map(ask, prompts))
    assert busy == alone


def test_queue_full_disconnect_rate_limit(tmp_path):
    sm = ServedModel.build('one', build_model('gpt', vocab_size=256, block_size=16, n_layer=1, n_embd=16, n_head=2),
                           byte_tokenizer(), max_batch=1, max_queue=0)
    step = sm.engine.step
    def slow_step():  # 10 ms per token: the long request is surely still running while the test acts
        time.sleep(0.01); step()
    sm.engine.step = slow_step
    app = create_app([sm],
                     ServerSettings(api_keys=('a', 'b'), rate_limit=4, max_tokens=2000))
    with BackgroundServer(app) as s:
        with httpx.stream('POST', s.url + '/v1/completions', headers={'Authorization': 'Bearer a'}, timeout=60,
                          json={'model': 'one', 'prompt': 'a', 'max_tokens': 2000, 'stream': True}) as r:
            lines = r.iter_lines(); next(lines)  # keep the iterator: dropping it closes the response
            busy = post(s, '/v1/completions', {'model': 'one', 'prompt': 'b', 'max_tokens': 1}, key='a')
            assert busy.status_code == 429 and busy.headers['Retry-After'] == '1' and busy.json()['error']['code'] == 'queue_full'
            assert metric(s, 'bytropix_running_sequences', 'one') == 1
        t0 = time.monotonic()   # the client went away mid-stream: its sequence is cancelled and the slot freed
        while metric(s, 'bytropix_running_sequences', 'one') != 0:
            assert time.monotonic() - t0 < 30, 'the abandoned sequence still runs'
            time.sleep(0.05)
        assert metric(s, 'bytropix_generation_tokens_total', 'one') < 2000
        assert post(s, '/v1/completions', {'model': 'one', 'prompt': 'b', 'max_tokens': 1}, key='a').status_code == 200
        pre = httpx.options(s.url + '/v1/models', headers={'Origin': 'http://a.example', 'Access-Control-Request-Method': 'GET'})
        assert 'access-control-allow-origin' not in pre.headers        # CORS is off unless --cors
        codes = [httpx.get(s.url + '/v1/models', headers={'Authorization': 'Bearer b'}).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 200, 429]   # key b's bucket; key a's is its own
        limited = httpx.get(s.url + '/v1/models', headers={'Authorization': 'Bearer b'})
        assert int(limited.headers['Retry-After']) >= 1 and limited.json()['error']['code'] == 'rate_limit_exceeded'


def test_non_streaming_disconnect_cancels():
    "A client that drops a plain (non-streamed) request: the engine stops decoding it and the slot frees promptly."
    import socket
    sm = ServedModel.build('one', build_model('gpt', vocab_size=256, block_size=16, n_layer=1, n_embd=16, n_head=2),
                           byte_tokenizer(), max_batch=1, max_queue=0)
    step = sm.engine.step
    def slow_step():  # 10 ms per token: 2000 tokens would take 20 s
        time.sleep(0.01); step()
    sm.engine.step = slow_step
    with BackgroundServer(create_app([sm], ServerSettings(max_tokens=2000))) as s:
        body = json.dumps({'model': 'one', 'prompt': 'a', 'max_tokens': 2000}).encode()
        sock = socket.create_connection((s.host, s.port))
        sock.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n'
                     b'Content-Length: %d\r\n\r\n' % len(body) + body)
        t0 = time.monotonic()
        while metric(s, 'bytropix_running_sequences', 'one') != 1:
            assert time.monotonic() - t0 < 10, 'the request never started'
            time.sleep(0.02)
        time.sleep(0.1)
        sock.close()                       # the client goes away without reading an answer
        t0 = time.monotonic()
        while metric(s, 'bytropix_running_sequences', 'one') != 0:
            assert time.monotonic() - t0 < 3, 'the abandoned non-streamed sequence still runs'
            time.sleep(0.02)
        n = metric(s, 'bytropix_generation_tokens_total', 'one')
        time.sleep(0.3)                    # ~30 more steps' time: nothing more is decoded for it
        assert metric(s, 'bytropix_generation_tokens_total', 'one') == n < 2000
        assert sm.engine.tokens_generated == n and sm.engine.num_running == 0
        assert post(s, '/v1/completions', {'model': 'one', 'prompt': 'b', 'max_tokens': 1}).status_code == 200


def test_cli_serve_end_to_end(tmp_path):
    import os, socket, subprocess, sys
    from pathlib import Path
    build_model('gpt', vocab_size=256, block_size=32, n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path/'small', tokenizer=byte_tokenizer())
    with socket.socket() as sock: sock.bind(('127.0.0.1', 0)); port = sock.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, 'PYTHONPATH': str(root), 'OMP_NUM_THREADS': '1', 'BYTROPIX_API_KEYS': 'k1,k2'}
    proc = subprocess.Popen([sys.executable, '-c', 'import sys; from bytropix.cli import main; sys.exit(main())', 'serve',
                             str(tmp_path/'small'), '--port', str(port), '--dtype', 'bf16', '--log-level', 'warning'],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        c = openai.OpenAI(base_url=f'http://127.0.0.1:{port}/v1', api_key='k2', max_retries=0)
        t0 = time.monotonic()
        while True:
            try: models = c.models.list(); break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() - t0 < 120, proc.stdout.read() if proc.poll() is not None else 'no start'
                time.sleep(0.2)
        assert [m.id for m in models.data] == ['small']
        r = c.chat.completions.create(model='small', messages=[{'role': 'user', 'content': 'hi'}], max_tokens=4)
        assert r.choices[0].finish_reason in ('length', 'stop') and r.usage.completion_tokens >= 1
    finally:
        proc.terminate(); out = proc.communicate(timeout=30)[0]
    assert "serving `small` (gpt" in out and 'http://127.0.0.1:' in out


def test_cli_serve_errors(capsys, tmp_path):
    assert main(['serve', str(tmp_path/'missing')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('bytropix serve: error:') and 'does not exist' in err and 'Traceback' not in err
    assert main(['serve', 'a=x', 'a=y']) == 2 and 'Two models' in capsys.readouterr().err
    import socket
    build_model('gpt', vocab_size=256, block_size=32, n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path/'m', tokenizer=byte_tokenizer())
    with socket.socket() as taken:   # a port another program listens on: one line, before the server announces itself
        taken.bind(('127.0.0.1', 0)); taken.listen(); port = taken.getsockname()[1]
        assert main(['serve', str(tmp_path/'m'), '--port', str(port)]) == 2
    cap = capsys.readouterr()
    assert f'Port {port} on 127.0.0.1 is in use' in cap.err and cap.err.count('\n') == 1 and 'serving' not in cap.out
    assert main(['serve', str(tmp_path/'m'), '--host', 'nosuchhost.invalid']) == 2
    assert '--host nosuchhost.invalid: not a known address' in capsys.readouterr().err


def test_chat_template_stored_with_tokenizer_and_shared_with_cli(tmp_path):
    import io
    from bytropix.cli import build_parser, cmd_generate
    from bytropix.data.tokenizers import Tokenizer
    from bytropix.serving.server import ChatTemplate
    tok = byte_tokenizer(); tok.chat_template = {'user': 'Q: ', 'assistant': 'A: '}
    build_model('gpt', vocab_size=256, block_size=32, n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path/'m', tokenizer=tok)
    back = Tokenizer.load(tmp_path/'m')
    t = ChatTemplate.for_tokenizer(back)
    assert back.chat_template == tok.chat_template and t.render([{'role': 'user', 'content': 'hi'}]) == 'Q: hi\nA: '
    assert t.stop == ['\nQ:']
    args = build_parser().parse_args(['generate', str(tmp_path/'m'), '--chat', '--max-new-tokens', '3', '--temperature', '0'])
    buf = io.StringIO()
    assert cmd_generate(args, buf, inp=io.StringIO('hello\n/quit\n')) == 0
    assert 'Q: ' in buf.getvalue() and 'A: ' in buf.getvalue() and 'User: ' not in buf.getvalue()
    (tmp_path/'m'/'tokenizer.chat_template.json').write_text('{"user": 3}')
    with pytest.raises(Exception, match='JSON object of strings'): Tokenizer.load(tmp_path/'m')

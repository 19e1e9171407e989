"""The Dockerfile, checked by reading it (CI has no Docker daemon, so the image is not built here): base image, CPU
torch, the package installed from this checkout with the `serve` extra, a non-root user, EXPOSE, a HEALTHCHECK on
/health, and `bytropix serve /model` bound to 0.0.0.0 with arguments the real CLI parser accepts."""
import json
import re
import tomllib
from pathlib import Path

from bytropix.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    "(INSTRUCTION, arguments) pairs of the Dockerfile: comments dropped, continuation lines joined."
    text = re.sub(r'\\\n', ' ', (ROOT/'Dockerfile').read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith('#'):
            op, _, rest = line.partition(' ')
            out.append((op.upper(), rest.strip()))
    return out


def exec_form(arg: str) -> list[str]:
    assert arg.startswith('['), f"use the exec (JSON) form, so signals reach the server: {arg}"
    return json.loads(arg)


def test_dockerfile_installs_and_serves_an_export():
    ins = instructions()
    ops = [op for op, _ in ins]
    assert ops[0] == 'FROM' and re.match(r'python:3\.1[0-9]+-slim', ins[0][1]), ins[0]
    pyver = tomllib.loads((ROOT/'pyproject.toml').read_text())
    extras = pyver['project']['optional-dependencies']
    runs = [a for op, a in ins if op == 'RUN']
    assert any('download.pytorch.org/whl/cpu' in r and 'torch' in r for r in runs), "torch from the CPU wheel index"
    install = next(i for i, (op, a) in enumerate(ins) if op == 'RUN' and re.search(r'pip install "?\.\[serve\]"?', a))
    assert 'serve' in extras and {'fastapi', 'uvicorn', 'prometheus-client'} <= {re.split(r'[<>=]', d)[0] for d in extras['serve']}
    copies = [a.split() for op, a in ins[:install] if op == 'COPY']
    assert copies and all((ROOT/src).exists() for c in copies for src in c[:-1]), copies   # every COPY source exists
    assert {'pyproject.toml', 'bytropix'} <= {src for c in copies for src in c[:-1]}
    user = [(i, a) for i, (op, a) in enumerate(ins) if op == 'USER']
    assert user and user[-1][1] not in ('root', '0') and user[-1][0] > install, "serve as a non-root user"
    assert any(op == 'RUN' and 'useradd' in a and user[-1][1] in a for op, a in ins)
    port = next(a for op, a in ins if op == 'EXPOSE').split('/')[0]
    health = next(a for op, a in ins if op == 'HEALTHCHECK')
    cmd = exec_form(health[health.index('CMD') + 3:].strip())
    assert f'127.0.0.1:{port}/health' in ' '.join(cmd) and re.search(r'--timeout=\d+s', health)
    entry = exec_form(next(a for op, a in ins if op == 'ENTRYPOINT'))
    assert entry[:2] == ['bytropix', 'serve'] and entry[2] == '/model'
    args = build_parser().parse_args(entry[1:])                          # the real CLI accepts these arguments
    assert (args.models, args.host, str(args.port)) == (['/model'], '0.0.0.0', port)


def test_serving_chapter_shows_build_and_run():
    text = (ROOT/'nbs'/'53_serving.ipynb').read_text()
    assert 'docker build -t bytropix-serve .' in text and 'docker run' in text and '/model' in text
    assert 'not built' in text   # the chapter says the image was not built in CI

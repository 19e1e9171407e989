"`tools/run_nbs.py`: notebooks executed in place with small, deterministic outputs, skipping what nbdev-test skips."
import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(ROOT/'tools'/'run_nbs.py')]


def _code(src, outputs=(), n=None, cid=None):
    return {'cell_type': 'code', 'execution_count': n, 'id': cid, 'metadata': {}, 'outputs': list(outputs),
            'source': src.splitlines(keepends=True)}


def _write(path, cells):
    for i, c in enumerate(cells): c['id'] = c['id'] or f'c{i:07d}'
    nb = {'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    path.write_text(json.dumps(nb, indent=1))
    return path


KEPT = {'name': 'stdout', 'output_type': 'stream', 'text': ['kept from an earlier run\n']}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A notebook with every kind of output, run once; the bytes of its first run and of a second one."
    path = _write(tmp_path_factory.mktemp('nbs')/'tiny.ipynb', [
        _code("import os\nprint(os.environ.get('IN_TEST'), os.environ.get('PYTHONHASHSEED'), os.environ.get('TRITON_INTERPRET'))"),
        _code("for i in range(3): print(f'\\rstep {i}', end='')\nprint()"),
        _code("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]); plt.show()"),
        _code("import plotly.graph_objects as go\ngo.Figure(go.Scatter(x=[0, 1], y=[1, 0]))"),
        _code("#| slow\nraise RuntimeError('slow cells must not run')", outputs=[KEPT]),
        _code("#| eval: false\nraise RuntimeError('eval: false cells must not run')"),
        {'cell_type': 'markdown', 'id': None, 'metadata': {}, 'source': ['Some *prose*.']},
        _code("import random\nhash('bytropix'), random.random()", n=7),
    ])
    first = subprocess.run(RUN + [str(path)], cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    once = path.read_bytes()
    second = subprocess.run(RUN + [str(path)], cwd=ROOT, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    return path, once, json.loads(once)['cells']


def test_environment_and_streams(tiny):
    _, _, cells = tiny
    assert cells[0]['outputs'][0]['text'] == ['None 0 1\n']  # IN_TEST unset, hash seed fixed, Triton interpreted
    assert cells[1]['outputs'] == [{'name': 'stdout', 'output_type': 'stream', 'text': ['step 2\n']}]


def test_figures_are_png_and_plotly_is_one_small_html_output(tiny):
    _, _, cells = tiny
    (png,) = cells[2]['outputs']
    png = base64.b64decode(png['data']['image/png'])
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and b'Matplotlib' not in png  # no version stamp to churn the diff
    (fig,) = cells[3]['outputs']
    assert set(fig['data']) == {'text/html'}
    html = ''.join(fig['data']['text/html'])
    assert re.search(r'id="tiny-plotly-\d+"', html) and 'Plotly.newPlot' in html
    assert 'src="https://cdn.plot.ly/' in html and len(html) < 30_000  # plotly.js itself is not embedded


def test_skips_what_nbdev_test_skips_and_keeps_old_outputs(tiny):
    _, _, cells = tiny
    assert cells[4]['outputs'] == [KEPT]
    assert cells[5]['outputs'] == []


def test_clean_and_deterministic(tiny):
    path, once, cells = tiny
    assert all(c.get('execution_count') is None and c['metadata'] == {} for c in cells)
    assert cells[7]['outputs'][0]['output_type'] == 'execute_result'
    assert path.read_bytes() == once, 'a second run changed the notebook'


def test_over_budget_fails_naming_the_cell_and_leaves_the_notebook(tiny, tmp_path):
    path = tmp_path/'big.ipynb'
    path.write_bytes(tiny[1])
    r = subprocess.run(RUN + ['--budget-mb', '0.001', str(path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1
    assert 'over the 0.00 MB budget' in r.stderr and 'cell 2 (id c0000002' in r.stderr, r.stderr
    assert path.read_bytes() == tiny[1]


def test_failing_cell_fails_and_leaves_the_notebook(tmp_path):
    path = _write(tmp_path/'bad.ipynb', [_code("x = 1"), _code("1/0")])
    before = path.read_bytes()
    r = subprocess.run(RUN + [str(path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and 'ZeroDivisionError' in r.stderr, r.stderr
    assert path.read_bytes() == before


def test_rejects_what_is_not_a_notebook(tmp_path):
    r = subprocess.run(RUN + [str(tmp_path/'missing.ipynb')], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and 'not a notebook' in r.stderr


def test_flags_run_the_flagged_cells_too(tmp_path):
    path = _write(tmp_path/'flags.ipynb', [_code("#| slow\nprint('ran')", outputs=[KEPT]), _code("#| notest\nprint('not this')")])
    r = subprocess.run(RUN + ['--flags', 'slow', str(path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cells = json.loads(path.read_text())['cells']
    assert cells[0]['outputs'][0]['text'] == ['ran\n'] and cells[1]['outputs'] == []

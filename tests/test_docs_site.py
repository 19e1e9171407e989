"""The offline docs site (`tools/docs.sh`) in a real browser: headless Chromium from Debian, driven by selenium.

One fresh build in a temporary folder, served on 127.0.0.1; every page is visited once and what the browser saw is
checked against the processed notebooks (`_proc/`) the site was built from: every chapter loads without a console
error, the math is typeset (no raw `$...$` left, no KaTeX error), every image loads, every figure and plotly plot of
a notebook's outputs is on its page (and drawn), mermaid diagrams are drawn, every same-site link resolves (page and
anchor), nothing is loaded from another host, and the sidebar reaches every chapter in sidebar.yml's order.
"""
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import unquote, urldefrag

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'/'docsite'))
import browser  # noqa: E402

# Formulas that KaTeX (the math engine of both the Quarto and the offline site) rejects, in chapters owned elsewhere:
# page -> substrings of the offending TeX. They are reported as warnings; anything else fails. Empty this when fixed:
# 23_hrm writes `M_\max` (KaTeX needs `M_{\max}`); 02_kernels has a backticked name inside `$$...\text{...}$$`, which
# nbdev turns into a markdown link inside the formula.
KNOWN_KATEX_ERRORS: dict[str, tuple[str, ...]] = {}

RAW_MATH = re.compile(r'\$\$|\$(?=[^\s$\d])[^$\n]*?(?<=\S)\$(?!\d)')
CODE = re.compile(r'```.*?```|`[^`\n]*`', re.S)

PAGE_JS = '''
const main = document.querySelector('main');
const clone = main.cloneNode(true);
clone.querySelectorAll('.katex, .katex-display, pre, code, script, style, svg, .plotly-graph-div').forEach(e => e.remove());
const same = u => { try { return new URL(u, location.href).origin === location.origin; } catch (e) { return false; } };
return {
  title: (document.querySelector('h1.title') || {}).textContent,
  text: clone.textContent,
  katex: main.querySelectorAll('.katex').length,
  katexErrors: [...main.querySelectorAll('.katex-error')].map(e => e.textContent),
  images: [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0,
                                          output: i.classList.contains('cell-output-image')})),
  plotly: [...main.querySelectorAll('.plotly-graph-div')].map(d => !!d.querySelector('.main-svg')),
  mermaid: [...main.querySelectorAll('pre.mermaid')].map(e => !!e.querySelector('svg')),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href).filter(same),
  foreign: [...document.querySelectorAll('script[src], link[href][rel=stylesheet], img[src], iframe[src]')]
             .map(e => e.src || e.href).filter(u => !same(u) && !u.startsWith('data:')),
  sidebar: [...document.querySelectorAll('nav.sidebar a')].map(a => a.getAttribute('href')),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
};
'''


def _skip_reason():
    if why := browser.missing(): return why
    if not (shutil.which('node') and shutil.which('npm')): return 'node and npm are needed to build the site (KaTeX)'
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _sidebar_notebooks():
    def walk(items):
        for it in items:
            if isinstance(it, str): yield it
            else: yield from walk(it.get('contents', []))
    return list(walk(yaml.safe_load((ROOT/'nbs'/'sidebar.yml').read_text())['website']['sidebar']['contents']))


def _expected(nb_path: Path) -> dict:
    "What the page of a processed notebook must show, counted from the notebook itself."
    nb = json.loads(nb_path.read_text())
    exp = {'images': 0, 'plotly': 0, 'mermaid': 0, 'math': False}
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown':
            exp['mermaid'] += len(re.findall(r'^```\s*\{?mermaid\}?\s*$', src, re.M))
            exp['math'] |= bool(RAW_MATH.search(CODE.sub('', src)))
        if c['cell_type'] != 'code': continue
        opts = dict(re.findall(r'^#\|\s*([\w-]+):\s*(\S+)', src, re.M))
        if opts.get('include') == 'false' or opts.get('output') == 'false': continue
        for o in c.get('outputs', []):
            data = o.get('data', {})
            html = ''.join(data.get('text/html', ''))
            if 'plotly-graph-div' in html: exp['plotly'] += html.count('class="plotly-graph-div"')
            elif not html and any(k.startswith('image/') for k in data): exp['images'] += 1
            if 'text/markdown' in data and not html: exp['math'] |= bool(RAW_MATH.search(CODE.sub('', ''.join(data['text/markdown']))))
    return exp


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs')/'site'
    t0 = time.time()
    run = subprocess.run(['bash', str(ROOT/'tools'/'docs.sh'), '--out', str(out)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    print(f'site built in {time.time()-t0:.1f} s: {run.stdout.strip().splitlines()[-1]}')
    return out


@pytest.fixture(scope='module')
def visit(site):
    "Visit every page of the site once: what the browser saw, per page, and the HTTP status of every same-site URL."
    pages = json.loads((site/'pages.json').read_text())
    seen, logs = {}, {}
    t0 = time.time()
    with browser.serve(site) as base, browser.chromium() as driver:
        for out in pages:
            driver.get(base + out)
            browser.settle(driver)
            seen[out] = driver.execute_script(PAGE_JS)
            logs[out] = [e for e in driver.get_log('browser') if e['level'] == 'SEVERE']
        urls = {urldefrag(u)[0] for p in seen.values() for u in p['links'] + [i['src'] for i in p['images']]}
        status = {}
        for u in sorted(urls):
            try:
                with urllib.request.urlopen(u, timeout=10) as r: status[u] = r.status
            except Exception as e: status[u] = getattr(e, 'code', repr(e))
    print(f'{len(pages)} pages visited, {len(urls)} same-site URLs fetched in {time.time()-t0:.1f} s')
    return {'base': base, 'pages': pages, 'seen': seen, 'logs': logs, 'status': status}


def test_every_chapter_is_built_and_loads_without_console_errors(visit):
    chapters = {p.name for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_')}
    built = {v['notebook'] for v in visit['pages'].values()}
    assert chapters <= built, f'chapters without a page: {sorted(chapters - built)}'
    for out, meta in visit['pages'].items():
        assert visit['seen'][out]['title'] == meta['title'], out
    errors = {out: [e['message'] for e in log] for out, log in visit['logs'].items() if log}
    assert not errors, f'console errors: {errors}'


def test_math_is_typeset(site, visit):
    unexpected, known = {}, []
    for out, meta in visit['pages'].items():
        seen = visit['seen'][out]
        raw = RAW_MATH.findall(seen['text'])
        assert not raw, f'{out}: math left as raw TeX: {raw[:5]}'
        if _expected(ROOT/'_proc'/meta['notebook'])['math']:
            assert seen['katex'] > 0, f'{out}: its notebook has math but the page shows no KaTeX'
        for err in seen['katexErrors']:
            if any(s in err for s in KNOWN_KATEX_ERRORS.get(out, ())): known.append(f'{out}: {err}')
            else: unexpected.setdefault(out, []).append(err)
    assert not unexpected, f'KaTeX cannot typeset: {unexpected}'
    if known: warnings.warn(f'known KaTeX errors in chapters (see KNOWN_KATEX_ERRORS): {known}')


def test_every_image_loads_and_every_figure_is_shown(visit):
    for out, meta in visit['pages'].items():
        seen, exp = visit['seen'][out], _expected(ROOT/'_proc'/meta['notebook'])
        broken = [i['src'] for i in seen['images'] if not i['ok']]
        assert not broken, f'{out}: images that did not load: {broken}'
        assert sum(i['output'] for i in seen['images']) == exp['images'], f'{out}: figures shown vs in the notebook'
        assert len(seen['plotly']) == exp['plotly'], f'{out}: plotly plots shown vs in the notebook'
        assert all(seen['plotly']), f'{out}: a plotly plot was not drawn'
        assert len(seen['mermaid']) == exp['mermaid'] and all(seen['mermaid']), f'{out}: mermaid diagrams not drawn'
    assert any(visit['seen'][o]['mermaid'] for o in visit['seen']), 'the index should carry the architecture diagrams'
    for page in ('geometry.html', 'bdh.html', 'wubu.html', 'viz.html'):   # chapters whose pictures the reader must see
        assert sum(i['output'] for i in visit['seen'][page]['images']) >= 1, f'{page} shows no figure'


def test_every_internal_link_resolves(visit):
    bad = {u: s for u, s in visit['status'].items() if s != 200}
    assert not bad, f'same-site URLs that do not answer 200: {bad}'
    base, ids = visit['base'], {out: set(s['ids']) for out, s in visit['seen'].items()}
    dangling = set()
    for out, seen in visit['seen'].items():
        for u in seen['links']:
            page, frag = urldefrag(u)
            frag = unquote(frag)
            target = page[len(base):] or 'index.html'
            if frag and target in ids and frag not in ids[target]: dangling.add(f'{out} -> {target}#{frag}')
    assert not dangling, f'links to anchors that do not exist: {sorted(dangling)}'


def test_nothing_is_loaded_from_another_host(visit):
    foreign = {out: s['foreign'] for out, s in visit['seen'].items() if s['foreign']}
    assert not foreign, f'pages load from other hosts (the site must work offline): {foreign}'


def test_sidebar_reaches_every_chapter_in_order(visit):
    order = [n for n in _sidebar_notebooks()]
    by_nb = {v['notebook']: out for out, v in visit['pages'].items()}
    expected = [by_nb[n] for n in order]
    for out, seen in visit['seen'].items():
        assert seen['sidebar'] == expected, f'{out}: sidebar differs from nbs/sidebar.yml'


def _nb(cells, title, out):
    fm = {'cell_type': 'raw', 'metadata': {}, 'source': [f'---\ntitle: {title}\noutput-file: {out}\n---\n']}
    return {'cells': [fm] + cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}


def _md(src): return {'cell_type': 'markdown', 'metadata': {}, 'source': [src]}
def _code(src, outputs): return {'cell_type': 'code', 'metadata': {}, 'outputs': outputs, 'source': [src], 'execution_count': None}


def test_every_output_kind_renders_in_the_browser(tmp_path):
    "A synthetic two-page site with every kind of output the chapters can carry, checked in the browser."
    import base64, io
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from build import SiteBuilder

    fig, ax = plt.subplots(figsize=(3, 2)); ax.plot([0, 1], [1, 0])
    buf = io.BytesIO(); fig.savefig(buf, format='png'); plt.close(fig)
    plot = go.Figure(go.Scatter(x=[0, 1], y=[1, 0])).to_html(include_plotlyjs='cdn', full_html=False, div_id='a-plotly-1')
    proc = tmp_path/'proc'; proc.mkdir()
    (proc/'nbdev.yml').write_text('website:\n  title: T\n  site-url: https://example.org/proj\n')
    (proc/'sidebar.yml').write_text('website:\n  sidebar:\n    contents:\n      - index.ipynb\n      - section: S\n        contents:\n          - 01_a.ipynb\n')
    (proc/'index.ipynb').write_text(json.dumps(_nb([
        _md('Go to [section two](01_a.ipynb#sec-two), to [`thing.method`](https://example.org/proj/a.html#thing.method) '
            'and to [`other`](https://example.org/proj/a.html#other); inline $x^2$ and\n\n$$\\sum_i x_i$$\n\n'
            '```{mermaid}\nflowchart LR\n  a --> b\n```\n'),
    ], 'Home', 'index.html')))
    (proc/'01_a.ipynb').write_text(json.dumps(_nb([
        _md('## Sec two\n\nText with $\\alpha$ and `$HOME` in code.'),
        _code('#| echo: false\n#| output: asis\nshow_doc(thing)', [{'output_type': 'execute_result', 'execution_count': None, 'metadata': {},
              'data': {'text/markdown': ['---\n\n### thing\n\n*Doc with $y$.*'], 'text/plain': ['<thing>']}}]),
        _code('plt.plot()', [{'output_type': 'display_data', 'metadata': {},
              'data': {'image/png': base64.b64encode(buf.getvalue()).decode(), 'text/plain': ['<Figure>']}}]),
        _code('fig', [{'output_type': 'display_data', 'metadata': {}, 'data': {'text/html': [plot]}}]),
        _code('print(1)', [{'output_type': 'stream', 'name': 'stdout', 'text': ['\x1b[1mbold\x1b[0m 1\n']}]),
        _code('df', [{'output_type': 'execute_result', 'execution_count': None, 'metadata': {},
              'data': {'text/html': ['<table><tr><td>1</td></tr></table>'], 'text/plain': ['1']}}]),
        _code('#| include: false\nhidden()', [{'output_type': 'stream', 'name': 'stdout', 'text': ['hidden output']}]),
    ], 'A', 'a.html')))
    out = tmp_path/'site'
    SiteBuilder(proc, out).build()
    page_a = (out/'a.html').read_text()
    assert 'cdn.plot.ly' not in page_a
    assert 'hidden output' not in page_a and 'hidden()' not in page_a
    with browser.serve(out) as base, browser.chromium() as driver:
        seen = {}
        for page in ('index.html', 'a.html'):
            driver.get(base + page)
            browser.settle(driver)
            seen[page] = driver.execute_script(PAGE_JS)
            assert not [e for e in driver.get_log('browser') if e['level'] == 'SEVERE'], page
            assert not seen[page]['foreign'] and not seen[page]['katexErrors'] and not RAW_MATH.findall(seen[page]['text'])
    home, a = seen['index.html'], seen['a.html']
    assert home['katex'] == 2 and home['mermaid'] == [True]
    assert {base + 'a.html#sec-two', base + 'a.html#thing', base + 'a.html'} <= set(home['links'])
    assert {'sec-two', 'thing'} <= set(a['ids'])
    assert a['katex'] == 2 and a['plotly'] == [True]
    assert [i['ok'] for i in a['images'] if i['output']] == [True]
    assert 'bold 1' in driver_text(out/'a.html') and a['sidebar'] == home['sidebar'] == ['index.html', 'a.html']


def driver_text(path):
    return re.sub(r'<[^>]+>', '', path.read_text())

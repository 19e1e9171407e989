"The offline docs build (`tools/docsite/build.py`) without a browser: directives, outputs, links, anchors and math."
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'/'docsite'))
from build import SiteBuilder, cell_directives, ensure_assets, output_kind, slugify  # noqa: E402


@pytest.fixture
def katex():
    if not (shutil.which('node') and shutil.which('npm')): pytest.skip('node and npm are needed to typeset math (KaTeX)')
    ensure_assets()


def test_slugs_match_nbdev_doc_links():
    assert slugify('PoincareBall.expmap') == 'poincareball.expmap'  # nbdev links methods as class.method
    assert slugify('The Möbius linear layer (Ganea et al. 2018)') == 'the-möbius-linear-layer-ganea-et-al.-2018'
    assert slugify('_rowop') == '_rowop' and slugify('2. Numerics') == 'numerics' and slugify('!!') == 'section'


def test_directives():
    assert cell_directives('#| echo: false\n#| output: asis\nshow_doc(f)') == ({'echo': False, 'output': 'asis'}, 'show_doc(f)')
    assert cell_directives('#| slow\nx = 1\n#| not a directive') == ({'slow': True}, 'x = 1\n#| not a directive')


def test_output_kinds_follow_the_richest_mime_type():
    plot = '<div id="a" class="plotly-graph-div"></div><script>Plotly.newPlot("a")</script>'
    assert output_kind({'output_type': 'display_data', 'data': {'text/html': [plot]}}) == 'plotly'
    assert output_kind({'output_type': 'display_data', 'data': {'image/png': 'x', 'text/plain': 'y'}}) == 'image'
    assert output_kind({'output_type': 'execute_result', 'data': {'text/html': '<table/>', 'text/plain': 'y'}}) == 'html'
    assert output_kind({'output_type': 'execute_result', 'data': {'text/markdown': 'm', 'text/plain': 'y'}}) == 'markdown'
    assert output_kind({'output_type': 'stream', 'name': 'stdout', 'text': 'x'}) == 'stream'
    assert output_kind({'output_type': 'display_data', 'data': {'application/x-unknown': 'x'}}) is None


def _nb(cells, title, out):
    fm = {'cell_type': 'raw', 'metadata': {}, 'source': [f'---\ntitle: {title}\noutput-file: {out}\n---\n']}
    return {'cells': [fm] + cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}


def _md(src): return {'cell_type': 'markdown', 'metadata': {}, 'source': [src]}
def _code(src, outputs=()): return {'cell_type': 'code', 'metadata': {}, 'outputs': list(outputs), 'source': [src], 'execution_count': None}
def _out(text): return {'output_type': 'stream', 'name': 'stdout', 'text': [text]}


def test_site_from_synthetic_notebooks(katex, tmp_path, capsys):
    proc = tmp_path/'proc'; proc.mkdir()
    (proc/'nbdev.yml').write_text('website:\n  title: T\n  site-url: https://example.org/p\n')
    (proc/'sidebar.yml').write_text('website:\n  sidebar:\n    contents:\n      - index.ipynb\n      - section: S\n        contents:\n          - 02_b.ipynb\n')
    (proc/'index.ipynb').write_text(json.dumps(_nb([
        _md('[b](02_b.ipynb), [sec](02_b.ipynb#the-section), [`Thing.go`](https://example.org/p/b.html#thing.go), '
            '[`_private`](https://example.org/p/b.html#_private), [hand](https://example.org/p/b.html#no-such-section), '
            'cost \\$5, $\\frac{a}{b}$ and $M_\\max$.'),
        _code('#| echo: false\nsecret_source()', [_out('shown output')]),
        _code('#| output: false\nvisible_source()', [_out('hidden output')]),
        _code('#| include: false\nnothing()', [_out('nothing at all')]),
    ], 'Home', 'index.html')))
    (proc/'02_b.ipynb').write_text(json.dumps(_nb([_md('## The section\n\n### Thing')], 'B', 'b.html')))
    (proc/'03_orphan.ipynb').write_text(json.dumps(_nb([_md('Not in the sidebar.')], 'Orphan', 'orphan.html')))
    pages = SiteBuilder(proc, tmp_path/'site').build()
    assert pages == {'index.html': {'notebook': 'index.ipynb', 'title': 'Home', 'sidebar': True},
                     'b.html': {'notebook': '02_b.ipynb', 'title': 'B', 'sidebar': True},
                     'orphan.html': {'notebook': '03_orphan.ipynb', 'title': 'Orphan', 'sidebar': False}}
    home = (tmp_path/'site'/'index.html').read_text()
    assert 'href="b.html"' in home and 'href="b.html#the-section"' in home
    assert 'href="b.html#thing"><code>Thing.go' in home       # an undocumented method goes to its class
    assert 'href="b.html"><code>_private' in home             # an undocumented name goes to its page
    assert 'href="b.html#no-such-section"' in home            # a hand-written anchor is left for the test to catch
    assert 'secret_source' not in home and 'shown output' in home
    assert 'visible_source' in home and 'hidden output' not in home and 'nothing' not in home
    assert 'class="katex"' in home and '\ue000' not in home and 'cost $5' in home
    assert 'katex-error' in home and "KaTeX cannot render 'M_\\\\max'" in capsys.readouterr().err
    assert 'orphan.html' not in home  # built, but not in the sidebar
    assert (tmp_path/'site'/'assets'/'katex'/'katex.min.css').exists() and not (tmp_path/'site'/'assets'/'mermaid.min.js').exists()

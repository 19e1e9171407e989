"""Render nbdev's processed notebooks (`_proc/`) into a static site that works offline (`tools/docs.sh` runs this).

Quarto (`nbdev-docs`) is the primary docs path; this build needs only Python and Node and no network at view time:
markdown through markdown-it-py, code highlighted by Pygments, math typeset by KaTeX at build time, mermaid diagrams
drawn in the page by a local mermaid.js, plotly figures with the plotly.js shipped in the plotly package. Sidebar,
page titles, output file names and links follow Quarto's conventions (`sidebar.yml`, front matter `output-file`).
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from jinja2 import Environment, FileSystemLoader
from markdown_it import MarkdownIt
from mdit_py_plugins.attrs import attrs_plugin
from mdit_py_plugins.dollarmath import dollarmath_plugin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer, TextLexer, get_lexer_by_name
from pygments.util import ClassNotFound

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NODE_MODULES = HERE/'node_modules'
ANSI = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')
MATH = re.compile('\ue000(\\d+)\ue001')
PLOTLY_CDN = re.compile(r'<script[^>]*\bsrc="https://cdn\.plot\.ly/[^"]*"[^>]*>\s*</script>')
IMAGE_MIMES = ('image/svg+xml', 'image/png', 'image/jpeg', 'image/gif')
# Richest first, as Jupyter front ends and Quarto choose.
MIME_ORDER = ('text/html',) + IMAGE_MIMES + ('text/markdown', 'text/latex', 'text/plain')
MERMAID_LANGS = ('mermaid', '{mermaid}')


def slugify(text: str) -> str:
    "Pandoc's heading identifiers (what Quarto and nbdev's doc links use), keeping a leading underscore."
    s = re.sub(r'[^\w\s.-]', '', text.strip().lower())
    s = re.sub(r'\s+', '-', s)
    return re.sub(r'^[^a-z_]+', '', s) or 'section'


def output_kind(output: dict) -> str | None:
    "How an output is shown: 'image', 'plotly', 'html', 'markdown', 'latex', 'text', 'stream', 'error' or None."
    t = output.get('output_type')
    if t in ('stream', 'error'): return t
    data = output.get('data', {})
    mime = next((m for m in MIME_ORDER if m in data), None)
    if mime is None: return None
    if mime == 'text/html':
        return 'plotly' if 'plotly-graph-div' in ''.join(data[mime]) else 'html'
    if mime in IMAGE_MIMES: return 'image'
    return {'text/markdown': 'markdown', 'text/latex': 'latex', 'text/plain': 'text'}[mime]


def cell_directives(source: str) -> tuple[dict, str]:
    "Quarto/nbdev `#| key: value` lines at the top of a code cell, and the source without them."
    lines, opts = source.split('\n'), {}
    i = 0
    while i < len(lines) and lines[i].startswith('#|'):
        body = lines[i][2:].strip()
        key, _, val = body.partition(':')
        opts[key.strip()] = yaml.safe_load(val) if val.strip() else True
        i += 1
    return opts, '\n'.join(lines[i:]).strip('\n')


def frontmatter(nb: dict) -> dict:
    "The YAML front matter nbdev puts in the first raw cell of a processed notebook."
    cells = nb.get('cells', [])
    if cells and cells[0]['cell_type'] == 'raw':
        m = re.match(r'\s*---\n(.*?)\n---', ''.join(cells[0]['source']), re.S)
        if m: return yaml.safe_load(m.group(1)) or {}
    return {}


def _text(x) -> str:
    return ''.join(x) if isinstance(x, list) else (x or '')


@dataclass
class Page:
    nb: str                   # notebook file name, e.g. 01_geometry.ipynb
    out: str                  # output file, e.g. geometry.html
    title: str
    description: str = ''
    section: str | None = None
    in_sidebar: bool = True
    body: str = ''
    toc: list = field(default_factory=list)
    needs: set = field(default_factory=set)   # 'plotly', 'mermaid'


class SiteBuilder:
    "Renders the processed notebooks in `proc` (with its sidebar.yml and nbdev.yml) into a site in `out`."
    def __init__(self, proc: Path, out: Path):
        self.proc, self.out = proc, out
        meta = yaml.safe_load((proc/'nbdev.yml').read_text()) if (proc/'nbdev.yml').exists() else {}
        web = meta.get('website', {})
        self.site_title = web.get('title', 'Docs')
        self.site_url = web.get('site-url', '').rstrip('/')
        self.repo_url = web.get('repo-url', '')
        self.math: list[tuple[str, bool]] = []
        self._math_ids: dict[tuple[str, bool], int] = {}
        self.pages = self._collect_pages()
        self.by_nb = {p.nb: p for p in self.pages}
        self.md = self._markdown()
        self.fig_count = 0
        self._page: Page | None = None  # the page being rendered (markdown rules record what it needs)

    # -- pages and sidebar ------------------------------------------------------------------------------------------
    def _collect_pages(self) -> list[Page]:
        sidebar = yaml.safe_load((self.proc/'sidebar.yml').read_text())['website']['sidebar']['contents']
        pages, seen = [], set()

        def walk(items, section):
            for it in items:
                if isinstance(it, str): add(it, section, True)
                elif isinstance(it, dict) and 'contents' in it: walk(it['contents'], it.get('section', section))
                elif isinstance(it, dict) and 'href' in it: add(it['href'], section, True)

        def add(name, section, in_sidebar):
            path = self.proc/name
            if name in seen: return
            if not path.exists(): raise SystemExit(f'docs: error: sidebar.yml lists {name}, which is not in {self.proc}')
            seen.add(name)
            fm = frontmatter(json.loads(path.read_text()))
            stem = Path(name).stem
            pages.append(Page(nb=name, out=fm.get('output-file', f'{stem}.html'), title=str(fm.get('title', stem)),
                              description=str(fm.get('description', '') or ''), section=section, in_sidebar=in_sidebar))

        walk(sidebar, None)
        for p in sorted(self.proc.glob('*.ipynb')): add(p.name, None, False)  # built, reachable by links only
        return pages

    # -- markdown ---------------------------------------------------------------------------------------------------
    def _markdown(self) -> MarkdownIt:
        md = MarkdownIt('commonmark', {'html': True, 'highlight': self._highlight}).enable(['table', 'strikethrough'])
        md.use(attrs_plugin).use(dollarmath_plugin, allow_space=False, allow_digits=False, double_inline=True)
        inline = lambda disp: lambda self_, tokens, idx, options, env: self._math_ref(tokens[idx].content, disp)
        block = lambda self_, tokens, idx, options, env: f'<div class="math-display">{self._math_ref(tokens[idx].content, True)}</div>\n'
        md.add_render_rule('math_inline', inline(False))
        md.add_render_rule('math_inline_double', inline(True))
        md.add_render_rule('math_block', block)
        md.add_render_rule('math_block_label', block)
        md.core.ruler.push('bytropix_links_and_ids', self._links_and_ids)
        return md

    def _math_ref(self, tex: str, display: bool) -> str:
        key = (tex.strip(), display)
        if key not in self._math_ids:
            self._math_ids[key] = len(self.math)
            self.math.append(key)
        return f'\ue000{self._math_ids[key]}\ue001'

    def _highlight(self, code: str, lang: str, attrs: str) -> str:
        lang = (lang or '').strip()
        if lang in MERMAID_LANGS:
            self._page.needs.add('mermaid')
            src = '\n'.join(l for l in code.split('\n') if not l.startswith('%%|'))  # Quarto cell options
            return f'<pre class="mermaid">{html.escape(src.strip())}</pre>'
        try: lexer = get_lexer_by_name(lang.strip('{}')) if lang else TextLexer()
        except ClassNotFound: lexer = TextLexer()
        return f'<pre class="sourceCode"><code>{highlight(code, lexer, HtmlFormatter(nowrap=True))}</code></pre>'

    def _href(self, href: str) -> str:
        "Links to notebooks and to the published site become links to the built pages."
        if self.site_url and href.startswith(self.site_url + '/'): href = href[len(self.site_url) + 1:]
        m = re.match(r'^(?:\./)?([^/#?]+\.ipynb)(#.*)?$', href)
        if m and m.group(1) in self.by_nb: return self.by_nb[m.group(1)].out + (m.group(2) or '')
        m = re.match(r'^(?:\./)?([^/#?]+)\.md(#.*)?$', href)  # Quarto's commonmark copies
        if m and f'{m.group(1)}.ipynb' in self.by_nb: return self.by_nb[f'{m.group(1)}.ipynb'].out + (m.group(2) or '')
        return href

    def _links_and_ids(self, state) -> None:
        ids = state.env.setdefault('ids', set())
        toks = state.tokens
        for i, tok in enumerate(toks):
            if tok.type == 'heading_open' and not tok.attrGet('id'):
                text = ''.join(c.content for c in (toks[i+1].children or []) if c.type in ('text', 'code_inline'))
                base = slug = slugify(text)
                n = 1
                while slug in ids: slug, n = f'{base}-{n}', n + 1
                ids.add(slug)
                tok.attrSet('id', slug)
                if tok.tag in ('h2', 'h3'): state.env.setdefault('toc', []).append((tok.tag, slug, i))
            for c in (tok.children or []):
                if c.type == 'link_open': c.attrSet('href', self._href(c.attrGet('href') or ''))
                if c.type == 'image': c.attrSet('src', self._href(c.attrGet('src') or ''))

    def render_md(self, text: str, env: dict) -> str:
        out = self.md.render(text, env)
        for tag, slug, _ in env.pop('toc', []):
            m = re.search(rf'<{tag} id="{re.escape(slug)}"[^>]*>(.*?)</{tag}>', out, re.S)
            if m: self._page.toc.append((tag, slug, m.group(1)))
        return out

    # -- cells and outputs ------------------------------------------------------------------------------------------
    def render_output(self, o: dict, env: dict, asis: bool) -> str:
        kind = output_kind(o)
        data = o.get('data', {})
        if kind == 'stream':
            return f'<div class="cell-output cell-output-{o.get("name", "stdout")}"><pre><code>{html.escape(ANSI.sub("", _text(o["text"])))}</code></pre></div>'
        if kind == 'error':
            tb = ANSI.sub('', '\n'.join(o.get('traceback', [])) or f"{o.get('ename')}: {o.get('evalue')}")
            return f'<div class="cell-output cell-output-error"><pre><code>{html.escape(tb)}</code></pre></div>'
        if kind == 'plotly':
            self._page.needs.add('plotly')
            return f'<div class="cell-output cell-output-display plotly-output">{PLOTLY_CDN.sub("", _text(data["text/html"]))}</div>'
        if kind == 'html':
            return f'<div class="cell-output cell-output-display">{_text(data["text/html"])}</div>'
        if kind == 'image':
            mime = next(m for m in IMAGE_MIMES if m in data)
            self.fig_count += 1
            name = f'figures/{Path(self._page.out).stem}-{self.fig_count}.{mime.split("/")[1].split("+")[0]}'
            (self.out/name).parent.mkdir(parents=True, exist_ok=True)
            if mime == 'image/svg+xml': (self.out/name).write_text(_text(data[mime]))
            else: (self.out/name).write_bytes(base64.b64decode(_text(data[mime])))
            alt = html.escape(_text(data.get('text/plain', '')).strip(), quote=True)
            return f'<div class="cell-output cell-output-display"><img class="cell-output-image" src="{name}" alt="{alt}"></div>'
        if kind == 'markdown':
            return f'<div class="cell-output cell-output-display{" cell-output-asis" if asis else ""}">{self.render_md(_text(data["text/markdown"]), env)}</div>'
        if kind == 'latex':
            tex = _text(data['text/latex']).strip().strip('$')
            return f'<div class="cell-output cell-output-display"><div class="math-display">{self._math_ref(tex, True)}</div></div>'
        if kind == 'text':
            return f'<div class="cell-output cell-output-display"><pre><code>{html.escape(ANSI.sub("", _text(data["text/plain"])))}</code></pre></div>'
        return ''

    def render_cell(self, cell: dict, env: dict) -> str:
        src = _text(cell['source'])
        if cell['cell_type'] == 'markdown': return f'<div class="cell cell-markdown">{self.render_md(src, env)}</div>'
        if cell['cell_type'] != 'code': return ''
        opts, code = cell_directives(src)
        if opts.get('include') is False: return ''
        parts = []
        if code.strip() and opts.get('echo', True) is not False:
            block = f'<pre class="sourceCode python"><code>{highlight(code, PythonLexer(), HtmlFormatter(nowrap=True))}</code></pre>'
            fold = opts.get('code-fold')
            parts.append(f'<details class="code-fold"><summary>Code</summary>{block}</details>' if fold in (True, 'true', 'show') else block)
        if opts.get('output', True) is not False:
            parts += [self.render_output(o, env, opts.get('output') == 'asis') for o in cell.get('outputs', [])]
        parts = [p for p in parts if p]
        return f'<div class="cell cell-code">{"".join(parts)}</div>' if parts else ''

    def render_page(self, page: Page) -> None:
        self._page = page
        nb = json.loads((self.proc/page.nb).read_text())
        env: dict = {}
        cells = nb['cells'][1:] if frontmatter(nb) else nb['cells']
        page.body = '\n'.join(filter(None, (self.render_cell(c, env) for c in cells)))
        page.description = self.md.renderInline(page.description, env) if page.description else ''

    def resolve_api_anchors(self) -> None:
        """nbdev links every backticked name to its symbol's anchor, but only names with a `show_doc` entry have one
        (a method documented inside its class has none): such links go to the nearest documented parent
        (`trainer.html#trainer.fit` -> `#trainer`), else to the top of the page. Links written by hand are left alone."""
        ids = {p.out: set(re.findall(r'\bid="([^"]+)"', p.body)) for p in self.pages}
        def fix(m):
            page, frag = m.group(1), html.unescape(m.group(2))
            if page not in ids or frag in ids[page]: return m.group(0)
            parts = frag.split('.')
            while parts and '.'.join(parts) not in ids[page]: parts.pop()
            return f'<a href="{page}{"#" + html.escape(".".join(parts)) if parts else ""}"><code>'
        for p in self.pages:
            p.body = re.sub(r'<a href="([^"#/:]+\.html)#([^"]+)"><code>', fix, p.body)

    # -- math -------------------------------------------------------------------------------------------------------
    def typeset_math(self) -> list[str]:
        "Every formula of the site through one KaTeX process; a formula KaTeX rejects is shown as its error."
        if not self.math: return []
        script = HERE/'katex_render.js'
        run = subprocess.run(['node', str(script)], input=json.dumps(self.math), capture_output=True, text=True,
                             cwd=HERE)
        if run.returncode: raise SystemExit(f'docs: error: KaTeX failed: {run.stderr.strip()[-2000:]}')
        res = json.loads(run.stdout)
        for (tex, _), r in zip(self.math, res):
            if r.get('error'): print(f'docs: warning: KaTeX cannot render {tex!r}: {r["error"]}', file=sys.stderr)
        return [r['html'] for r in res]

    # -- output -----------------------------------------------------------------------------------------------------
    def copy_assets(self, needs: set) -> None:
        a = self.out/'assets'
        (a/'katex').mkdir(parents=True, exist_ok=True)
        kdist = NODE_MODULES/'katex'/'dist'
        if not kdist.exists(): raise SystemExit('docs: error: KaTeX is not installed: run `npm ci --prefix tools/docsite` (tools/docs.sh does)')
        shutil.copy2(kdist/'katex.min.css', a/'katex'/'katex.min.css')
        shutil.copytree(kdist/'fonts', a/'katex'/'fonts', dirs_exist_ok=True)
        if 'mermaid' in needs: shutil.copy2(NODE_MODULES/'mermaid'/'dist'/'mermaid.min.js', a/'mermaid.min.js')
        if 'plotly' in needs:
            import plotly
            shutil.copy2(Path(plotly.__file__).parent/'package_data'/'plotly.min.js', a/'plotly.min.js')
        shutil.copy2(HERE/'site.css', a/'site.css')
        (a/'pygments.css').write_text(HtmlFormatter(style='friendly').get_style_defs('.sourceCode'))
        if (self.proc/'styles.css').exists(): shutil.copy2(self.proc/'styles.css', a/'styles.css')
        for f in self.proc.rglob('*'):  # images and other files the notebooks reference
            rel = f.relative_to(self.proc)
            if f.is_file() and f.suffix not in ('.ipynb', '.yml', '.yaml') and rel.parts[0][0] not in '._' and f.name != 'styles.css':
                (self.out/rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, self.out/rel)

    def build(self) -> dict:
        if self.out.exists(): shutil.rmtree(self.out)
        self.out.mkdir(parents=True)
        for p in self.pages: self.render_page(p)
        self.resolve_api_anchors()
        rendered = self.typeset_math()
        sub = lambda s: MATH.sub(lambda m: rendered[int(m.group(1))], s)
        tpl = Environment(loader=FileSystemLoader(HERE), autoescape=False).get_template('page.html')
        sidebar = self.sidebar()
        needs = set().union(*(p.needs for p in self.pages))
        order = [p for p in self.pages if p.in_sidebar]
        for p in self.pages:
            i = order.index(p) if p in order else None
            prev_p = order[i-1] if i else None
            next_p = order[i+1] if i is not None and i + 1 < len(order) else None
            text = tpl.render(site_title=self.site_title, page=p, sidebar=sidebar, prev=prev_p, next=next_p,
                              body=sub(p.body), description=sub(p.description),
                              toc=[(t, s, sub(h)) for t, s, h in p.toc], repo_url=self.repo_url,
                              project_css=(self.proc/'styles.css').exists())
            (self.out/p.out).write_text(text)
        self.copy_assets(needs)
        manifest = {p.out: {'notebook': p.nb, 'title': p.title, 'sidebar': p.in_sidebar} for p in self.pages}
        (self.out/'pages.json').write_text(json.dumps(manifest, indent=1))
        return manifest

    def sidebar(self) -> list:
        "[(section or None, [page, ...]), ...] in sidebar.yml order."
        groups: list = []
        for p in self.pages:
            if not p.in_sidebar: continue
            if not groups or groups[-1][0] != p.section: groups.append((p.section, []))
            groups[-1][1].append(p)
        return groups


def ensure_assets() -> None:
    "KaTeX and mermaid from npm, pinned by package-lock.json: installed once, and again when the lock file changes."
    lock = NODE_MODULES/'.package-lock.json'
    if lock.exists() and lock.stat().st_mtime >= (HERE/'package-lock.json').stat().st_mtime: return
    if not shutil.which('npm'): raise SystemExit('docs: error: npm is not installed (KaTeX and mermaid come from npm): apt-get install nodejs npm')
    run = subprocess.run(['npm', 'ci', '--no-audit', '--no-fund', '--loglevel=error'], cwd=HERE, capture_output=True, text=True)
    if run.returncode: raise SystemExit(f'docs: error: `npm ci` in {HERE} failed:\n{run.stdout}{run.stderr}')


def process_notebooks(nbs: Path, force: bool = False) -> Path:
    "nbdev's own processing (directives, show_doc, doc links) into `_proc/`, without the Quarto check of nbdev-proc-nbs."
    from nbdev.serve import proc_nbs
    return proc_nbs(str(nbs), n_workers=2, force=force)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description='Build the offline docs site from the notebooks.')
    p.add_argument('--out', type=Path, default=ROOT/'_site', help='output folder (replaced)')
    p.add_argument('--nbs', type=Path, default=ROOT/'nbs', help='notebook folder')
    p.add_argument('--force', action='store_true', help='re-process every notebook (ignore the _proc cache)')
    a = p.parse_args(argv)
    t0 = time.time()
    ensure_assets()
    proc = process_notebooks(a.nbs.resolve(), a.force)
    t1 = time.time()
    pages = SiteBuilder(Path(proc), a.out.resolve()).build()
    print(f'docs: {len(pages)} pages in {a.out} (notebooks processed in {t1-t0:.1f} s, rendered in {time.time()-t1:.1f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())

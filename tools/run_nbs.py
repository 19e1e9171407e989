#!/usr/bin/env python
"""Execute notebooks in place so that they carry small, deterministic outputs, then `nbdev-clean` them.

    python tools/run_nbs.py                       # every notebook in nbs/
    python tools/run_nbs.py nbs/01_geometry.ipynb nbs/index.ipynb
    python tools/run_nbs.py --budget-mb 3 -j 2 nbs/2*.ipynb
    python tools/run_nbs.py --flags slow nbs/01b_geometry_interop.ipynb   # slow cells too

nbdev's convention is to commit notebooks with their outputs: the docs site, GitHub and a reader opening a
notebook then all see the same printed results, tables and figures. This command is how those outputs are made:

- Each notebook runs in a fresh process with PYTHONHASHSEED=0, TRITON_INTERPRET=1, OMP_NUM_THREADS=1,
  TOKENIZERS_PARALLELISM=false, CUDA_VISIBLE_DEVICES="" and IN_TEST unset (the outputs are what a reader running the
  notebook sees), with python/numpy/torch seeded before the first cell.
- Cells are skipped exactly as `nbdev-test` skips them (`#| eval: false`, and every flag of `tst_flags`: `#| slow`,
  `#| notest`, `#| gpu`); a skipped cell keeps the outputs it already had. `--flags slow` runs the slow cells too
  (as `nbdev-test --flags slow` does), which is how their outputs are made.
- matplotlib figures are stored as PNG (100 dpi, no version stamp); plotly figures as one `text/html` output each: the figure's
  `<div>` and script with a deterministic id, loading plotly.js from its CDN (the offline site build swaps that for
  the local copy shipped in the plotly package), never plotly.js itself inline.
- Stream outputs keep what a terminal shows (carriage-return progress lines collapsed to their last state).
- Execution counts, timestamps and cell metadata go (`nbdev-clean`).
- A notebook whose outputs exceed the size budget (2 MB by default) fails, naming its largest cells, and is left
  as it was; so is a notebook with a failing cell.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENV = {'PYTHONHASHSEED': '0', 'TRITON_INTERPRET': '1', 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false',
       'CUDA_VISIBLE_DEVICES': '', 'MPLBACKEND': 'module://matplotlib_inline.backend_inline'}

# Runs in the notebook's shell before its first cell; its outputs are discarded.
SETUP = '''
import random as _r; _r.seed(0)
try:
    import numpy as _np; _np.random.seed(0)
except ImportError: pass
try:
    import torch as _t; _t.manual_seed(0)
except ImportError: pass
import matplotlib as _mpl
_mpl.rcParams.update({'figure.dpi': 100, 'savefig.dpi': 100, 'svg.hashsalt': 'bytropix'})
from matplotlib_inline.backend_inline import set_matplotlib_formats as _fmt
_fmt('png', bbox_inches='tight', metadata={'Software': None})  # no matplotlib version in the bytes
try:
    import plotly.io as _pio
    from plotly.io._base_renderers import MimetypeRenderer as _MR
except ImportError: _pio = None
if _pio is not None:
    class _DocsHTML(_MR):
        "One text/html output per figure: its div and script, plotly.js loaded from the CDN, a deterministic id."
        n = 0
        def to_mimebundle(self, fig_dict):
            type(self).n += 1
            return {'text/html': _pio.to_html(fig_dict, include_plotlyjs='cdn', full_html=False, validate=False,
                                              div_id=f'{STEM}-plotly-{type(self).n}')}
    _pio.renderers['bytropix_docs'] = _DocsHTML()
    _pio.renderers.default = 'bytropix_docs'
'''


def _collapse_cr(text: str) -> str:
    "What a terminal shows: each line keeps only the text after its last carriage return."
    return '\n'.join(line.rsplit('\r', 1)[-1] if '\r' in line.rstrip('\r') else line.rstrip('\r')
                     for line in text.split('\n'))


def _tidy_outputs(outputs: list) -> list:
    "Merge consecutive stream outputs of the same name, collapse progress lines, keep one copy of each plotly figure."
    res = []
    for o in outputs:
        o = json.loads(json.dumps(o))  # plain dicts and lists
        if o.get('output_type') == 'stream':
            text = ''.join(o['text']) if isinstance(o['text'], list) else o['text']
            if res and res[-1].get('output_type') == 'stream' and res[-1]['name'] == o['name']:
                res[-1]['text'] += text
                continue
            o['text'] = text
        res.append(o)
    for o in res:
        if o.get('output_type') == 'stream': o['text'] = _collapse_cr(o['text'])
        data = o.get('data', {})
        if 'plotly-graph-div' in ''.join(data.get('text/html', '')):
            data.pop('text/plain', None)  # a figure's repr repeats all of its data: the HTML is the one copy
    return res


def _outputs_size(cell: dict) -> int:
    return len(json.dumps(cell.get('outputs', []), ensure_ascii=False).encode())


def check_budget(path: Path, budget: int) -> str | None:
    "None when the notebook's outputs fit in `budget` bytes, else a message naming its largest cells."
    cells = json.loads(path.read_text())['cells']
    sizes = [(_outputs_size(c), i, c) for i, c in enumerate(cells)]
    total = sum(s for s, _, _ in sizes)
    if total <= budget: return None
    worst = sorted(sizes, key=lambda t: -t[0])[:3]
    names = '; '.join(f"cell {i} (id {c.get('id')}, {s/1e6:.2f} MB): {''.join(c['source']).strip().splitlines()[:1]}"
                      for s, i, c in worst if s)
    return (f'{path}: outputs take {total/1e6:.2f} MB, over the {budget/1e6:.2f} MB budget. Largest: {names}. '
            'Make the figures smaller (fewer points, lower dpi, PNG not SVG) or print less.')


def run_one(path: Path, timeout: int, flags: list[str]) -> None:
    "Execute `path` in this process (the child of `main`) and write its outputs back; raise on a failing cell."
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.config import get_config
    from nbdev.process import NBProcessor
    from nbdev.test import _skip_cell  # nbdev-test's own predicate, so that both skip the same cells

    skip_flags = get_config(ROOT).tst_flags
    skip_flags = skip_flags.split() if isinstance(skip_flags, str) else list(skip_flags)
    raw = json.loads(path.read_text())
    nb = NBProcessor(path, rm_directives=False, process=True).nb
    skip = _skip_cell(nb, skip_flags=skip_flags, force_flags=flags)
    sh = CaptureShell(path, mpl_format='png')
    with working_directory(path.parent):
        sh.run(SETUP.replace('{STEM}', re.sub(r'\W', '-', path.stem)))
        if sh.exc: raise RuntimeError(f'{path}: the setup code failed: {sh.exc!r}')
        try: sh.run_all(nb, exc_stop=True, preproc=skip, cell_timeout=timeout)
        except BaseException as e: raise RuntimeError(sh.prettytb(fname=path) or repr(e)) from None
    ran = {i for i, c in enumerate(nb.cells) if not skip(c)}
    for i, (cell, done) in enumerate(zip(raw['cells'], nb.cells)):
        if i in ran:
            errs = [o for o in done.outputs if o.get('output_type') == 'error']
            if errs: raise RuntimeError(f"{path}: cell {i} (id {cell.get('id')}) failed: {errs[0].get('ename')}: {errs[0].get('evalue')}")
            cell['outputs'] = _tidy_outputs(done.outputs)
            cell['execution_count'] = None
    path.write_text(json.dumps(raw, sort_keys=True, indent=1, ensure_ascii=False) + '\n')


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}
    env.update(ENV)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    return env


def process(path: Path, budget: int, timeout: int, flags: list[str]) -> str | None:
    "Run, clean and size-check one notebook in a fresh interpreter; None on success, else the reason it failed."
    before = path.read_bytes()
    t0 = time.time()
    run = subprocess.run([sys.executable, __file__, '--_child', str(path), '--timeout', str(timeout), '--flags', ' '.join(flags)],
                         env=_child_env(), cwd=ROOT, capture_output=True, text=True)
    if run.returncode:
        path.write_bytes(before)
        return f'{path}: execution failed\n{run.stdout[-4000:]}{run.stderr[-4000:]}'
    clean = subprocess.run(['nbdev-clean', '--fname', str(path)], cwd=ROOT, capture_output=True, text=True)
    if clean.returncode:
        path.write_bytes(before)
        return f'{path}: nbdev-clean failed\n{clean.stdout}{clean.stderr}'
    if msg := check_budget(path, budget):
        path.write_bytes(before)
        return msg
    size = sum(_outputs_size(c) for c in json.loads(path.read_text())['cells'])
    print(f'{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {time.time()-t0:.1f} s, '
          f'outputs {size/1e3:.1f} kB{"" if path.read_bytes() != before else " (unchanged)"}', flush=True)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('notebooks', nargs='*', type=Path, help='notebooks to run (default: every nbs/*.ipynb)')
    p.add_argument('--budget-mb', type=float, default=2.0, help='largest total output size of one notebook (MB)')
    p.add_argument('--timeout', type=int, default=900, help='seconds one cell may run')
    p.add_argument('-j', '--jobs', type=int, default=1, help='notebooks run at once')
    p.add_argument('--flags', default='', help="space-separated test flags whose cells run too, as in nbdev-test (e.g. 'slow')")
    p.add_argument('--_child', type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        try: run_one(a._child.resolve(), a.timeout, a.flags.split())
        except Exception as e:
            print(e, file=sys.stderr)
            return 1
        return 0
    nbs = [n.resolve() for n in a.notebooks] or sorted((ROOT/'nbs').glob('*.ipynb'))
    if missing := [str(n) for n in nbs if not n.is_file() or n.suffix != '.ipynb']:
        print(f'run_nbs: error: not a notebook: {", ".join(missing)}', file=sys.stderr)
        return 2
    budget = int(a.budget_mb * 1e6)
    if a.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(a.jobs) as ex: errors = [e for e in ex.map(lambda n: process(n, budget, a.timeout, a.flags.split()), nbs) if e]
    else:
        errors = [e for n in nbs if (e := process(n, budget, a.timeout, a.flags.split()))]
    for e in errors: print(f'run_nbs: error: {e}', file=sys.stderr)
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())

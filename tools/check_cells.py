"""Check (or `--fix`) the notebooks' code cells against what nbdev's docs processing needs.

nbdev executes every exported cell and every cell that contains an import statement (anywhere in it) to render
`show_doc`; a test cell that also imports something is then run out of context and breaks the docs build. So:
a code cell that imports must hold nothing but imports (exported cells aside). `--fix` moves the top-level
imports of such a cell into a new cell just before it; imports nested in functions are reported for a manual fix.
"""
import ast, json, sys, uuid
from pathlib import Path

root = Path(__file__).resolve().parents[1]

def directives(src: str) -> set[str]:
    return {l[3:].split()[0] for l in src.splitlines() if l.startswith('#| ') and len(l) > 3}

def problems(nb_path: Path, fix: bool = False) -> list[str]:
    nb = json.loads(nb_path.read_text())
    out, cells, changed = [], [], False
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] != 'code' or directives(src) & {'export', 'exports', 'exporti', 'exec_doc'} \
           or 'eval: false' in src or src.lstrip().startswith('%'):
            cells.append(c); continue
        try: tree = ast.parse(src)
        except SyntaxError: cells.append(c); continue
        imports = (ast.Import, ast.ImportFrom)
        top = [n for n in tree.body if isinstance(n, imports)]
        nested = [n for n in ast.walk(tree) if isinstance(n, imports) and n not in top]
        other = [n for n in tree.body if not isinstance(n, imports)]
        if not (top or nested) or not (other or nested):
            cells.append(c); continue
        if nested:
            out.append(f"{nb_path.name}: a cell imports inside a function or block (move the import to its own cell): "
                       f"{src.splitlines()[0][:80]!r}")
        shared = {i for n in top for i in range(n.lineno, n.end_lineno + 1)} & \
                 {i for n in other for i in range(n.lineno, n.end_lineno + 1)}
        if top and other:
            if fix and not shared:
                lines = src.splitlines(keepends=True)
                drop = {i for n in top for i in range(n.lineno - 1, n.end_lineno)}
                imp = ''.join(lines[i] for i in sorted(drop)).rstrip('\n')
                rest = ''.join(l for i, l in enumerate(lines) if i not in drop).strip('\n')
                new = {'cell_type': 'code', 'execution_count': None, 'id': uuid.uuid4().hex[:8], 'metadata': {},
                       'outputs': [], 'source': imp.splitlines(keepends=True)}
                cells.append(new); c['source'] = rest.splitlines(keepends=True); changed = True
            else:
                out.append(f"{nb_path.name}: a cell mixes imports with other code: {src.splitlines()[0][:80]!r}")
        cells.append(c)
    if changed:
        nb['cells'] = cells
        nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    return out

if __name__ == '__main__':
    fix = '--fix' in sys.argv
    paths = [Path(a) for a in sys.argv[1:] if not a.startswith('--')] or sorted((root/'nbs').rglob('*.ipynb'))
    errs = [e for p in paths if '.ipynb_checkpoints' not in str(p) for e in problems(p, fix)]
    print('\n'.join(errs) if errs else 'cells ok')
    sys.exit(1 if errs else 0)

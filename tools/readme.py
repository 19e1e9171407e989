"""Regenerate README.md from nbs/index.ipynb without Quarto (`--check`: fail if README.md is stale).

`nbdev-readme` renders through Quarto, which cannot be installed offline; this writes the same content (the
notebook's markdown cells and the sources of its visible code cells) so the README never drifts from the index.
"""
import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
nb = json.loads((root / 'nbs' / 'index.ipynb').read_text())
parts = []
for cell in nb['cells']:
    src = ''.join(cell['source']).strip()
    if not src or src.startswith('#| hide'):
        continue
    parts.append(src if cell['cell_type'] == 'markdown' else f"```python\n{src}\n```")
text = '<!-- generated from nbs/index.ipynb by tools/readme.py: do not edit -->\n\n' + '\n\n'.join(parts) + '\n'
readme = root / 'README.md'
if '--check' in sys.argv[1:]:
    if readme.read_text() != text:
        sys.exit('README.md is out of date with nbs/index.ipynb: run `python tools/readme.py`.')
    print('README.md is up to date')
else:
    readme.write_text(text)
    print('wrote README.md')

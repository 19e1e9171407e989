"""Regenerate README.md from nbs/index.ipynb without Quarto.

`nbdev-readme` renders through Quarto, which cannot be installed offline; this writes the same content (the
notebook's markdown cells and the sources of its visible code cells) so the README never drifts from the index.
"""
import json
from pathlib import Path

root = Path(__file__).resolve().parents[1]
nb = json.loads((root / 'nbs' / 'index.ipynb').read_text())
parts = []
for cell in nb['cells']:
    src = ''.join(cell['source']).strip()
    if not src or src.startswith('#| hide'):
        continue
    parts.append(src if cell['cell_type'] == 'markdown' else f"```python\n{src}\n```")
text = '\n\n'.join(parts) + '\n'
(root / 'README.md').write_text('<!-- generated from nbs/index.ipynb by tools/readme.py: do not edit -->\n\n' + text)
print('wrote README.md')

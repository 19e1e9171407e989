"""Regenerate README.md from nbs/index.ipynb without Quarto (`--check`: fail if README.md is stale).

`nbdev-readme` renders through Quarto, which cannot be installed offline; this writes the same content (the
notebook's markdown cells and the sources of its visible code cells) so the README never drifts from the index.
Quarto's diagram cells (```{mermaid}) become the ```mermaid blocks that GitHub draws, and image paths relative to
nbs/ are made relative to the repository root.
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
    if cell['cell_type'] == 'markdown':
        src = src.replace('```{mermaid}', '```mermaid').replace('src="images/', 'src="nbs/images/').replace('](images/', '](nbs/images/')
        parts.append(src)
    else: parts.append(f"```python\n{src}\n```")
text = '<!-- generated from nbs/index.ipynb by tools/readme.py: do not edit -->\n\n' + '\n\n'.join(parts) + '\n'
readme = root / 'README.md'
if '--check' in sys.argv[1:]:
    if readme.read_text() != text:
        sys.exit('README.md is out of date with nbs/index.ipynb: run `python tools/readme.py`.')
    print('README.md is up to date')
else:
    readme.write_text(text)
    print('wrote README.md')

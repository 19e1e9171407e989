"Static rules for the chapters that the docs build depends on (tools/check_cells.py)."
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_cells_hold_only_imports():
    "nbdev's docs processing runs every cell that imports; a test cell that also imports breaks the docs build."
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'check_cells.py')], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

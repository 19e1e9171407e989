"""Imported first by every benchmark script: puts the checkout first on `sys.path` (run from a checkout, installed or
not) and moves this folder, which Python puts first for a script, to the end — where its `kernels.py` no longer
shadows the `kernels` package that transformers imports, and where the processes a benchmark spawns still find it."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

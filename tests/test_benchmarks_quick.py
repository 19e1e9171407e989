"Smoke tests of the benchmark scripts: each runs in its --quick mode and prints its table (no timing is checked)."
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick(script: str) -> str:
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/script), '--quick'], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_export_quant_quick():
    out = _quick('export_quant.py')
    for method in ('fp32', 'bf16', 'fp16', 'int8', 'int8-dyn', 'int4', 'nvfp4', 'mxfp4', 'nf4'): assert f"\n{method} " in out, out
    assert 'tok/s b16' in out and 'targets (int8' in out

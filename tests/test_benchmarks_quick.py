"Every benchmark's `--quick` mode runs and prints its table (never a timing check: timings belong to benchmarks)."
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false', 'PYTHONPATH': str(ROOT)}


def run_quick(script: str) -> str:
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/script), '--quick'], capture_output=True, text=True,
                       env=ENV, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_export_interop_quick():
    out = run_quick('export_interop.py')
    assert '| model | measure | PyTorch eager | onnxruntime | onnxruntime speed-up |' in out
    assert 'decode 8 tokens, tokens/s' in out and 'full sequence 2×16, ms' in out
    assert '| model | bytropix generate, tokens/s | transformers generate, tokens/s | bytropix / transformers |' in out


def test_export_quant_quick():
    out = run_quick('export_quant.py')
    for method in ('fp32', 'bf16', 'fp16', 'int8', 'int8-dyn', 'int4', 'nvfp4', 'mxfp4', 'nf4'): assert f"\n{method} " in out, out
    assert 'tok/s b16' in out and 'targets (int8' in out


def test_peft_quick():
    out = run_quick('peft.py')
    assert '| method | trainable params | share | weights MiB | weights+grads+Adam MiB | vs full FT |' in out
    for method in ('full fine-tune', 'LoRA, fp32 trunk', 'LoRA, bf16 trunk', 'QLoRA (NF4 trunk)', 'LoRA, NVFP4 trunk',
                   'prompt tuning (16)'):
        assert f"| {method} |" in out, out

"""Resumption: a run killed with SIGKILL and resumed reproduces the uninterrupted run bit for bit; broken
checkpoints are refused with a clear CheckpointError."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# A tiny run through the public API only. Checkpoints every 4 steps; the callback slows steps down so that the
# parent can kill the process between two checkpoints.
CHILD = textwrap.dedent('''
    import sys, time
    import bytropix.models.gpt  # noqa: F401  (registers `gpt`)
    from bytropix.config import load_config
    from bytropix.training.trainer import Trainer
    out, resume, delay = sys.argv[1], sys.argv[2] == '1', float(sys.argv[3])
    run = load_config(None, [
        f'out_dir={out}', 'model.n_layer=1', 'model.n_head=2', 'model.n_embd=32',
        'train.steps=20', 'train.batch_size=4', 'train.block_size=16', 'train.warmup_steps=3',
        'train.lr=3e-3', 'train.log_interval=1', 'train.eval_interval=6', 'train.eval_batches=2',
        'train.save_interval=4', 'train.keep_last=2', 'train.sample_interval=5', 'train.sample_tokens=8',
        'train.num_threads=1', 'train.tensorboard=false', 'train.grad_accum=2', 'train.seed=7'])
    cb = [lambda trainer, step, rec: time.sleep(delay)] if delay else []
    Trainer(run, resume=resume, callbacks=cb, log=None, progress=False).fit()
''')


def _child(tmp_path: Path, out: Path, resume: bool, delay: float = 0.0) -> subprocess.Popen:
    script = tmp_path / 'child.py'
    script.write_text(CHILD)
    env = {**os.environ, 'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0'}
    return subprocess.Popen([sys.executable, str(script), str(out), '1' if resume else '0', str(delay)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p: subprocess.Popen, timeout: float = 120) -> None:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out


def _records(run: Path, strict: bool = True) -> list[dict]:
    "metrics.jsonl without the wall-clock dependent fields (`strict=False`: skip a line torn by the kill)."
    drop = {'train/tokens_per_s', 'time_s', 'sys/memory_mb'}
    out = []
    for line in (run / 'metrics.jsonl').read_text().splitlines():
        try: rec = json.loads(line)
        except json.JSONDecodeError:
            if strict: raise
            continue
        out.append({k: v for k, v in rec.items() if k not in drop})
    return out


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "An uninterrupted run and a run killed with SIGKILL after its step-8 checkpoint, then resumed."
    tmp = tmp_path_factory.mktemp('resume')
    ref = _child(tmp, tmp / 'ref', resume=False)
    killed = _child(tmp, tmp / 'killed', resume=False, delay=0.25)
    _finish(ref)
    deadline = time.monotonic() + 120
    metrics = tmp / 'killed' / 'metrics.jsonl'
    # kill once step-8 is saved and the run has moved on (steps 9-10 logged, a sample/eval may be in the files)
    while time.monotonic() < deadline:
        if (tmp / 'killed/checkpoints/step-8/state.json').is_file() and metrics.is_file() and \
                any(r.get('step', 0) >= 10 for r in _records(tmp / 'killed', strict=False)):
            break
        assert killed.poll() is None, killed.communicate()[0]
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    before = _records(tmp / 'killed', strict=False)
    _finish(_child(tmp, tmp / 'killed', resume=True))
    return tmp / 'ref', tmp / 'killed', before


def test_sigkill_resume_is_bit_exact(runs):
    ref, killed, before = runs
    assert max(r['step'] for r in before) > 8        # the killed run got past its last checkpoint
    a, b = _records(ref), _records(killed)
    assert [r['step'] for r in a] == [r['step'] for r in b]   # steps after 8 logged once: the file was truncated
    assert a == b                                    # losses, grad norms, lrs, val metrics: exactly equal
    assert len([r for r in a if 'train/loss' in r]) == 20
    assert (ref / 'samples.txt').read_text() == (killed / 'samples.txt').read_text()
    wa, wb = _weights(ref / 'export/model.safetensors'), _weights(killed / 'export/model.safetensors')
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_run_directory_layout(runs):
    ref, killed, _ = runs
    for run in (ref, killed):
        assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['step-16', 'step-20']  # keep_last=2
        assert not list(run.rglob('*.tmp-*'))
        for f in ('config.yaml', 'tokenizer.json', 'best/model.safetensors', 'best/state.json', 'export/README.md',
                  'export/config.json'):
            assert (run / f).is_file(), f
    best = json.loads((ref / 'best/state.json').read_text())
    vals = [r for r in _records(ref) if 'val/loss' in r]
    assert best['step'] == min(vals, key=lambda r: r['val/loss'])['step']


def _tiny_run(out: Path, **train):
    import bytropix.models.gpt  # noqa: F401
    from bytropix.config import load_config
    over = {'model.n_layer': 1, 'model.n_head': 2, 'model.n_embd': 32, 'train.steps': 6, 'train.batch_size': 2,
            'train.block_size': 16, 'train.warmup_steps': 1, 'train.eval_interval': 0, 'train.eval_batches': 1,
            'train.save_interval': 3, 'train.sample_interval': 0, 'train.tensorboard': False, 'out_dir': str(out)}
    over.update({f'train.{k}': v for k, v in train.items()})
    return load_config(None, over)


def test_broken_checkpoints_are_refused(runs, tmp_path):
    from bytropix.core import CheckpointError, ConfigError
    from bytropix.training.trainer import Trainer
    _, killed, _ = runs
    run_dir = tmp_path / 'copy'
    shutil.copytree(killed, run_dir)
    run = _tiny_run(run_dir)
    cfg = run.replace(train=run.train.replace(steps=30))
    # a config that does not match the saved run is refused
    from bytropix.config import load_config
    saved = load_config(run_dir / 'config.yaml', [f'out_dir={run_dir}', 'train.steps=30'])
    with pytest.raises(ConfigError, match='model.n_embd'):
        Trainer(saved.replace(model={**saved.model, 'n_embd': 64}), resume=True, log=None).setup()
    # truncated weights
    w = run_dir / 'checkpoints/step-20/model.safetensors'
    raw = w.read_bytes()
    w.write_bytes(raw[:len(raw) // 3])
    with pytest.raises(CheckpointError, match='truncated'):
        Trainer(saved, resume=True, log=None).setup()
    # corrupted optimizer state (same size, flipped bytes)
    p = run_dir / 'checkpoints/step-16/optimizer.pt'
    data = bytearray(p.read_bytes()); data[len(data) // 2] ^= 0xFF; p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match='corrupt'):
        Trainer(saved, resume=16, log=None).setup()
    # an existing run is never overwritten by accident
    with pytest.raises(ConfigError, match='already holds a training run'):
        Trainer(cfg, log=None).setup()


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    from bytropix.training.trainer import Trainer
    lines = []
    m = Trainer(_tiny_run(tmp_path / 'r'), resume=True, log=lines.append, progress=False).fit()
    assert m['step'] == 6 and any('starting from scratch' in l for l in lines)
    assert sorted(p.name for p in (tmp_path / 'r/checkpoints').iterdir()) == ['step-3', 'step-6']

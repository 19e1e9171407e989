"""Fault injection: SIGKILL, SIGINT, SIGTERM and a double Ctrl-C at randomized points of training, checkpoint writing and
export. After each fault no file of the run directory is torn; the run then resumes (or, when the fault came before
anything resumable existed, is refused with the --overwrite advice and restarted) and ends bit-identical to an
uninterrupted run: metrics, samples, checkpoint and `best/` weights and optimizer state, and every file of the export.

A driver process (this file run as a script) imports torch and bytropix once, then forks one child per run, so that a
run costs no interpreter start-up. In a child, the functions a run goes through — each training step, evaluation,
log append, weights write, file write, fsync, rename, export — count their calls; at a chosen call the child sends
itself the chosen signal, before or after the real call. The reference run records the sequence of calls, from which
the kill points are drawn at random.

BYTROPIX_FAULTS=N tries N kill points (default 20); BYTROPIX_FAULTS_SEED=S replays a draw."""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = ('SIGKILL', 'SIGINT', 'SIGTERM', 'SIGINTx2')
VARYING = {'train/tokens_per_s', 'time_s', 'sys/memory_mb'}   # wall-clock dependent: not part of the comparison


# ----------------------------------------------------------------------------------------------- the driver (a script)
def _overrides(out: Path, text: Path) -> dict:
    return {'out_dir': str(out), 'data.source': str(text), 'data.cache_dir': str(text.parent / 'cache'),
            'model.n_layer': 1, 'model.n_embd': 16, 'model.n_head': 2, 'train.steps': 12, 'train.batch_size': 2,
            'train.block_size': 16, 'train.warmup_steps': 2, 'train.log_interval': 1, 'train.eval_interval': 4,
            'train.eval_batches': 1, 'train.save_interval': 3, 'train.keep_last': 2, 'train.sample_interval': 5,
            'train.sample_tokens': 8, 'train.tensorboard': False, 'train.num_threads': 1, 'train.seed': 3}


class _Injector:
    "Counts the calls of the functions a run goes through; fires a signal at call `at` (`when`: before/after it)."
    def __init__(self, at: int | None = None, sig: str = 'SIGKILL', when: str = 'before'):
        self.at, self.sig, self.when, self.n, self.trace = at, sig, when, 0, []

    def fire(self) -> None:
        me = os.getpid()
        if self.sig == 'SIGKILL': os.kill(me, signal.SIGKILL)
        elif self.sig == 'SIGINTx2':          # an impatient user: the second Ctrl-C arrives while the first is handled
            os.kill(me, signal.SIGINT); time.sleep(0.01); os.kill(me, signal.SIGINT); time.sleep(0.01)
        else: os.kill(me, getattr(signal, self.sig))

    def wrap(self, owner, name: str, label: str) -> None:
        real = getattr(owner, name)
        def hooked(*a, **k):
            self.n += 1
            self.trace.append(label)
            hit = self.n == self.at
            if hit and self.when == 'before': self.fire()
            r = real(*a, **k)
            if hit and self.when == 'after': self.fire()
            return r
        setattr(owner, name, hooked)

    def install(self) -> None:
        import pathlib
        import bytropix.models.base as base
        import bytropix.training.checkpoint as ck
        import bytropix.training.trainer as tr
        for owner, name, label in [(tr.Trainer, 'train_step', 'step'), (tr.Trainer, 'evaluate', 'eval'),
                                   (tr.MetricsLog, 'append', 'metrics'), (tr.SamplesLog, 'append', 'samples'),
                                   (ck, 'save_weights', 'weights'), (base.BytropixModel, 'save_pretrained', 'export'),
                                   (pathlib.Path, 'write_bytes', 'write'), (pathlib.Path, 'write_text', 'write'),
                                   (os, 'fsync', 'fsync'), (os, 'replace', 'replace'), (os, 'rename', 'rename')]:
            self.wrap(owner, name, label)


def _child(fn) -> tuple[int, str]:
    "Run `fn()` in a forked child; its exit status (a signal: negative) and the message it left."
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code, msg = 0, ''
        try: msg = json.dumps(fn())
        except BaseException as e:
            from bytropix.core import BytropixError
            from bytropix.training.trainer import TrainingInterrupted
            if isinstance(e, TrainingInterrupted): code, msg = 128 + e.signum, f'interrupted at step {e.step}'
            elif isinstance(e, KeyboardInterrupt): code, msg = 130, 'aborted'
            elif isinstance(e, BytropixError): code, msg = 2, str(e)
            else:
                import traceback
                code, msg = 3, traceback.format_exc()
        os.write(w, msg.encode()); os.close(w)
        os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16): chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b''.join(chunks).decode()


def _train(out: Path, text: Path, injector: _Injector | None = None, resume: bool = False, overwrite: bool = False):
    def run():
        from bytropix.config import load_config
        from bytropix.training.trainer import Trainer
        if injector is not None: injector.install()
        Trainer(load_config(None, _overrides(out, text)), resume=resume, overwrite=overwrite, log=None, progress=False).fit()
        return injector.trace if injector is not None else []
    return _child(run)


def _sha(p: Path) -> str:
    "SHA-256 of a file; of a safetensors file, of its tensors by name and its metadata (the header's key order varies)."
    raw = p.read_bytes()
    if p.suffix != '.safetensors': return hashlib.sha256(raw).hexdigest()
    n = int.from_bytes(raw[:8], 'little')
    hdr, data, h = json.loads(raw[8:8 + n]), raw[8 + n:], hashlib.sha256()
    for k in sorted(hdr):
        v = hdr[k]
        h.update(json.dumps([k, v if k == '__metadata__' else [v['dtype'], v['shape']]], sort_keys=True).encode())
        if k != '__metadata__': h.update(data[v['data_offsets'][0]:v['data_offsets'][1]])
    return h.hexdigest()


def _torn(run: Path, graceful: bool) -> list[str]:
    "Every file at its final name that is incomplete (and, after a graceful stop, any temporary left behind)."
    import yaml
    bad = []
    for d in [*sorted((run / 'checkpoints').glob('step-*')), run / 'best']:
        if '.tmp-' in d.name or not (d / 'state.json').exists(): continue
        try:
            st = json.loads((d / 'state.json').read_text())
            for name, info in st['files'].items():
                f = d / name
                if f.stat().st_size != info['bytes'] or hashlib.sha256(f.read_bytes()).hexdigest() != info['sha256']:
                    bad.append(str(f))
        except (OSError, ValueError, KeyError) as e: bad.append(f"{d}: {e}")
    checks = {'metrics.jsonl': lambda t: [json.loads(l) for l in t.splitlines()], 'config.yaml': yaml.safe_load,
              'tokenizer.json': json.loads, 'export/config.json': json.loads}
    for name, parse in checks.items():
        if (run / name).exists():
            try: parse((run / name).read_text())
            except Exception as e: bad.append(f"{name}: {type(e).__name__}")
    w = run / 'export/model.safetensors'
    if w.exists():   # the header's length and the data offsets must fit the file
        raw = w.read_bytes()
        n = int.from_bytes(raw[:8], 'little')
        try:
            hdr = json.loads(raw[8:8 + n])
            end = max(v['data_offsets'][1] for k, v in hdr.items() if k != '__metadata__')
            if 8 + n + end != len(raw): bad.append(f"{w}: {len(raw)} bytes, the header describes {8 + n + end}")
        except (ValueError, KeyError) as e: bad.append(f"{w}: {e}")
    if graceful: bad += [str(p) for p in run.rglob('*') if '.tmp' in p.name or '.old-' in p.name]
    return bad


def _outcome(run: Path) -> dict:
    "What must be bit-identical between an interrupted-and-resumed run and the reference."
    recs = [{k: v for k, v in json.loads(l).items() if k not in VARYING} for l in (run / 'metrics.jsonl').read_text().splitlines()]
    final = max((run / 'checkpoints').glob('step-*'), key=lambda p: int(p.name.split('-')[1]))
    best = json.loads((run / 'best/state.json').read_text())
    return {'metrics': recs, 'samples': (run / 'samples.txt').read_text(), 'final': final.name,
            'final_weights': _sha(final / 'model.safetensors'), 'final_optimizer': _sha(final / 'optimizer.pt'),
            'best': [best['step'], _sha(run / 'best/model.safetensors')],
            'export': {p.name: _sha(p) for p in sorted((run / 'export').iterdir()) if p.name != 'config.json'},
            'export_config': _export_config(run / 'export/config.json')}


def _export_config(p: Path) -> dict:
    """An export's config.json without the SHA-256 of its safetensors file: safetensors writes its header's metadata in
    hash order, so the same tensors give different bytes in another process (the tensors are compared above)."""
    meta = json.loads(p.read_text())
    for name, info in (meta.get('files') or {}).items():
        if name.endswith('.safetensors'): info.pop('sha256', None)
    return meta


def drive(tmp: Path, n: int, seed: int) -> dict:
    # everything a run imports, imported once before forking (no torch computation runs in this process)
    import safetensors.torch, yaml, geoopt, torch._dynamo  # noqa: F401,E401  (AdamW imports torch._dynamo: 3 s)
    import bytropix.models.gpt, bytropix.generation, bytropix.data.datasets, bytropix.training.trainer  # noqa: F401,E401
    rng = random.Random(seed)
    words = 'the quick brown fox jumps over a lazy dog while wizards judge boxing matches near old stone bridges'.split()
    text = tmp / 'data' / 'text.txt'
    text.parent.mkdir(parents=True)
    text.write_text('\n\n'.join(' '.join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(150)))
    code, msg = _train(tmp / 'warm', text)                         # builds the token cache: every later run hits it
    assert code == 0, msg
    code, trace = _train(tmp / 'ref' / 'run', text, _Injector())   # every run dir is named `run`: the same model card
    assert code == 0, trace
    trace, ref = json.loads(trace), _outcome(tmp / 'ref' / 'run')
    results = []
    for i in range(n):
        at, sig, when = rng.randrange(1, len(trace) + 1), rng.choice(SIGNALS), rng.choice(('before', 'after'))
        run = tmp / f'k{i}' / 'run'
        code, msg = _train(run, text, _Injector(at, sig, when))
        r = {'point': at, 'event': trace[at - 1], 'signal': sig, 'when': when, 'exit': code, 'message': msg[:300]}
        want = {'SIGKILL': [-signal.SIGKILL], 'SIGINT': [130, 0], 'SIGTERM': [143, 0], 'SIGINTx2': [130, 0]}[sig]
        r['exit_ok'] = code in want
        r['torn'] = _torn(run, graceful=sig in ('SIGINT', 'SIGTERM'))
        code2, msg2 = _train(run, text, resume=True)
        r['restarted'] = code2 == 2 and 'no checkpoint to resume from' in msg2 and '--overwrite' in msg2
        if r['restarted']: code2, msg2 = _train(run, text, overwrite=True)
        r['resume_exit'], r['resume_message'] = code2, msg2[:300]
        r['identical'] = code2 == 0 and _outcome(run) == ref
        r['leftovers'] = [str(p) for p in run.rglob('*') if '.tmp' in p.name or '.old-' in p.name]
        r['lock_released'] = (run / '.lock').read_text() == ''
        results.append(r)
    return {'seed': seed, 'events': len(trace), 'event_kinds': sorted(set(trace)), 'results': results}


if __name__ == '__main__':
    tmp, n, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(drive(tmp, n, seed)))


# ----------------------------------------------------------------------------------------------- the test
def test_faults_at_random_points_resume_bit_identical(tmp_path):
    n = int(os.environ.get('BYTROPIX_FAULTS', '20'))
    seed = int(os.environ.get('BYTROPIX_FAULTS_SEED', random.randrange(2**31)))
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0', 'TOKENIZERS_PARALLELISM': 'false',
           'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.run([sys.executable, __file__, str(tmp_path), str(n), str(seed)], env=env, capture_output=True,
                       text=True, timeout=60 + 30 * n)
    assert p.returncode == 0, f"seed {seed}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    report = json.loads(p.stdout.strip().splitlines()[-1])
    rs = report['results']
    kinds = {r['event'] for r in rs}
    summary = (f"seed {seed} (BYTROPIX_FAULTS_SEED={seed} replays it): {len(rs)} kill points over {report['events']} "
               f"calls; events hit: {sorted(kinds)}; signals: {sorted({r['signal'] for r in rs})}; "
               f"{sum(r['restarted'] for r in rs)} restarted (nothing resumable yet)")
    print(summary)
    bad = [r for r in rs if not (r['exit_ok'] and not r['torn'] and r['identical'] and not r['leftovers'] and r['lock_released'])]
    assert not bad, summary + '\n' + '\n'.join(json.dumps(r) for r in bad[:5])
    assert len(rs) == n

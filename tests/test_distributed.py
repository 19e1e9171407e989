"""Training on several processes with real torchrun workers on gloo (CPU): DDP and FSDP2 equal one process (gpt and
wubu, whose manifold parameters stay identical on every rank), sharded checkpoints resume bit for bit after SIGKILL and
across world sizes (2 → 1, 1 → 2), a failing rank ends the job with its message, streams are split over the ranks.
The CI set covers each property once with as few launches as possible (one-process references run in this process);
BYTROPIX_SLOW=1 adds longer variants (uninterrupted reference runs, FSDP2 over all 20 steps, 1 → 2 under DDP, bad
inputs, an unreachable rendezvous, gradient accumulation, streaming resume)."""
import contextlib
import io
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
slow = pytest.mark.skipif(os.environ.get('BYTROPIX_SLOW') != '1', reason='long: runs with BYTROPIX_SLOW=1')
ENV = {**os.environ, 'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", 'OMP_NUM_THREADS': '1',
       'TOKENIZERS_PARALLELISM': 'false'}

# `bytropix train` with fault injection: BYT_RAISE=R@S makes rank R raise a DataError in step S, BYT_KILL=R@S SIGKILLs
# rank R after step S; BYT_MANIFOLD=DIR saves every rank's manifold parameters at the end.
CHILD = textwrap.dedent('''
    import os, signal, sys, torch
    from bytropix.core import DataError
    from bytropix.training.trainer import Trainer
    rank = int(os.environ.get('RANK', 0))
    step_fn, finish_fn = Trainer.train_step, Trainer._finish
    def train_step(self):
        for var in ('BYT_RAISE', 'BYT_KILL'):
            r, s = map(int, os.environ.get(var, '-1@-1').split('@'))
            if r == rank and self.step == s:
                if var == 'BYT_RAISE': raise DataError(f"injected failure on rank {rank} at step {s}")
                os.kill(os.getpid(), signal.SIGKILL)
        return step_fn(self)
    def _finish(self, elapsed):
        if os.environ.get('BYT_MANIFOLD'):   # points of the ball and scalars: kept whole on every rank under FSDP2
            from bytropix.training.distributed import replicated_parameters
            torch.save([p.detach().clone() for p in replicated_parameters(self.model)], f"{os.environ['BYT_MANIFOLD']}/rank{rank}.pt")
        return finish_fn(self, elapsed)
    Trainer.train_step, Trainer._finish = train_step, _finish
    from bytropix.cli import main
    sys.exit(main(sys.argv[1:]))
''')


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp('dist')
    words = 'the quick brown fox jumps over a lazy dog while seven hyperbolic owls count tokens'.split()
    g = torch.Generator().manual_seed(0)
    lines = [' '.join(words[i] for i in torch.randint(0, len(words), (10,), generator=g).tolist()) for _ in range(400)]
    (d/'data.txt').write_text('\n'.join(lines))
    (d/'child.py').write_text(CHILD)
    return d


def cfg(data: Path, arch: str = 'gpt', **train) -> list[str]:
    model = {'gpt': ['--model.n_layer', '2', '--model.n_head', '2', '--model.n_embd', '32'],
             'bdh': ['--model.n_layer', '2', '--model.n_head', '2', '--model.n_embd', '32', '--model.dropout', '0'],
             'wubu': ['--model.n_layer', '1', '--model.n_head', '2', '--model.n_embd', '32', '--model.embedding', 'hyperbolic']}[arch]
    t = {**dict(steps=20, batch_size=4, block_size=16, lr=3e-3, warmup_steps=0, eval_interval=0, eval_batches=2, log_interval=1,
                save_interval=10, keep_last=0, sample_interval=0, tensorboard='false', device='cpu', seed=1), **train}
    return ['--arch', arch, *model, '--data.source', str(data/'data.txt'), '--data.sample_by', 'line',
            '--data.validation_fraction', '0.1', *[a for k, v in t.items() for a in (f'--train.{k}', str(v))]]


def train(data: Path, out: Path, args: list[str], nproc: int = 1, env: dict | None = None, timeout: float = 240,
          check: bool = True, how: str = 'child') -> subprocess.CompletedProcess:
    """`bytropix train` on `nproc` torchrun processes: through the fault-injecting child (`how='child'`), as the
    documented `torchrun --nproc-per-node N -m bytropix train ...` (`'module'`), or as `bytropix train ... --nproc N`
    (`'flag'`: the CLI starts torchrun's engine itself)."""
    argv = ['train', *args, '--out_dir', str(out), '--no-progress', '--sample-tokens', '0']
    launcher = [] if nproc == 1 or how == 'flag' else ['-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', str(nproc)]
    script = ['-m', 'bytropix'] if how != 'child' else [str(data/'child.py')]
    if how == 'flag': argv += ['--nproc', str(nproc)]
    r = subprocess.run([sys.executable, *launcher, *script, *argv], capture_output=True, text=True,
                       env={**ENV, **(env or {})}, timeout=timeout, cwd=ROOT)
    if check: assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def train_here(out: Path, args: list[str]) -> str:
    "`bytropix train` in this process (one-process references: no interpreter to start); returns what it printed."
    from bytropix.cli import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(['train', *args, '--out_dir', str(out), '--no-progress', '--sample-tokens', '0'], out=buf)
    assert code == 0, buf.getvalue()[-3000:]
    return buf.getvalue()


def losses(out: Path) -> list[float]:
    import json
    return [r['train/loss'] for r in map(json.loads, (out/'metrics.jsonl').read_text().splitlines()) if 'train/loss' in r]


def weights(out: Path) -> dict:
    return load_file(str(out/'export'/'model.safetensors'))


def assert_close(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= tol, worst


def assert_same_run(ref: Path, out: Path, tol: float = 1e-5) -> None:
    "Losses of every step and final weights within `tol` (0: bit for bit)."
    la, lb = losses(ref), losses(out)
    assert len(la) == len(lb) and max(abs(a - b) for a, b in zip(la, lb)) <= tol, (la, lb)
    assert_close(weights(ref), weights(out), tol)


def restart_from(run: Path, to: Path, step: int = 10) -> Path:
    "A copy of `run` as it was after its checkpoint at `step` (later checkpoints, best and export removed)."
    shutil.copytree(run, to)
    for d in [*(to/'checkpoints').glob('step-*'), to/'best', to/'export']:
        if d.exists() and (not d.name.startswith('step-') or int(d.name.split('-')[1].split('.')[0]) > step): shutil.rmtree(d)
    return to


@pytest.fixture(scope='module')
def one_process(data) -> Path:
    "The reference: one process, global batch 4, 20 steps."
    train_here(data/'one', cfg(data))
    return data/'one'


@pytest.fixture(scope='module')
def wubu_one(data) -> Path:
    "The wubu reference: one process, global batch 4, 20 steps."
    train_here(data/'wubu1', cfg(data, 'wubu'))
    return data/'wubu1'


@pytest.fixture(scope='module')
def ddp_run(data) -> SimpleNamespace:
    """2 ranks × 2 rows under DDP (the default on several processes), checkpoint at step 10; rank 1 is SIGKILLed after
    step 13, then the run resumes on 2 ranks. Also keeps a copy at step 10 (for 2 → 1) and the losses logged before the kill."""
    out = data/'ddp'
    r = train(data, out, cfg(data), nproc=2, env={'BYT_KILL': '1@13'}, check=False)
    assert r.returncode != 0 and (out/'checkpoints'/'step-10'/'state.json').is_file(), r.stderr[-3000:]
    assert not (out/'checkpoints'/'step-20').exists()
    before = losses(out)
    at10 = restart_from(out, data/'ddp-at10')
    train(data, out, [*cfg(data), '--resume'], nproc=2)
    return SimpleNamespace(out=out, before_kill=before, at10=at10)


def test_ddp_equals_one_process(one_process, ddp_run):
    assert_same_run(one_process, ddp_run.out)
    st = (ddp_run.out/'checkpoints'/'step-10'/'state.json').read_text()
    assert '"world_size": 2' in st and '__1_0.distcp' in st   # every rank wrote its part
    assert not list(ddp_run.out.glob('checkpoints/*.tmp-*'))


def test_sigkill_one_rank_then_resume_bit_exact(ddp_run):
    "The steps after the checkpoint that ran before the kill are repeated bit for bit by the resumed run."
    after = losses(ddp_run.out)
    assert len(ddp_run.before_kill) >= 12 and ddp_run.before_kill[10:] == after[10:len(ddp_run.before_kill)]
    assert ddp_run.before_kill[:10] == after[:10]


def test_resume_2_to_1_and_export(data, one_process, ddp_run, tmp_path):
    "A sharded checkpoint of 2 ranks continues in one process exactly like the uninterrupted one-process run."
    out = restart_from(ddp_run.at10, tmp_path/'r')
    printed = train_here(out, [*cfg(data), '--resume'])
    assert 'resumed from' in printed and 'step-10' in printed
    assert_same_run(one_process, out)
    # a sharded checkpoint read in a plain process (`load_trained`, what `bytropix export/evaluate/generate` use) holds
    # the weights the run exported; `bytropix export --format hf` converts it (and checks the logits itself)
    from bytropix.cli import main
    from bytropix.training.run import load_trained
    model, _, _ = load_trained(ddp_run.out, 'latest', device='cpu')
    assert_close(weights(ddp_run.out), {k: v for k, v in model.state_dict().items() if k in weights(ddp_run.out)}, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(['export', str(ddp_run.out), '--checkpoint', 'latest', '--format', 'hf', '--out', str(tmp_path/'hf')]) == 0
    assert (tmp_path/'hf'/'model.safetensors').is_file()


def test_resume_1_to_2_fsdp(data, one_process, tmp_path):
    """A one-process checkpoint continues on 2 ranks under FSDP2 (whole tensors → each rank's shards) like the
    uninterrupted run; launched as `bytropix train ... --nproc 2` (torchrun's engine running `python -m bytropix`)."""
    out = restart_from(one_process, tmp_path/'uf')
    train(data, out, [*cfg(data), '--resume', '--train.parallel', 'fsdp'], nproc=2, how='flag')
    assert_same_run(one_process, out)


@pytest.mark.parametrize('parallel', ['ddp', 'fsdp'])
def test_wubu_equals_one_process_manifold_identical(data, wubu_one, parallel, tmp_path):
    "wubu with points of the Poincaré ball (Riemannian Adam) and scalar curvatures, under DDP and under FSDP2."
    (tmp_path/'m').mkdir()
    train(data, tmp_path/'w2', [*cfg(data, 'wubu'), '--train.parallel', parallel], nproc=2, env={'BYT_MANIFOLD': str(tmp_path/'m')})
    assert_same_run(wubu_one, tmp_path/'w2')
    m0, m1 = (torch.load(tmp_path/'m'/f'rank{r}.pt') for r in (0, 1))
    assert len(m0) > 3 and all(torch.equal(a, b) for a, b in zip(m0, m1))   # bit-identical on both ranks
    points = [p for p in m0 if p.ndim == 2]
    assert points and all((p.norm(dim=-1) < 1).all() for p in points)   # still inside the unit ball (c = 1)


@pytest.fixture(scope='module')
def stream_fail(data) -> SimpleNamespace:
    "2 ranks reading a streamed text file, a checkpoint every 2 steps; rank 1 raises in step 5."
    out, t0 = data/'stream-fail', time.monotonic()
    r = train(data, out, cfg(data, steps=8, save_interval=2, dist_timeout=60) + ['--data.streaming', 'true'], nproc=2,
              env={'BYT_RAISE': '1@5'}, check=False)
    return SimpleNamespace(out=out, r=r, seconds=time.monotonic() - t0)


def test_failing_rank_ends_the_job(stream_fail):
    r = stream_fail.r
    assert r.returncode != 0 and stream_fail.seconds < 120
    err = r.stdout + r.stderr
    assert err.count('injected failure on rank 1 at step 5') == 1, err[-3000:]
    assert 'raise DataError' not in err   # one line from the failing rank (torchrun adds its own summary), no rank's traceback


def test_streaming_ranks_read_their_own_documents(stream_fail):
    "Each rank tokenizes only its documents of the stream (r, r + 2, ...), and the checkpoint holds every rank's position."
    from bytropix.training.checkpoint import TRAINING_STATE_FILE
    st = torch.load(stream_fail.out/'checkpoints'/'step-4'/TRAINING_STATE_FILE, weights_only=True)
    loaders = [r['loader'] for r in st['ranks']]
    assert [(s['rank'], s['world_size']) for s in loaders] == [(0, 2), (1, 2)]
    assert all(s['examples'] > 0 and s['batches'] == 4 for s in loaders)
    assert [s['rank'] for s in st['loader']['ranks']] == [0, 1]   # what a resume on another world size reads
    assert not (stream_fail.out/'checkpoints'/'step-6').exists()


# -- BYTROPIX_SLOW=1 --

@pytest.fixture(scope='module')
def ddp_uninterrupted(data) -> Path:
    train(data, data/'ddp-u', cfg(data), nproc=2)
    return data/'ddp-u'


@slow
def test_sigkill_resume_equals_uninterrupted_bit_for_bit(ddp_run, ddp_uninterrupted):
    assert_same_run(ddp_uninterrupted, ddp_run.out, 0.0)


@slow
def test_fsdp_equals_one_process(data, one_process, tmp_path):
    train(data, tmp_path/'fsdp', [*cfg(data), '--train.parallel', 'fsdp'], nproc=2)
    assert_same_run(one_process, tmp_path/'fsdp')


@slow
def test_bdh_fsdp_equals_one_process(data, tmp_path):
    train_here(tmp_path/'b1', cfg(data, 'bdh'))
    train(data, tmp_path/'b2', [*cfg(data, 'bdh'), '--train.parallel', 'fsdp'], nproc=2)
    assert_same_run(tmp_path/'b1', tmp_path/'b2')


@slow
def test_resume_1_to_2_ddp(data, one_process, tmp_path):
    "1 → 2 under DDP, launched as the documented `torchrun --nproc-per-node 2 -m bytropix train ...`."
    out = restart_from(one_process, tmp_path/'u')
    train(data, out, [*cfg(data), '--resume'], nproc=2, how='module')
    assert_same_run(one_process, out)


@slow
def test_bad_inputs_one_line(data, tmp_path):
    r = train(data, tmp_path/'b', cfg(data, batch_size=3), nproc=2, check=False)
    assert r.returncode != 0
    lines = [l for l in (r.stdout + r.stderr).splitlines() if 'error:' in l]
    assert len(lines) == 1 and 'not divisible by the 2 processes' in lines[0], r.stderr[-2000:]
    assert not (tmp_path/'b'/'checkpoints').exists()


@slow
def test_unreachable_rendezvous_one_line(data, tmp_path):
    "A rank that cannot reach the rendezvous fails after `dist_timeout` with one line naming the address; nothing is written."
    env = {**ENV, 'RANK': '1', 'WORLD_SIZE': '2', 'LOCAL_RANK': '1', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': '9'}
    r = subprocess.run([sys.executable, '-m', 'bytropix', 'train', *cfg(data, dist_timeout=2), '--out_dir', str(tmp_path/'z')],
                       capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.startswith('bytropix train: error:')]
    assert len(lines) == 1 and 'cannot join the process group at 127.0.0.1:9' in lines[0], r.stderr[-2000:]
    assert not (tmp_path/'z').exists()


@slow
def test_ddp_with_grad_accum_equals_one_process(data, tmp_path):
    "Accumulation composes: the all-reduce runs in the last micro-batch's backward only, the result is unchanged."
    args = cfg(data, steps=6, grad_accum=2, save_interval=0)
    train_here(tmp_path/'a1', args)
    train(data, tmp_path/'a2', args, nproc=2)
    assert_same_run(tmp_path/'a1', tmp_path/'a2')


@slow
def test_streaming_resume_bit_exact_and_on_one_process(data, tmp_path):
    "A streamed run resumes bit for bit on 2 ranks, and continues on one process (from the first unread document)."
    args = cfg(data, steps=6, save_interval=3) + ['--data.streaming', 'true']
    train(data, tmp_path/'s', args, nproc=2)
    out, one = restart_from(tmp_path/'s', tmp_path/'s2', 3), restart_from(tmp_path/'s', tmp_path/'s1', 3)
    train(data, out, [*args, '--resume'], nproc=2)
    assert_same_run(tmp_path/'s', out, 0.0)
    printed = train_here(one, [*args, '--resume'])
    assert 'resumed from' in printed and len(losses(one)) == 6

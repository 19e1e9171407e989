"""`train.compile: true` end to end: the same losses as eager training, evaluation, checkpoints that load uncompiled,
and a resume that compiles again and continues where the run stopped."""
import json
import re
from pathlib import Path

import pytest

from bytropix.cli import main
from bytropix.training.run import RunDir

TINY = ['--model.n_layer', '2', '--model.n_embd', '32', '--model.n_head', '2', '--train.batch_size', '4',
        '--train.block_size', '32', '--train.eval_batches', '2', '--train.tensorboard', 'false', '--no-progress',
        '--data.max_train_tokens', '50000', '--data.max_val_tokens', '5000', '--train.warmup_steps', '2',
        '--train.num_threads', '1', '--train.log_interval', '1', '--sample-tokens', '0']


def train(*argv) -> int: return main(['train', *map(str, argv)])


def losses(run: Path) -> dict[int, float]:
    recs = [json.loads(l) for l in RunDir(run).metrics_file.read_text().splitlines()]
    return {r['step']: r['train/loss'] for r in recs if 'train/loss' in r}


def val_bpb(run: Path) -> float:
    recs = [json.loads(l) for l in RunDir(run).metrics_file.read_text().splitlines()]
    return [r['val/bpb'] for r in recs if 'val/bpb' in r][-1]


def test_compiled_training_matches_eager_and_resumes(tmp_path, capsys):
    common = ['--train.steps', '6', '--train.eval_interval', '3', '--train.save_interval', '3', *TINY]
    assert train('--out_dir', tmp_path/'eager', *common) == 0
    capsys.readouterr()
    assert train('--out_dir', tmp_path/'compiled', *common, '--train.compile', 'true') == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith('step ')]
    # the first step compiles: its line gives no ETA, and the next ones count from its end (the compilation counted
    # in, step 2 read several seconds for four steps of a few milliseconds)
    assert lines[0].startswith('step 1/6') and lines[0].endswith('ETA …'), lines
    eta = re.fullmatch(r'step 2/6 \|.*\| ETA (\d+)s', lines[1])   # 4 steps of milliseconds left (the compilation,
    assert eta and int(eta[1]) <= 3, lines                            # counted in, made it ≥ 10 s)
    eager, compiled = losses(tmp_path/'eager'), losses(tmp_path/'compiled')
    assert sorted(eager) == sorted(compiled) == list(range(1, 7))
    for s in eager: assert compiled[s] == pytest.approx(eager[s], rel=1e-4), (s, eager, compiled)
    assert val_bpb(tmp_path/'compiled') == pytest.approx(val_bpb(tmp_path/'eager'), rel=1e-4)
    # stopped at step 3 and resumed, compiled both times: the same steps 4-6 as the run that went through
    part = tmp_path/'resumed'
    assert train('--out_dir', part, *common, '--train.compile', 'true', '--train.steps', '3') == 0
    assert train('--out_dir', part, *common, '--train.compile', 'true', '--resume') == 0
    resumed = losses(part)
    for s in (4, 5, 6): assert resumed[s] == pytest.approx(compiled[s], rel=1e-4), (s, resumed, compiled)
    capsys.readouterr()
    for run in (tmp_path/'eager', tmp_path/'compiled'):   # checkpoints of a compiled run load like any other
        assert main(['generate', str(run), '--prompt', 'def ', '--max-new-tokens', '8', '--temperature', '0']) == 0
    out = capsys.readouterr().out.split('\n')
    assert out[0].startswith('def ')


def test_wubu_compiles_block_by_block_with_the_eager_numbers(tmp_path):
    "WuBu names its blocks as compile regions: the training step runs them compiled, evaluation the eager model."
    from torch._dynamo.eval_frame import OptimizedModule

    from bytropix.config import load_config
    from bytropix.training.trainer import Trainer
    ov = {'arch': 'wubu', 'model.n_layer': 2, 'model.n_embd': 32, 'model.n_head': 2, 'model.level_dims': [16, 8],
          'train.batch_size': 4, 'train.block_size': 32, 'train.steps': 4, 'train.eval_interval': 2, 'train.eval_batches': 2,
          'train.log_interval': 1, 'train.num_threads': 1, 'train.sample_interval': 0, 'train.tensorboard': False,
          'data.max_train_tokens': 50000, 'data.max_val_tokens': 5000}
    got = {}
    for compiled in (False, True):
        out = tmp_path/str(compiled)
        tr = Trainer(load_config(overrides={**ov, 'train.compile': compiled, 'out_dir': str(out)}), log=None, progress=False)
        tr.fit()
        got[compiled] = (losses(out), val_bpb(out))
        if compiled:
            assert all(isinstance(b, OptimizedModule) for b in tr.train_model.blocks)
            assert not any(isinstance(b, OptimizedModule) for b in tr.model.blocks)
    (eager, eager_bpb), (comp, comp_bpb) = got[False], got[True]
    assert sorted(eager) == sorted(comp) == [1, 2, 3, 4]
    for s in eager: assert comp[s] == pytest.approx(eager[s], rel=1e-4), (s, eager, comp)
    assert comp_bpb == pytest.approx(eager_bpb, rel=1e-4)


def test_wubu_compiled_with_checkpointed_levels_and_autocast_takes_the_eager_gradients():
    "Per-level gradient checkpointing and bf16 autocast under train.compile: the rotations square as eager numbers say."
    import torch

    import bytropix.models.wubu  # noqa: F401
    from bytropix.models.base import build_model
    from bytropix.training.trainer import training_view
    torch.manual_seed(0)
    m = build_model('wubu', dict(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=16, level_dims=[16, 8]))
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.05)   # rotations off the identity: squarings to do
    m.gradient_checkpointing = True
    ids, tg = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    ps = [p for p in m.parameters() if p.requires_grad]
    def loss_and_grads(f):
        loss = f(ids, tg).loss
        return loss.detach(), torch.autograd.grad(loss, ps, allow_unused=True)
    view = training_view(m, 'blocks')
    (l0, g0), (l1, g1) = loss_and_grads(m), loss_and_grads(view)
    assert float(l1) == pytest.approx(float(l0), rel=1e-5)
    for a, b in zip(g0, g1):
        assert (a is None) == (b is None)
        if a is not None: torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    with torch.autocast('cpu', dtype=torch.bfloat16):   # bf16 autocast: the rotations square without torch.cond
        (l0, g0), (l1, g1) = loss_and_grads(m), loss_and_grads(view)
    assert float(l1) == pytest.approx(float(l0), rel=2e-2) and all(torch.isfinite(g).all() for g in g1 if g is not None)

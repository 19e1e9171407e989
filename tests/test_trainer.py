"""The trainer end to end on tiny models: schedules, gradient accumulation, non-finite steps, checkpoint pruning,
best tracking, averaging, precisions, AGC and Riemannian parameters."""
import json
import math
from pathlib import Path

import pytest
import torch

from lm_fixtures import SeqLoader, TokenData
import torch.nn as nn

import bytropix.models.gpt  # noqa: F401  (registers `gpt`)
from bytropix.config import RunConfig, load_config
from bytropix.core import NonFiniteError
from bytropix.models.base import MODELS, BytropixModel, ModelConfig, ModelOutput, lm_loss, register_model
from bytropix.training.checkpoint import average_checkpoints, load_checkpoint, save_average
from bytropix.training.run import RunDir
from bytropix.training.optim import lr_at
from bytropix.training.trainer import Trainer

V, T = 40, 12


def make_data(batch_size: int, seed: int = 0) -> TokenData:
    g = torch.Generator().manual_seed(seed)
    # learnable structure: each row counts up modulo V from a random start
    starts = torch.randint(0, V, (64, 1), generator=g)
    rows = (starts + torch.arange(T + 1)) % V
    val = (torch.randint(0, V, (8, 1), generator=g) + torch.arange(T + 1)) % V
    return TokenData(SeqLoader(rows, batch_size), lambda: iter([(val[:4, :-1], val[:4, 1:]), (val[4:, :-1], val[4:, 1:])]), vocab_size=V)


def make_run(tmp_path: Path, **train) -> RunConfig:
    over = {'model.n_layer': 1, 'model.n_head': 2, 'model.n_embd': 16, 'model.multiple_of': 16,
            'train.steps': 8, 'train.batch_size': 4, 'train.block_size': T, 'train.warmup_steps': 2,
            'train.lr': 1e-2, 'train.min_lr': 1e-3, 'train.log_interval': 1, 'train.eval_interval': 4,
            'train.save_interval': 4, 'train.sample_interval': 0, 'train.tensorboard': False,
            'train.num_threads': 1, 'out_dir': str(tmp_path / 'run')}
    over.update({f'train.{k}': v for k, v in train.items()})
    return load_config(None, over)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / 'metrics.jsonl').read_text().splitlines()]


def fit(run: RunConfig, data=None, **kw) -> tuple[Trainer, dict]:
    t = Trainer(run, data=data or make_data(run.train.batch_size), log=None, progress=False, **kw)
    return t, t.fit()


@pytest.mark.parametrize('schedule', ['cosine', 'linear', 'step', 'constant'])
def test_schedule_drives_the_logged_lr(tmp_path, schedule):
    run = make_run(tmp_path, schedule=schedule, step_size=3, gamma=0.5, eval_interval=0)
    fit(run)
    logged = [r['train/lr'] for r in records(Path(run.out_dir)) if 'train/lr' in r]
    tc = run.train
    want = [lr_at(t, lr=tc.lr, steps=tc.steps, warmup_steps=tc.warmup_steps, min_lr=tc.min_lr, schedule=schedule,
                  step_size=3, gamma=0.5) for t in range(tc.steps)]
    assert logged == pytest.approx(want, rel=1e-12)
    assert logged[0] == pytest.approx(tc.lr / 2)  # warm-up step 0 of 2


def test_grad_accumulation_matches_a_larger_batch(tmp_path):
    a, ma = fit(make_run(tmp_path / 'a', batch_size=2, grad_accum=2, eval_interval=0))
    b, mb = fit(make_run(tmp_path / 'b', batch_size=4, grad_accum=1, eval_interval=0))
    la = [r['train/loss'] for r in records(tmp_path / 'a/run') if 'train/loss' in r]
    lb = [r['train/loss'] for r in records(tmp_path / 'b/run') if 'train/loss' in r]
    assert la == pytest.approx(lb, abs=1e-5)
    for (n, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, atol=2e-5, rtol=1e-4, msg=n)
    assert ma['tokens'] == mb['tokens'] == 8 * 4 * T
    # and a smaller batch is genuinely different (the comparison above can fail)
    c, _ = fit(make_run(tmp_path / 'c', batch_size=2, grad_accum=1, eval_interval=0))
    assert not torch.allclose(next(c.model.parameters()), next(b.model.parameters()))


class FlakyGPT(nn.Module):
    "Wraps a model; the loss is NaN on the calls listed in `bad` (0-based forward calls in training mode)."
    def __init__(self, inner: BytropixModel, bad):
        super().__init__()
        self.inner, self.bad, self.calls = inner, set(bad), 0
        self.config, self.arch = inner.config, inner.arch

    def forward(self, ids, targets=None):
        out = self.inner(ids, targets)
        if self.training:
            if self.calls in self.bad or 'all' in self.bad: out.loss = out.loss * float('nan')
            self.calls += 1
        return out

    def num_parameters(self): return self.inner.num_parameters()
    def param_groups(self, wd): return self.inner.param_groups(wd)
    def manifold_parameters(self): return []
    def save_pretrained(self, d, **kw): return self.inner.save_pretrained(d, **kw)


def _gpt(run):
    from bytropix.models.base import build_model
    return build_model(run.arch, run.resolved(V).model_config)


def test_nonfinite_steps_are_skipped(tmp_path):
    run = make_run(tmp_path, eval_interval=0)
    model = FlakyGPT(_gpt(run), bad={2, 3})          # steps 3 and 4 (1-based) have a NaN loss
    snaps = {}
    cb = lambda t, s, r: snaps.__setitem__(s, [p.detach().clone() for p in t.model.parameters()])
    lines = []
    t = Trainer(run, model=model, data=make_data(4), log=lines.append, progress=False, callbacks=[cb])
    m = t.fit()
    assert m['skipped_steps'] == 2 and m['step'] == 8 and math.isfinite(m['val/loss'])
    for s in (3, 4):                                 # no update on a skipped step
        assert all(torch.equal(a, b) for a, b in zip(snaps[s - 1], snaps[s]))
    assert not all(torch.equal(a, b) for a, b in zip(snaps[4], snaps[5]))  # training goes on afterwards
    ev = [r for r in records(Path(run.out_dir)) if r.get('event') == 'skipped']
    assert [r['step'] for r in ev] == [3, 4] and ev[0]['train/loss'] == 'nan'
    assert sum('update skipped' in l for l in lines) == 2


def test_nonfinite_abort(tmp_path):
    run = make_run(tmp_path, max_nonfinite=3, eval_interval=0)
    t = Trainer(run, model=FlakyGPT(_gpt(run), bad={'all'}), data=make_data(4), log=None, progress=False)
    with pytest.raises(NonFiniteError, match='3 consecutive steps'):
        t.fit()
    assert t.step == 3


def test_keep_last_best_and_averaging(tmp_path):
    run = make_run(tmp_path, steps=12, save_interval=2, keep_last=2, eval_interval=3)
    scripted = iter([3.0, 1.0, 2.0, 2.5])           # val losses at steps 3, 6, 9, 12: best at step 6

    class Scripted(Trainer):
        def evaluate(self):
            r = super().evaluate(); r['val/loss'] = next(scripted); return r
    snaps = {}
    t = Scripted(run, data=make_data(4), log=None, progress=False,
                 callbacks=[lambda tr, s, r: snaps.__setitem__(s, {k: v.clone() for k, v in tr.model.state_dict().items()})])
    m = t.fit()
    out = Path(run.out_dir)
    assert [p.name for p in RunDir(out).checkpoints()] == ['step-10', 'step-12']
    best = json.loads((out / 'best/state.json').read_text())
    assert best['step'] == 6 and m['best/step'] == 6 and m['best/val_loss'] == 1.0
    probe = _gpt(run)
    load_checkpoint(out / 'best', probe)
    assert all(torch.equal(v, snaps[6][k]) for k, v in probe.state_dict().items())
    # best at a step without a periodic checkpoint is written directly (step 3 was best until 6, not saved as step-3)
    avg = average_checkpoints(RunDir(out).checkpoints())
    want = (snaps[10]['blocks.0.attn.qkv.weight'].double() + snaps[12]['blocks.0.attn.qkv.weight'].double()) / 2
    torch.testing.assert_close(avg['blocks.0.attn.qkv.weight'], want.float())
    from bytropix.models.base import load_weights
    load_weights(probe, save_average(RunDir(out).checkpoints(), out / 'avg.safetensors'))
    torch.testing.assert_close(probe.state_dict()['wte.weight'], (snaps[10]['wte.weight'] + snaps[12]['wte.weight']) / 2)


@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_mixed_precision_runs(tmp_path, precision):
    run = make_run(tmp_path, precision=precision, steps=4, eval_interval=0, save_interval=0)
    t, m = fit(run)
    assert math.isfinite(m['val/loss']) and m['val/loss'] < math.log(V) + 0.5
    assert t.scaler.is_enabled() == (precision == 'fp16')


def test_agc_and_clipping_are_applied(tmp_path):
    run = make_run(tmp_path, agc=0.001, clip_grad=0.01, steps=3, eval_interval=0, save_interval=0)
    fit(run)
    recs = [r for r in records(Path(run.out_dir)) if 'train/agc_clipped' in r]
    assert len(recs) == 3 and all(r['train/agc_clipped'] > 0 for r in recs)


@register_model('_test_ball')
class BallModel(BytropixModel):
    "Token embeddings on a Poincaré ball, scored by negative hyperbolic distance: a Riemannian-Adam test model."
    config_class = ModelConfig

    def __init__(self, config):
        super().__init__(config)
        import geoopt
        self.ball = geoopt.PoincareBall(c=1.0)
        self.points = geoopt.ManifoldParameter(self.ball.expmap0(torch.randn(config.vocab_size, 4) * 0.1), manifold=self.ball)
        self.query = nn.Embedding(config.vocab_size, 4)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, ids, targets=None):
        q = self.ball.expmap0(self.query(ids) * 0.1)                       # (B, T, 4)
        logits = -self.scale * self.ball.dist(q[..., None, :], self.points)  # (B, T, V)
        return ModelOutput(logits, None if targets is None else lm_loss(logits, targets))


def test_riemannian_parameters_stay_on_the_ball(tmp_path):
    run = make_run(tmp_path, steps=6, lr=0.3, riemannian_lr=0.5, eval_interval=0, save_interval=3, clip_grad=None)
    model = BallModel(ModelConfig(vocab_size=V, block_size=T))
    before = model.points.detach().clone()
    t = Trainer(run, model=model, data=make_data(4), log=None, progress=False)
    t.fit()
    assert sorted(t.optimizer.optimizers) == ['adamw', 'riemannian']
    pts = model.points.detach()
    assert not torch.equal(pts, before) and (pts.norm(dim=-1) < 1).all()
    torch.testing.assert_close(model.ball.projx(pts), pts)

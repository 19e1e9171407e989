"""Muon and the warmup-stable-decay schedule through the real trainer: training lowers the loss, resume is bit-exact
(Muon's momentum buffers are part of the checkpoint), and a resume that switches optimizer is refused clearly."""
import json

import pytest
import torch
from safetensors.torch import load_file

import bytropix.models.gpt  # noqa: F401  (registers `gpt`)
from bytropix.config import load_config
from bytropix.core import BytropixError
from bytropix.training.trainer import Trainer


def _run(out, steps, *extra):
    return load_config(None, [
        f'out_dir={out}', 'model.n_layer=2', 'model.n_head=2', 'model.n_embd=32', f'train.steps={steps}',
        'train.batch_size=4', 'train.block_size=32', 'train.warmup_steps=0', 'train.lr=3e-3', 'train.log_interval=1',
        'train.eval_interval=0', 'train.eval_batches=2', 'train.save_interval=3', 'train.keep_last=0',
        'train.sample_interval=0', 'train.num_threads=1', 'train.tensorboard=false', 'train.seed=3', *extra])


def _fit(run, resume=False):
    t = Trainer(run, resume=resume, log=None, progress=False)
    t.fit()
    return t


def _final(out):
    return load_file(str(sorted((out / 'checkpoints').glob('step-*'), key=lambda p: int(p.name[5:]))[-1] / 'model.safetensors'))


@pytest.mark.parametrize('opt', ['muon', 'adamw'])
def test_resume_is_bit_exact(tmp_path, opt):
    kw = ('train.schedule=constant', f'train.optimizer={opt}')
    ref = _fit(_run(tmp_path / 'ref', 12, *kw))
    _fit(_run(tmp_path / 'cut', 6, *kw))
    resumed = _fit(_run(tmp_path / 'cut', 12, *kw), resume=True)
    if opt == 'muon':
        assert set(ref.optimizer.optimizers) == {'adamw', 'muon'}
        assert ref.optimizer.optimizers['muon'].state, "Muon keeps momentum buffers"
    a, b = _final(tmp_path / 'ref'), _final(tmp_path / 'cut')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.step == 12


def test_muon_wsd_trains(tmp_path):
    t = _fit(_run(tmp_path / 'm', 30, 'train.optimizer=muon', 'train.schedule=wsd', 'train.decay_fraction=0.3',
                  'train.warmup_steps=3', 'train.min_lr=3e-4'))
    recs = [json.loads(l) for l in (tmp_path / 'm' / 'metrics.jsonl').read_text().splitlines()]
    losses = [r['train/loss'] for r in recs if 'train/loss' in r]
    lrs = [r['train/lr'] for r in recs if 'train/lr' in r]
    assert losses[-1] < losses[0] - 0.5, losses
    assert lrs[3:20] == [pytest.approx(3e-3)] * 17 and lrs[-1] < 1e-3, lrs    # stable, then the decay


def test_switching_optimizer_on_resume_is_refused(tmp_path):
    _fit(_run(tmp_path / 'r', 3, 'train.optimizer=adamw'))
    with pytest.raises(BytropixError, match='train.optimizer'):
        _fit(_run(tmp_path / 'r', 6, 'train.optimizer=muon'), resume=True)


def test_bad_settings_name_the_field():
    for bad, field in [('train.optimizer=sgd', 'optimizer'), ('train.decay_fraction=0', 'decay_fraction'),
                       ('train.muon_momentum=1.0', 'muon_momentum')]:
        with pytest.raises(BytropixError, match=field):
            _run('/tmp/never', 3, bad)
    with pytest.raises(BytropixError, match='parallel: ddp'):
        _run('/tmp/never', 3, 'train.optimizer=muon', 'train.parallel=fsdp')


def test_muon_on_a_model_without_linear_layers_is_refused():
    "BDH keeps its weights as plain parameters: `optimizer: muon` would silently be AdamW, so it is refused by name."
    from types import SimpleNamespace
    from bytropix.models.base import build_model
    from bytropix.training.optim import build_optimizer
    m = build_model('bdh', vocab_size=64, block_size=16, n_layer=1, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4)
    tc = SimpleNamespace(optimizer='muon', lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8, muon_momentum=0.95)
    with pytest.raises(BytropixError, match='train.optimizer: muon'):
        build_optimizer(m, tc)

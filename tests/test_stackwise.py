"""StackWise end to end: `bytropix train configs/stackwise.yaml` (4 stages, masked diffusion) then eval, export, reload and
generate; bit-exact resumption mid-stage and at a stage boundary (LoRA, QLoRA, prepend, dual-LoRA and the trunk cache);
impossible schedules refused with one line naming the field, before any work."""
import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bytropix.models.gpt  # noqa: F401  (registers `gpt`)
from bytropix.cli import main
from bytropix.config import RunConfig, load_config
from bytropix.core import ConfigError
from bytropix.models.base import BytropixModel
from bytropix.training.trainer import Trainer, TrainingInterrupted

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--model.n_layer', '4', '--model.n_embd', '32', '--model.n_head', '2', '--train.batch_size', '4',
        '--train.block_size', '16', '--train.eval_batches', '2', '--train.tensorboard', 'false', '--no-progress',
        '--data.max_train_tokens', '20000', '--data.max_val_tokens', '2000', '--train.warmup_steps', '1',
        '--task_options.eval_points', '2', '--train.eval_interval', '3', '--train.save_interval', '3']
STAGES = '{stack_size: 1, stages: [{steps: 3}, {steps: 3, trunk: lora}, {steps: 3, trunk: qlora}, {steps: 3, trunk: lora}]}'


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_stackwise_cli_end_to_end(tmp_path, capsys):
    "configs/stackwise.yaml at tiny size: 4 stages grow 1 → 4 blocks; eval, export, from_pretrained, generate."
    out = tmp_path/'sw'
    rc, text, err = run(capsys, 'train', ROOT/'configs'/'stackwise.yaml', '--out_dir', out, '--train.steps', '12', *TINY,
                        '--train.stackwise', STAGES, '--sample-tokens', '8')
    assert rc == 0, text + err
    for i in range(1, 5): assert f'stackwise stage {i}/4: {i} blocks' in text, text
    assert 'trunk qlora (nf4)' in text and 'done: step 12' in text
    for s in (3, 6, 9): assert (out/'checkpoints'/f'step-{s}').is_dir() or s < 9   # stage boundaries are checkpoints
    from bytropix.training.checkpoint import is_delta
    ckpts = sorted((out/'checkpoints').glob('step-*'))
    assert ckpts and all(is_delta(c) for c in ckpts)     # configs/stackwise.yaml writes delta checkpoints
    assert any((out/'objects').iterdir())
    rc, text, err = run(capsys, 'eval', out, '--json')
    assert rc == 0, err
    assert 5 < json.loads(text)['bpb'] < 12
    m = BytropixModel.from_pretrained(out/'export')
    assert m.config.n_layer == 4 and m.config.causal is False and not hasattr(m, 'peft')
    rc, text, err = run(capsys, 'generate', out/'export', '--prompt', 'def ', '--max-new-tokens', '8', '--steps', '4',
                        '--temperature', '0')
    assert rc == 0 and text.startswith('def '), err


SCHEDULES = {
    # LoRA and QLoRA on the trunk, a prepended stack, dual-LoRA (the new stack trained through adapters), embeddings LoRA
    'mixed': [{'steps': 4}, {'steps': 4, 'trunk': 'lora'}, {'steps': 4, 'add': 'prepend', 'trunk': 'qlora', 'embeddings': 'lora'},
              {'steps': 4, 'new_stack': 'lora', 'trunk': 'qlora'}],
    # the frozen-trunk activation cache (memory) in stages 2-4
    'cached': [{'steps': 4}] + [{'steps': 4, 'embeddings': 'frozen'}] * 3,
}


def _run(out: Path, schedule: str, cache: str = 'off') -> RunConfig:
    d = load_config(None, [f'out_dir={out}', 'task=mdlm', 'model.n_layer=4', 'model.n_head=2', 'model.n_embd=32',
                           'model.causal=false', 'model.tie_embeddings=false', 'train.steps=16', 'train.batch_size=4',
                           'train.block_size=16', 'train.warmup_steps=1', 'train.log_interval=1', 'train.eval_interval=3',
                           'train.eval_batches=2', 'train.save_interval=5', 'train.keep_last=0', 'train.sample_interval=0',
                           'train.tensorboard=false', 'train.seed=5', 'task_options.eval_points=2', 'data.max_train_tokens=200',
                           'data.max_val_tokens=200']).to_dict()
    d['train']['stackwise'] = {'stack_size': 1, 'stages': SCHEDULES[schedule], 'cache': cache, 'lora_r': 2, 'cache_variants': 1}
    return RunConfig.from_dict(d)


def _stop_at(step: int):
    def cb(trainer, s, rec):
        if s == step: trainer._stop = signal.SIGTERM   # what the signal handler sets: checkpoint this step, then stop
    return cb


def _records(out: Path) -> list[dict]:
    drop = {'train/tokens_per_s', 'time_s', 'sys/memory_mb'}
    return [{k: v for k, v in json.loads(l).items() if k not in drop} for l in (out/'metrics.jsonl').read_text().splitlines()]


@pytest.mark.parametrize('schedule,cache,stop', [('mixed', 'off', 10), ('mixed', 'off', 8), ('cached', 'memory', 6),
                                                 ('cached', 'disk', 12)])
def test_resume_is_bit_exact(tmp_path, schedule, cache, stop):
    "Stopped mid-stage (10, 6) or at a stage boundary (8, 12) and resumed: weights and metrics equal the uninterrupted run's."
    kw = dict(log=None, progress=False)
    Trainer(_run(tmp_path/'a', schedule, cache), **kw).fit()
    with pytest.raises(TrainingInterrupted) as e: Trainer(_run(tmp_path/'b', schedule, cache), callbacks=[_stop_at(stop)], **kw).fit()
    assert e.value.step == stop
    Trainer(_run(tmp_path/'b', schedule, cache), resume=True, **kw).fit()
    a, b = (load_file(str(p/'checkpoints'/'step-16'/'model.safetensors')) for p in (tmp_path/'a', tmp_path/'b'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    hits = lambda rs: [{k: v for k, v in r.items() if k != 'stackwise/cache_hit_rate'} for r in rs]
    # a memory cache starts empty after the restart (it refills: the same values, recomputed); a disk cache persists
    assert (hits if cache == 'memory' else list)(_records(tmp_path/'a')) == (hits if cache == 'memory' else list)(_records(tmp_path/'b'))
    ea, eb = (load_file(str(p/'export'/'model.safetensors')) for p in (tmp_path/'a', tmp_path/'b'))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    if cache != 'off': assert any('stackwise/cache_hit_rate' in r and r['stackwise/cache_hit_rate'] > 0 for r in _records(tmp_path/'a'))


def test_resume_into_another_schedule_is_refused(tmp_path):
    Trainer(_run(tmp_path/'a', 'cached'), log=None, progress=False).fit()
    d = _run(tmp_path/'a', 'cached').to_dict()
    d['train']['stackwise']['stages'][1]['lr'] = 1e-3
    with pytest.raises(ConfigError, match=r'train\.stackwise\.stages'): Trainer(RunConfig.from_dict(d), resume=True, log=None).fit()


BAD = [
    ({'stack_size': 3}, 'train.stackwise.stack_size', 'does not divide'),
    ({'stages': [{'steps': 4}] * 3}, 'train.stackwise.stages', 'set model.n_layer: 3'),
    ({'cache': 'memory', 'stages': [{'steps': 4}, {'steps': 4, 'add': 'prepend', 'embeddings': 'frozen'}] * 2},
     'train.stackwise.stages[1].add', 'prepend'),
    ({'cache': 'memory'}, 'train.stackwise.stages[1].embeddings', 'trunk cache'),
    ({'cache': 'disk', 'stages': [{'steps': 4}] + [{'steps': 4, 'trunk': 'lora', 'embeddings': 'frozen'}] * 3},
     'train.stackwise.stages[1].trunk', 'trunk: lora changes the trunk'),
    ({'stages': [{'steps': 4, 'trunk': 'qlora', 'trunk_format': 'int8'}] * 4}, 'train.stackwise.stages[0].trunk_format', 'nf4'),
    ({'stages': [{'steps': 4}, {'steps': 4, 'embedings': 'frozen'}] * 2}, 'train.stackwise.stages[1].embedings', 'embeddings'),
    ({'stages': [{'steps': 5}] * 4}, 'train.steps', 'set train.steps: 20'),
]


@pytest.mark.parametrize('change,field,words', BAD)
def test_impossible_schedules(tmp_path, capsys, change, field, words):
    "One line naming the field and the fix, exit status 2, nothing written."
    sw = {'stack_size': 1, 'stages': [{'steps': 4}] * 4, **change}
    rc, text, err = run(capsys, 'train', ROOT/'configs'/'stackwise.yaml', '--out_dir', tmp_path/'r', *TINY,
                        '--train.steps', '16', '--train.stackwise', json.dumps(sw))
    assert rc == 2 and f'`{field}' in err and words in err and 'Traceback' not in err, err
    assert len(err.strip().splitlines()) == 1 and 'does not match' not in err, err
    assert not (tmp_path/'r').exists()


def test_value_embeddings_are_refused(tmp_path, capsys):
    sw = {'stack_size': 1, 'stages': [{'steps': 4}] * 4}
    rc, text, err = run(capsys, 'train', ROOT/'configs'/'stackwise.yaml', '--out_dir', tmp_path/'r', *TINY,
                        '--train.steps', '16', '--train.stackwise', json.dumps(sw), '--model.value_embeds', '1')
    assert rc == 2 and '`model.value_embeds`' in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path/'r').exists()


def test_adapters_on_a_missing_module_and_tied_embeddings(tmp_path, capsys):
    sw = {'stack_size': 1, 'stages': [{'steps': 4}, {'steps': 4, 'trunk': 'lora'}] * 2, 'adapter_target': ['qkvv']}
    rc, text, err = run(capsys, 'train', ROOT/'configs'/'stackwise.yaml', '--out_dir', tmp_path/'r', *TINY,
                        '--train.steps', '16', '--train.stackwise', json.dumps(sw))
    assert rc == 2 and '`train.stackwise.adapter_target`' in err and "'qkvv'" in err and 'Traceback' not in err, err
    sw = {'stack_size': 1, 'stages': [{'steps': 4}, {'steps': 4, 'embeddings': 'lora'}] * 2}
    rc, text, err = run(capsys, 'train', ROOT/'configs'/'stackwise.yaml', '--out_dir', tmp_path/'t', *TINY,
                        '--train.steps', '16', '--model.tie_embeddings', 'true', '--train.stackwise', json.dumps(sw))
    assert rc == 2 and '`train.stackwise.stages[1].embeddings`' in err and 'head' in err, err


slow = pytest.mark.skipif(__import__('os').environ.get('BYTROPIX_SLOW') != '1', reason='long: runs with BYTROPIX_SLOW=1')

CHILD = '''
import sys, time
sys.path.insert(0, sys.argv[4])
from tests.test_stackwise import _run
from bytropix.training.trainer import Trainer
delay = float(sys.argv[3])
cb = [lambda t, s, r: time.sleep(delay)] if delay else []
Trainer(_run(__import__('pathlib').Path(sys.argv[1]), 'mixed'), resume=sys.argv[2] == '1', callbacks=cb, log=None, progress=False).fit()
'''


@slow
def test_sigkill_mid_stage_two_resumes_bit_exact(tmp_path):
    "A StackWise run killed with SIGKILL in stage 2 (after its step-5 checkpoint) and resumed equals the uninterrupted run."
    import os, subprocess, sys, time
    script = tmp_path/'child.py'
    script.write_text(CHILD)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0', 'PYTHONPATH': str(ROOT)}
    go = lambda out, resume, delay: subprocess.Popen([sys.executable, str(script), str(out), resume, str(delay), str(ROOT)],
                                                     env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ref, killed = go(tmp_path/'a', '0', 0), go(tmp_path/'b', '0', 0.3)
    assert ref.wait(300) == 0, ref.communicate()[0]
    deadline = time.monotonic() + 300
    while not (tmp_path/'b'/'checkpoints'/'step-5'/'state.json').is_file():
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[0]
        time.sleep(0.02)
    time.sleep(0.5)   # into step 6 or 7: mid-stage 2 (steps 5-8)
    killed.send_signal(signal.SIGKILL); killed.wait()
    resumed = go(tmp_path/'b', '1', 0)
    assert resumed.wait(300) == 0, resumed.communicate()[0]
    a, b = (load_file(str(p/'export'/'model.safetensors')) for p in (tmp_path/'a', tmp_path/'b'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _records(tmp_path/'a') == _records(tmp_path/'b')


def test_lm_task_cached_stage_equals_the_full_model():
    "Task lm works too: no corruption, one cache entry per example; cached loss = recomputed = the whole model's loss."
    from bytropix.training.stackwise import CachedTrunkObjective, StackRack, TrunkCache
    d = load_config(None, ['task=lm', 'model.n_layer=2', 'model.n_head=2', 'model.n_embd=32', 'model.tie_embeddings=false',
                           'train.steps=4', 'train.block_size=16']).to_dict()
    d['train']['stackwise'] = {'stack_size': 1, 'cache': 'memory', 'stages': [{'steps': 2}, {'steps': 2, 'embeddings': 'frozen'}]}
    rack = StackRack(RunConfig.from_dict(d).resolved(256))
    m = rack.build(1, rack.build(0)).train()
    obj = CachedTrunkObjective(m, range(0, 1), range(1, 2), TrunkCache('memory'))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (3, 16), generator=g), torch.randint(0, 256, (3, 16), generator=g)
    a, b = m(x, y).loss, m(x, y).loss
    assert obj.cache.misses == 3 and obj.cache.hits == 3 and torch.equal(a, b)
    assert torch.allclose(a, obj._forward(x, y).loss, atol=1e-5)
    assert m(x).logits.shape == (3, 16, 256)   # no targets: the model's own forward

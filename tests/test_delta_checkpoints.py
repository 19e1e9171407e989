"""Delta checkpoints (`train.checkpoint_store: delta`): frozen weight groups written once into the run's object store,
bit-exact resume, the CLI unchanged (eval, generate, average, export, merge, --overwrite), corruption detected by hash,
and garbage collection that never deletes a referenced object, even when a failure is injected half-way."""
import json
import os
import shutil
import signal
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

import bytropix.models  # noqa: F401  (registers every architecture)
from bytropix.cli import main
from bytropix.config import load_config
from bytropix.core import CheckpointError
from bytropix.models.base import MODELS, BytropixModel, apply_weights, build_model, get_config_class
from bytropix.training import checkpoint as ckpt_mod
from bytropix.training.checkpoint import MANIFEST_FILE, MODEL_FILE, checkpoint_weights, load_checkpoint
from bytropix.training.run import RunDir
from bytropix.training.store import FROZEN, ObjectStore, read_weights, weight_groups, write_weights
from bytropix.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = {'model.n_layer': 2, 'model.n_head': 2, 'model.n_embd': 32, 'train.batch_size': 2, 'train.block_size': 16,
        'train.warmup_steps': 1, 'train.eval_batches': 1, 'train.sample_interval': 0, 'train.tensorboard': False,
        'train.log_interval': 1, 'train.num_threads': 1, 'data.max_train_tokens': 20000, 'data.max_val_tokens': 2000,
        'tokenizer.kind': 'byte', 'train.schedule': 'cosine', 'retrieval': None,    # the byte-level trunk, as before the recipe
        'train.compile': False}
DROP = {'train/tokens_per_s', 'time_s', 'sys/memory_mb'}
slow = pytest.mark.skipif(os.environ.get('BYTROPIX_SLOW') != '1', reason='long: runs with BYTROPIX_SLOW=1')


def _run(out: Path, **over):
    return load_config(ROOT/'configs'/'default.yaml', {**TINY, 'out_dir': str(out), **over})


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(l).items() if k not in DROP} for l in (run/'metrics.jsonl').read_text().splitlines()]


def _manifests(rd: RunDir) -> dict[str, dict]:
    return {p.name: json.loads((p/MANIFEST_FILE).read_text()) for p in [*rd.checkpoints(), rd.best_dir]
            if (p/MANIFEST_FILE).is_file()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- every architecture
def _tiny_arch(arch: str) -> BytropixModel:
    cfg = get_config_class(arch)()
    small = {k: v for k, v in {'n_layer': 2, 'n_embd': 32, 'n_head': 2, 'vocab_size': 64}.items() if hasattr(cfg, k)}
    torch.manual_seed(0)
    return build_model(arch, small)


@pytest.mark.parametrize('arch', sorted(MODELS.names()))
def test_every_architecture_round_trips(arch, tmp_path):
    model = _tiny_arch(arch)
    params = [p for _, p in model.named_parameters()]
    for p in params[:len(params) // 2]: p.requires_grad_(False)      # a frozen lower half
    groups = weight_groups(model)
    assert any(g.endswith(FROZEN) for g in groups) and any(not g.endswith(FROZEN) for g in groups)
    sd = model.state_dict()
    assert {k for g in groups.values() for k in g} <= sd.keys()
    store = ObjectStore(tmp_path/'objects')
    manifest = write_weights(store, model)
    fresh = _tiny_arch(arch)
    for p in fresh.parameters(): torch.nn.init.normal_(p) if p.is_floating_point() else None
    apply_weights(fresh, read_weights(store, manifest), 'test')
    assert _equal(fresh.state_dict(), sd)                            # tied weights restored through their aliases
    assert not any(g['new'] for g in write_weights(store, model)['groups'])   # nothing changed: nothing written


# ---------------------------------------------------------------------------------------------- a LoRA run, CLI
@pytest.fixture(scope='module')
def lora_run(tmp_path_factory):
    "A LoRA run (frozen base) saving delta checkpoints every 2 steps, keeping 2, evaluated every 4."
    out = tmp_path_factory.mktemp('delta')/'run'
    run = _run(out, **{'train.steps': 8, 'train.save_interval': 2, 'train.keep_last': 2, 'train.eval_interval': 4,
                       'train.checkpoint_store': 'delta', 'train.peft': {'method': 'lora', 'r': 4}})
    Trainer(run, log=None, progress=False).fit()
    return out


def test_frozen_groups_are_written_once(lora_run):
    rd = RunDir(lora_run)
    assert [p.name for p in rd.checkpoints()] == ['step-6', 'step-8']
    assert not (rd.checkpoint_dir(8)/MODEL_FILE).exists() and (rd.checkpoint_dir(8)/MANIFEST_FILE).is_file()
    mans = _manifests(rd)
    frozen = [{g['group']: g['object'] for g in m['groups'] if g['group'].endswith(FROZEN)} for m in mans.values()]
    assert frozen[0] and all(f == frozen[0] for f in frozen)           # the base: the same objects in every checkpoint
    late = mans['step-8']['groups']
    assert all(not g['new'] for g in late if g['group'].endswith(FROZEN))
    assert any(g['new'] for g in late if not g['group'].endswith(FROZEN))   # the adapters moved
    # garbage collection after pruning: exactly the objects some checkpoint (or best/) names are left
    assert set(rd.store.objects()) == {g['object'] for m in mans.values() for g in m['groups']}


def test_cli_reads_delta_runs(lora_run, tmp_path, capsys):
    assert main(['eval', str(lora_run), '--checkpoint', 'latest', '--json', '--max-batches', '1']) == 0
    text = capsys.readouterr().out
    val = json.loads(text[text.index('{'):])
    assert abs(val['loss'] - _records(lora_run)[-1]['val/loss']) < 1e-4   # the run's own evaluation of step 8
    assert main(['generate', str(lora_run), '--prompt', 'The', '--max-new-tokens', '4', '--temperature', '0']) == 0
    assert main(['average', str(lora_run), '--last', '2', '--out', str(tmp_path/'avg')]) == 0
    assert main(['merge', str(lora_run), '--out', str(tmp_path/'merged'), '--checkpoint', 'latest']) == 0
    capsys.readouterr()
    # the run's export is one normal safetensors model whose logits are the delta checkpoint's
    _, model, _ = RunDir(lora_run).load_model('latest')
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    for d in (lora_run/'export', tmp_path/'merged'):
        assert sorted(p.name for p in d.iterdir() if p.suffix == '.safetensors') == ['model.safetensors']
        exported = BytropixModel.from_pretrained(d)
        torch.testing.assert_close(exported(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    from bytropix.peft import merge_adapters
    a, b = (checkpoint_weights(RunDir(lora_run).checkpoint_dir(s)) for s in (6, 8))
    moved = [k for k in a if not torch.equal(a[k], b[k])]
    assert moved and all('lora' in k for k in moved)               # only the adapters differ between the checkpoints
    # the average of a LoRA run is the mean of the two merged models (W + s·BA), exported as a plain model
    avg = BytropixModel.from_pretrained(tmp_path/'avg').state_dict()
    merged = [merge_adapters(RunDir(lora_run).load_model(s)[1]).state_dict() for s in (6, 8)]
    for k, v in avg.items(): torch.testing.assert_close(v, (merged[0][k] + merged[1][k]) / 2)


@pytest.mark.parametrize('damage', ['flip', 'truncate', 'delete'])
def test_damaged_object_is_one_clear_line(lora_run, tmp_path, capsys, damage):
    run = tmp_path/'copy'
    shutil.copytree(lora_run, run)
    rd = RunDir(run)
    obj = next(g['object'] for g in _manifests(rd)['step-8']['groups'] if g['group'].endswith(FROZEN))
    f = rd.store.object_path(obj)
    data = f.read_bytes()
    if damage == 'flip': f.write_bytes(data[:-5] + bytes([data[-5] ^ 0x10]) + data[-4:])
    elif damage == 'truncate': f.write_bytes(data[:len(data) * 2 // 3])
    else: f.unlink()
    rc = main(['eval', str(run), '--checkpoint', 'latest'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and 'Traceback' not in err, err
    assert err.startswith('bytropix eval: error: ') and str(f) in err
    assert {'flip': 'no longer matches its SHA-256', 'truncate': 'truncated or corrupt', 'delete': 'is missing'}[damage] in err
    with pytest.raises(CheckpointError, match='step-8 needs it'): checkpoint_weights(rd.checkpoint_dir(8))


def test_checkpoint_copied_out_of_its_run(lora_run, tmp_path):
    dest = tmp_path/'elsewhere'/'step-8'
    shutil.copytree(RunDir(lora_run).checkpoint_dir(8), dest)
    with pytest.raises(CheckpointError, match='Copy the run directory as a whole'): checkpoint_weights(dest)
    assert _equal(checkpoint_weights(dest, store=RunDir(lora_run).store), checkpoint_weights(RunDir(lora_run).checkpoint_dir(8)))


def test_overwrite_and_export_of_a_plain_delta_run(lora_run, tmp_path, capsys):
    run = tmp_path/'copy'
    shutil.copytree(lora_run, run)
    old = set(RunDir(run).store.objects())
    assert 'objects' in RunDir(run).work()
    cfg = tmp_path/'run.yaml'
    cfg.write_text((run/'config.yaml').read_text())
    assert main(['train', str(cfg), '--out_dir', str(run), '--train.steps', '2', '--train.peft', 'null',
                 '--overwrite', '--no-progress']) == 0
    assert 'deleted' in capsys.readouterr().out
    rd = RunDir(run)
    assert rd.store.objects() and not old & set(rd.store.objects()) and (rd.checkpoint_dir(2)/MANIFEST_FILE).is_file()
    assert main(['export', str(run), '--format', 'hf', '--out', str(tmp_path/'hf'), '--checkpoint', 'latest']) == 0


# ---------------------------------------------------------------------------------------------- resume
class _Crash(Exception): pass


def _crash_at(step: int):
    def cb(trainer, s, rec):
        if s == step: raise _Crash(f'crash after step {s}')
    return cb


def test_delta_resume_is_bit_exact(tmp_path):
    "A delta LoRA run crashed after step 7 (last checkpoint 6) and resumed = the same run with full checkpoints, uninterrupted."
    over = {'train.steps': 10, 'train.save_interval': 3, 'train.keep_last': 2, 'train.eval_interval': 5,
            'train.peft': {'method': 'lora', 'r': 4}, 'train.seed': 3}
    Trainer(_run(tmp_path/'ref', **over), log=None, progress=False).fit()
    run = _run(tmp_path/'delta', **over, **{'train.checkpoint_store': 'delta'})
    with pytest.raises(_Crash): Trainer(run, log=None, progress=False, callbacks=[_crash_at(7)]).fit()
    assert RunDir(run.out_dir).latest_checkpoint().name == 'step-6'
    Trainer(run, resume=True, log=None, progress=False).fit()
    assert _records(tmp_path/'ref') == _records(tmp_path/'delta')
    from safetensors.torch import load_file
    assert _equal(load_file(str(tmp_path/'ref/export/model.safetensors')), load_file(str(tmp_path/'delta/export/model.safetensors')))
    # switching the store on resume works both ways: every checkpoint says which kind it is
    assert _equal(checkpoint_weights(tmp_path/'ref/checkpoints/step-10'), checkpoint_weights(tmp_path/'delta/checkpoints/step-10'))


@slow
def test_sigkill_delta_resume_matches_a_full_run(tmp_path):
    "tests/test_resume.py's SIGKILL scenario with delta checkpoints: killed after step-8, resumed = a full-checkpoint run."
    import test_resume as tr
    child = tr.CHILD.replace("'train.seed=7'])", "'train.seed=7', 'train.checkpoint_store=delta'])")
    assert child != tr.CHILD
    (tmp_path/'a').mkdir(); (tmp_path/'b').mkdir()   # each child its own script file
    with mock.patch.object(tr, 'CHILD', child): killed = tr._child(tmp_path/'a', tmp_path/'killed', resume=False, delay=0.25)
    ref = tr._child(tmp_path/'b', tmp_path/'ref', resume=False)
    tr._finish(ref)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (tmp_path/'killed/checkpoints/step-8/state.json').is_file() and \
                any(r.get('step', 0) >= 10 for r in tr._records(tmp_path/'killed', strict=False)):
            break
        assert killed.poll() is None, killed.communicate()[0]
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL); killed.wait()
    assert (tmp_path/'killed/checkpoints/step-8'/MANIFEST_FILE).is_file()
    with mock.patch.object(tr, 'CHILD', child): tr._finish(tr._child(tmp_path/'a', tmp_path/'killed', resume=True))
    assert tr._records(tmp_path/'ref') == tr._records(tmp_path/'killed')
    wa, wb = (tr._weights(tmp_path/r/'export/model.safetensors') for r in ('ref', 'killed'))
    assert _equal(wa, wb)


# ---------------------------------------------------------------------------------------------- stacks, GC, faults
def _stackwise(rd: RunDir, stages: int = 4, saves: int = 2) -> BytropixModel:
    "A plain gpt trained stack by stack: at stage s only block s (and the embeddings, head) trains; each save moves them."
    torch.manual_seed(0)
    model = build_model('gpt', {'n_layer': stages, 'n_embd': 32, 'n_head': 2, 'vocab_size': 64})
    step = 0
    for s in range(stages):
        for i, b in enumerate(model.blocks): b.requires_grad_(i == s)
        for _ in range(saves):
            step += 1
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad: p.add_(0.01)
            rd.save_checkpoint(step, model, delta=True, loader_state={'pos': step})
    return model


def _all_load(rd: RunDir) -> None:
    for p in [*rd.checkpoints(), rd.best_dir]:
        if p.is_dir(): checkpoint_weights(p)                      # every object present and verified


def test_stackwise_frozen_stacks_written_once(tmp_path):
    rd = RunDir(tmp_path).create()
    model = _stackwise(rd)
    mans = _manifests(rd)
    for s in range(4):   # block s: once untrained (before its stage), at its 2 saves; frozen = its last save's object
        objs = {g['object'] for m in mans.values() for g in m['groups'] if g['group'].startswith(f'blocks.{s}')}
        assert len(objs) == (2 if s == 0 else 3), (s, len(objs))
    fresh = build_model('gpt', model.config)
    load_checkpoint(rd.latest_checkpoint(), fresh)
    assert _equal(fresh.state_dict(), model.state_dict())


def test_gc_keeps_what_best_references(tmp_path):
    rd = RunDir(tmp_path).create()
    _stackwise(rd, stages=2)
    rd.save_best(rd.checkpoint_dir(1))
    rd.prune(1)
    assert [p.name for p in rd.checkpoints()] == ['step-4']
    _all_load(rd)
    assert set(rd.store.objects()) == {g['object'] for m in _manifests(rd).values() for g in m['groups']}


def test_crash_between_prune_and_collect(tmp_path):
    rd = RunDir(tmp_path).create()
    _stackwise(rd)
    with mock.patch.object(RunDir, 'collect_garbage', side_effect=OSError('killed')):
        with pytest.raises(OSError): rd.prune(2)
    assert len(rd.checkpoints()) == 2
    _all_load(rd)                                                  # orphans stay, nothing referenced went
    orphans = set(rd.store.objects()) - {g['object'] for m in _manifests(rd).values() for g in m['groups']}
    assert orphans and set(rd.collect_garbage()) == orphans
    _all_load(rd)


def test_crash_during_collect(tmp_path):
    rd = RunDir(tmp_path).create()
    _stackwise(rd)
    real, calls = Path.unlink, []
    def flaky(self, *a, **k):
        calls.append(self)
        if len(calls) == 3: raise OSError('killed')
        return real(self, *a, **k)
    with mock.patch.object(Path, 'unlink', flaky):
        with pytest.raises(OSError): rd.prune(1)
    _all_load(rd)
    rd.collect_garbage()
    assert set(rd.store.objects()) == {g['object'] for m in _manifests(rd).values() for g in m['groups']}
    _all_load(rd)


def test_interrupted_save_names_no_missing_object(tmp_path):
    rd = RunDir(tmp_path).create()
    model = _stackwise(rd, stages=2)
    before = set(rd.store.objects())
    with torch.no_grad(): model.lm_head.weight.add_(1.0)
    with mock.patch.object(ckpt_mod, 'write_state', side_effect=OSError('killed')):
        with pytest.raises(OSError): rd.save_checkpoint(99, model, delta=True)
    assert rd.latest_checkpoint().name == 'step-4' and set(rd.store.objects()) > before   # objects written, no checkpoint
    rd.recover(); _all_load(rd)
    rd.collect_garbage()
    assert set(rd.store.objects()) == before


def test_unreadable_manifest_blocks_collection(tmp_path):
    rd = RunDir(tmp_path).create()
    _stackwise(rd, stages=2)
    (rd.checkpoint_dir(1)/MANIFEST_FILE).write_text('{"groups": [')
    n = len(rd.store.objects())
    shutil.rmtree(rd.checkpoint_dir(4))
    assert rd.collect_garbage() == [] and len(rd.store.objects()) == n


def test_unfinished_writes_are_invisible_and_protected(tmp_path):
    rd = RunDir(tmp_path).create()
    _stackwise(rd, stages=2)
    # a process killed while writing an object leaves a temporary file: not an object, deleted by recovery
    tmp = rd.store.path/f'.{"0" * 64}.safetensors.abc.tmp'
    tmp.write_bytes(b'partial')
    assert len(rd.store.objects()) == len(set(rd.store.objects())) and '0' * 64 not in rd.store.objects()
    rd.collect_garbage(); assert tmp.exists()                      # garbage collection never touches temporaries
    rd.recover(); assert not tmp.exists()
    # a save in progress (its manifest in a temporary directory) protects the objects it names
    shutil.rmtree(rd.checkpoint_dir(1)); shutil.rmtree(rd.checkpoint_dir(2))
    moving = rd.checkpoint_dir(3).with_name('step-3.tmp-xyz')
    shutil.copytree(rd.checkpoint_dir(3), moving); shutil.rmtree(rd.checkpoint_dir(3))
    named = {g['object'] for g in json.loads((moving/MANIFEST_FILE).read_text())['groups']}
    rd.collect_garbage()
    assert named <= set(rd.store.objects())


def test_prepended_stack_does_not_rewrite_the_trunk(tmp_path):
    "StackWise `prepend`: the frozen blocks move up one index; their objects are reused, only the new stack is written."
    rd = RunDir(tmp_path).create()
    torch.manual_seed(0)
    small = build_model('gpt', {'n_layer': 2, 'n_embd': 32, 'n_head': 2, 'vocab_size': 64})
    rd.save_checkpoint(1, small, delta=True)
    big = build_model('gpt', {'n_layer': 3, 'n_embd': 32, 'n_head': 2, 'vocab_size': 64})
    big.load_state_dict({k: v for k, v in small.state_dict().items() if not k.startswith('blocks.')}, strict=False)
    for i, b in enumerate(small.blocks): big.blocks[i + 1].load_state_dict(b.state_dict())
    for b in big.blocks[1:]: b.requires_grad_(False)
    before = set(rd.store.objects())
    rd.save_checkpoint(2, big, delta=True)
    man = _manifests(rd)['step-2']
    assert [g['group'] for g in man['groups'] if g['new']] == ['blocks.0']   # embeddings, head, norm: carried over
    assert {g['object'] for g in man['groups'] if g['group'] in ('blocks.1:frozen', 'blocks.2:frozen')} <= before
    fresh = build_model('gpt', big.config)
    load_checkpoint(rd.checkpoint_dir(2), fresh)
    assert _equal(fresh.state_dict(), big.state_dict())


@pytest.mark.parametrize('peft', [{'method': 'qlora', 'r': 4}, {'r': 4, 'trunk': 'int8'},
                                  {'method': 'prompt', 'virtual_tokens': 4}])
def test_quantized_and_prompt_trunks_round_trip(peft, tmp_path):
    from bytropix.peft import apply_peft
    def build():
        torch.manual_seed(0)
        m = build_model('gpt', {'n_layer': 2, 'n_embd': 64, 'n_head': 2, 'vocab_size': 64})
        apply_peft(m, peft); return m
    rd, model = RunDir(tmp_path).create(), build()
    rd.save_checkpoint(1, model, delta=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad: p.add_(0.5)
    rd.save_checkpoint(2, model, delta=True)
    assert all(not g['new'] for g in _manifests(rd)['step-2']['groups'] if g['group'].endswith(FROZEN))
    fresh = build()
    load_checkpoint(rd.checkpoint_dir(2), fresh)
    assert _equal(fresh.state_dict(), model.state_dict())
    ids = torch.randint(0, 64, (1, 8))
    assert torch.equal(fresh(ids).logits, model(ids).logits)

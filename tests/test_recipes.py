"Training recipes end to end through the CLI: DPO on the shipped config, mixtures resumed bit for bit, W&B offline, Hub errors offline, the wizard."
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bytropix.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--model.n_layer', '1', '--model.n_embd', '32', '--model.n_head', '2', '--train.batch_size', '4', '--train.block_size', '32',
        '--train.eval_batches', '2', '--train.tensorboard', 'false', '--no-progress', '--train.warmup_steps', '2',
        '--train.sample_interval', '0']


def run(*argv, capsys=None):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr() if capsys is not None else None
    return rc, (out.out, out.err) if out is not None else ('', '')


def records(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir/'metrics.jsonl').read_text().splitlines()]


def test_dpo_shipped_config_and_bad_file(tmp_path, capsys):
    out = tmp_path/'dpo'
    rc, _ = run('train', ROOT/'configs'/'dpo.yaml', '--out_dir', out, '--train.steps', '6', '--train.log_interval', '3',
                '--train.eval_interval', '6', '--train.save_interval', '6', '--no-progress', '--model.n_embd', '32',
                '--task_options.max_batch_tokens', '1024', '--train.lr', '3e-3', '--task_options.data',
                ROOT/'configs'/'dpo-example.jsonl', capsys=capsys)
    assert rc == 0
    margins = [r['dpo/margin'] for r in records(out) if 'dpo/margin' in r]
    assert margins[0] == pytest.approx(0.0, abs=1e-6) and margins[-1] > margins[0]
    assert (out/'export'/'model.safetensors').is_file()
    bad = tmp_path/'bad.jsonl'
    bad.write_text(json.dumps({'prompt': 'a', 'chosen': 'b', 'rejected': 'c'}) + '\n' + json.dumps({'prompt': 'a', 'chosen': 'b'}) + '\n')
    rc, (_, err) = run('train', ROOT/'configs'/'dpo.yaml', '--out_dir', tmp_path/'bad', '--task_options.data', bad, '--no-progress', capsys=capsys)
    assert rc == 2 and err.count('\n') == 1 and 'line 2: missing field `rejected`' in err
    assert not (tmp_path/'bad'/'config.yaml').exists() and not (tmp_path/'bad'/'checkpoints').exists()


def test_mixture_run_resumes_bit_for_bit(tmp_path, capsys):
    mix = json.dumps([{'source': 'default', 'corpus_kind': 'prose', 'weight': 0.75}, {'source': 'default', 'corpus_kind': 'code', 'weight': 0.25}])
    common = [*TINY, '--data.mixture', mix, '--data.filters', '{min_chars: 20, dedup: true}', '--train.steps', '6',
              '--train.save_interval', '3', '--train.eval_interval', '3', '--train.keep_last', '0', '--train.log_interval', '1']
    assert run('train', '--out_dir', tmp_path/'a', *common, capsys=capsys)[0] == 0
    assert run('train', '--out_dir', tmp_path/'b', *common, '--train.steps', '3', capsys=capsys)[0] == 0
    assert run('train', '--out_dir', tmp_path/'b', *common, '--resume', capsys=capsys)[0] == 0
    la = {r['step']: r['train/loss'] for r in records(tmp_path/'a') if 'train/loss' in r}
    lb = {r['step']: r['train/loss'] for r in records(tmp_path/'b') if 'train/loss' in r}
    assert la == lb and sorted(la) == [1, 2, 3, 4, 5, 6]
    from safetensors.torch import load_file
    wa, wb = load_file(tmp_path/'a'/'export'/'model.safetensors'), load_file(tmp_path/'b'/'export'/'model.safetensors')
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rc, (_, err) = run('train', '--out_dir', tmp_path/'c', *TINY, '--data.mixture', '[{source: default, weight: 0.5}]', capsys=capsys)
    assert rc == 2 and 'sum to 0.5, not 1' in err


def test_wandb_offline(tmp_path, monkeypatch, capsys):
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline'); monkeypatch.setenv('WANDB_SILENT', 'true')
    out = tmp_path/'w'
    rc, _ = run('train', '--out_dir', out, *TINY, '--train.steps', '4', '--train.log_interval', '2', '--train.wandb', 'bytropix-test',
                '--train.monitor_interval', '2', '--data.max_train_tokens', '50000', '--data.max_val_tokens', '5000', capsys=capsys)
    assert rc == 0
    runs = list((out/'tb'/'wandb').glob('offline-run-*'))
    assert len(runs) == 1
    log = next(runs[0].glob('*.wandb')).read_bytes()   # the offline run's record log (synced later by `wandb sync`)
    for key in (b'bytropix-test', b'train/loss', b'val/loss', b'layers/update_ratio/blocks.0', b'layers/grad_norm/wte'): assert key in log


def test_hub_dataset_offline_is_one_clear_error(tmp_path):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT),
           'HF_HOME': str(tmp_path/'hf')}
    r = subprocess.run([sys.executable, '-m', 'bytropix.cli', 'train', '--out_dir', str(tmp_path/'r'), '--data.source',
                        'hf:nobody-xyz/no-such-dataset'], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count('\n') == 1 and 'data.source `hf:nobody-xyz/no-such-dataset` cannot be loaded' in r.stderr
    assert 'offline' in r.stderr and not (tmp_path/'r'/'config.yaml').exists()


def test_init_without_a_terminal_takes_defaults(tmp_path, capsys):
    rc, (out, _) = run('init', '--size', 'tiny', '--minutes', '0.5', '--out', tmp_path/'c.yaml', capsys=capsys)
    assert rc == 0 and 'wrote' in out
    from bytropix.config import load_config
    run_cfg = load_config(tmp_path/'c.yaml')
    assert run_cfg.arch == 'gpt' and run_cfg.out_dir == 'runs/my-run'
    rc, (_, err) = run('init', '--yes', '--arch', 'hrm', '--out', tmp_path/'d.yaml', capsys=capsys)
    assert rc == 2 and '--arch: `hrm` is not a language-model architecture' in err and not (tmp_path/'d.yaml').exists()


def test_lr_find_refuses_an_empty_range_and_writes_nothing(tmp_path, capsys):
    rc, (_, err) = run('lr-find', '--start', '0.1', '--end', '0.01', '--set', f'out_dir={tmp_path}/r', capsys=capsys)
    assert rc == 2 and 'the range is empty' in err and not (tmp_path/'r').exists()

"Fine-tuning from the command line: `train.init_from` + `train.peft` (LoRA, QLoRA), eval/generate of the run, `bytropix merge`."
import json

import pytest
import torch

from bytropix.cli import main
from bytropix.config import load_config
from bytropix.models.base import BytropixModel
from bytropix.training.run import load_trained
from bytropix.training.trainer import Trainer

TINY_LM = ['--model.n_layer', '1', '--model.n_embd', '64', '--model.n_head', '2', '--train.batch_size', '4',
           '--train.block_size', '32', '--train.eval_batches', '2', '--train.tensorboard', 'false', '--no-progress',
           '--data.max_train_tokens', '50000', '--data.max_val_tokens', '5000', '--train.warmup_steps', '2',
           '--train.sample_interval', '0']


def run(*argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.fixture(scope='module')
def base_export(tmp_path_factory):
    out = tmp_path_factory.mktemp('base')/'run'
    assert main(['train', *TINY_LM, '--out_dir', str(out), '--train.steps', '6']) == 0
    return out/'export'


def test_qlora_from_export_eval_generate_merge(base_export, tmp_path, capsys):
    ft = tmp_path/'ft'
    rc, text = run('train', *TINY_LM, '--out_dir', ft, '--train.steps', '4', '--train.init_from', base_export,
                   '--train.peft.method', 'qlora', '--train.peft.r', '4', capsys=capsys)
    assert rc == 0, text
    assert 'qlora: adapters on' in text and 'stored in nf4' in text
    saved = load_config(ft/'config.yaml')
    assert saved.train.peft.method == 'qlora' and saved.train.init_from == str(base_export)
    rc, text = run('eval', ft, '--json', '--checkpoint', 'latest', capsys=capsys)
    assert rc == 0, text
    assert json.loads(text[text.index('{'):])['loss'] > 0
    rc, a = run('generate', ft, '--checkpoint', 'latest', '--prompt', 'import ', '--max-new-tokens', '8',
                '--temperature', '0', capsys=capsys)
    assert rc == 0 and a.startswith('import ')
    rc, text = run('merge', ft, '--out', tmp_path/'merged', '--checkpoint', 'latest', capsys=capsys)
    assert rc == 0 and 'max |Δ| =' in text, text
    rc, b = run('generate', tmp_path/'merged', '--prompt', 'import ', '--max-new-tokens', '8', '--temperature', '0',
                capsys=capsys)
    assert rc == 0 and a == b                       # the merged export decodes what the adapted run decodes
    adapted, _, _ = load_trained(ft, 'latest', device='cpu')
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    for exp in (tmp_path/'merged', ft/'export'):    # the trainer's own export is the merged model too
        torch.testing.assert_close(BytropixModel.from_pretrained(exp)(x).logits, adapted(x).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize('args, msg', [
    (['--train.peft.target', '[nothing]'], "`train.peft.target`: 'nothing' matches no weight matrix"),
    (['--train.peft.r', '0'], '`train.peft.r`: must be at least 1'),
    (['--train.peft.method', 'qlora', '--train.peft.trunk', 'int8'], 'use method: lora with trunk: int8'),
])
def test_bad_peft_settings_are_one_line(base_export, tmp_path, capsys, args, msg):
    rc, text = run('train', *TINY_LM, '--out_dir', tmp_path/'bad', '--train.steps', '2', '--train.init_from', base_export,
                   *args, capsys=capsys)
    assert rc == 2 and text.strip().startswith('bytropix train: error:') and msg in text, text
    assert 'Traceback' not in text and not (tmp_path/'bad'/'checkpoints').exists()


def test_missing_init_from_is_one_line(tmp_path, capsys):
    rc, text = run('train', *TINY_LM, '--out_dir', tmp_path/'x', '--train.init_from', tmp_path/'nowhere', capsys=capsys)
    assert rc == 2 and '`train.init_from`:' in text and 'does not exist' in text, text


def test_qlora_resume_is_bit_exact(base_export, tmp_path):
    def cfg(out):
        return load_config(None, {'out_dir': str(out), 'train.init_from': str(base_export), 'train.steps': 6,
                                  'train.save_interval': 3, 'train.batch_size': 4, 'train.block_size': 32,
                                  'train.eval_batches': 2, 'train.eval_interval': 0, 'train.sample_interval': 0,
                                  'train.tensorboard': False, 'data.max_train_tokens': 50000, 'data.max_val_tokens': 5000,
                                  'train.peft': {'method': 'qlora', 'r': 4, 'dropout': 0.1}})
    ref = Trainer(cfg(tmp_path/'a'), log=None, progress=False).fit()

    class Stop(Exception): pass
    def stop(trainer, step, record):
        if step == 5: raise Stop()
    with pytest.raises(Stop): Trainer(cfg(tmp_path/'b'), log=None, progress=False, callbacks=[stop]).fit()
    res = Trainer(cfg(tmp_path/'b'), log=None, progress=False, resume=True).fit()
    assert res['val/loss'] == ref['val/loss']
    from safetensors.torch import load_file
    a, b = (load_file(tmp_path/d/'checkpoints'/'step-6'/'model.safetensors') for d in ('a', 'b'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith('qweight.qdata') for k in a)      # the NF4 trunk is what the checkpoint holds


@pytest.mark.parametrize('arch, model', [
    ('wubu', dict(n_layer=1, vocab_size=256, block_size=32)),
    ('bdh', dict(n_layer=2, n_embd=64, n_head=4, mlp_internal_dim_multiplier=16, vocab_size=256, block_size=32, dropout=0.0)),
])
def test_lora_from_any_export(arch, model, tmp_path):
    "`train.init_from` takes any architecture's export; the run's merged export computes what the adapted model does."
    from bytropix.models.base import build_model
    torch.manual_seed(0)
    build_model(arch, model).save_pretrained(tmp_path/'base')
    run = load_config(None, {'out_dir': str(tmp_path/'ft'), 'train.init_from': str(tmp_path/'base'), 'train.steps': 2,
                             'train.batch_size': 2, 'train.block_size': 32, 'train.eval_batches': 1, 'train.sample_interval': 0,
                             'train.tensorboard': False, 'data.max_train_tokens': 20000, 'data.max_val_tokens': 2000,
                             'train.peft': {'r': 2, 'trunk': 'nf4'}})
    t = Trainer(run, log=None, progress=False)
    t.fit()
    assert t.model.arch == arch and load_config(tmp_path/'ft'/'config.yaml').arch == arch
    x = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    adapted, _, _ = load_trained(tmp_path/'ft', 'latest', device='cpu')
    torch.testing.assert_close(BytropixModel.from_pretrained(tmp_path/'ft'/'export')(x).logits, adapted(x).logits, atol=1e-4, rtol=0)


def test_init_from_a_quantized_export_and_qat_with_peft_are_refused(base_export, tmp_path, capsys):
    rc, text = run('quantize', base_export, '--method', 'int8', '--out', tmp_path/'q', capsys=capsys)
    assert rc == 0, text
    rc, text = run('train', *TINY_LM, '--out_dir', tmp_path/'a', '--train.init_from', tmp_path/'q', '--train.peft.r', '4',
                   capsys=capsys)
    assert rc == 2 and 'is a quantized model; start from its float export' in text, text
    rc, text = run('train', *TINY_LM, '--out_dir', tmp_path/'b', '--train.init_from', base_export, '--train.peft.r', '4',
                   '--train.qat', 'int8', capsys=capsys)
    assert rc == 2 and '`train.qat` (int8) and `train.peft` cannot be combined' in text, text


def test_merge_has_help(capsys):
    with pytest.raises(SystemExit) as e: main(['merge', '--help'])
    text = capsys.readouterr().out
    assert e.value.code == 0 and text.startswith('usage: bytropix merge') and 'train.peft' in text


def test_lora_run_exports_to_hf_averages_and_refuses_prompt_exports(base_export, tmp_path, capsys):
    "A LoRA run's `export --format hf` and `average` carry the merged model (they once crashed / kept the adapters)."
    from bytropix.peft import merge_adapters
    from bytropix.training.run import RunDir
    ft = tmp_path/'ft'
    rc, text = run('train', *TINY_LM, '--out_dir', ft, '--train.steps', '6', '--train.save_interval', '2',
                   '--train.init_from', base_export, '--train.peft.method', 'lora', '--train.peft.r', '4', capsys=capsys)
    assert rc == 0, text
    rc, text = run('export', ft, '--format', 'hf', '--out', tmp_path/'hf', capsys=capsys)
    assert rc == 0 and 'max |Δ logit|' in text, text
    rc, text = run('average', ft, '--last', '3', '--out', tmp_path/'avg', capsys=capsys)
    assert rc == 0, text
    avg = BytropixModel.from_pretrained(tmp_path/'avg')
    rd = RunDir(ft)
    merged = [merge_adapters(rd.load_model(c)[1]) for c in rd.checkpoints()[-3:]]
    for k, v in avg.state_dict().items():    # the mean of the merged weights W + s·BA, not of A and B apart
        ref = sum(m.state_dict()[k].double() for m in merged) / 3
        assert torch.allclose(v.double(), ref, atol=1e-6), k
    pt = tmp_path/'pt'
    rc, text = run('train', *TINY_LM, '--out_dir', pt, '--train.steps', '2', '--train.init_from', base_export,
                   '--train.peft.method', 'prompt', '--train.block_size', '16', capsys=capsys)
    assert rc == 0, text
    rc, text = run('export', pt, '--format', 'hf', '--out', tmp_path/'hf2', capsys=capsys)
    assert rc == 2 and 'prompt-tuning run' in text and 'Traceback' not in text, text

"The GPT recipe options (qk_norm, mlp_act: relu2, value_embeds) from the CLI and through the graph exporters."
import os
from pathlib import Path

import pytest
import torch

from bytropix.cli import main
from bytropix.models.base import build_model

slow = pytest.mark.skipif(os.environ.get('BYTROPIX_SLOW') != '1', reason='long: runs with BYTROPIX_SLOW=1')
OPTIONS = ['--model.qk_norm', 'true', '--model.mlp_act', 'relu2', '--model.value_embeds', '1']
TINY = ['--model.n_layer', '2', '--model.n_embd', '32', '--model.n_head', '2', '--train.batch_size', '4',
        '--train.block_size', '32', '--train.eval_batches', '2', '--train.tensorboard', 'false', '--no-progress',
        '--data.max_train_tokens', '20000', '--data.max_val_tokens', '4000', '--train.warmup_steps', '2',
        '--train.sample_interval', '0']


def test_train_with_every_option_from_the_cli(tmp_path, capsys):
    out = tmp_path/'run'
    rc = main(['train', *TINY, *OPTIONS, '--train.steps', '6', '--train.eval_interval', '6', '--out_dir', str(out)])
    assert rc == 0, capsys.readouterr()
    from bytropix.training.run import RunDir
    run, model, _ = RunDir(out).load_model('best', 'cpu')
    c = model.config
    assert (c.qk_norm, c.mlp_act, c.value_embeds) == (True, 'relu2', 1)
    assert type(model.blocks[0].mlp).__name__ == 'ReLU2MLP' and len(model.value_embeds) == 1
    assert model.blocks[0].attn.q_norm is not None and model.blocks[1].attn.ve_gate is not None
    # transformers' Llama/GPT-2 classes cannot hold these weights: the hf export refuses by name, nothing written
    capsys.readouterr()
    assert main(['export', str(out), '--format', 'hf', '--out', str(tmp_path/'hf')]) == 2
    err = capsys.readouterr().err
    assert 'qk_norm: true, value_embeds: 1 has no equivalent in transformers' in err and 'Traceback' not in err
    assert not (tmp_path/'hf').exists()


@pytest.mark.parametrize('argv, message', [
    (['--model.value_embeds', '2'], '`model.value_embeds`: must be an integer from 0 to n_layer // 2 = 1'),
    (['--model.mlp_act', 'relu3'], '`model.mlp_act`'),
    (['--model.qk_norm', 'maybe'], '`model.qk_norm`'),
])
def test_bad_option_is_one_line(tmp_path, capsys, argv, message):
    rc = main(['train', *TINY, *argv, '--train.steps', '2', '--out_dir', str(tmp_path/'run')])
    text = capsys.readouterr()
    assert rc == 2 and message in text.err and 'Traceback' not in text.err, text
    assert len(text.err.strip().splitlines()) == 1 and text.err.startswith('bytropix train: error:')
    assert not (tmp_path/'run').exists()


def _export_and_decode(tmp_path: Path, fmt: str) -> None:
    from bytropix.export.core import export_model
    from bytropix.export.graphs import GraphGenerator, pt2_runner, read_manifest
    torch.manual_seed(0)
    m = build_model('gpt', dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, qk_norm=True,
                                mlp_act='relu2', value_embeds=1)).eval()
    res = export_model(m, fmt, tmp_path/'x')
    assert max(res.max_abs_diff.values()) <= 1e-4
    if fmt == 'onnx': from bytropix.export.onnx import onnx_runner as runner
    else: runner = pt2_runner
    gen = GraphGenerator(read_manifest(tmp_path/'x', fmt), runner(tmp_path/'x'))
    prompt = torch.randint(0, 64, (2, 4))
    assert torch.equal(gen.generate(prompt, 20, temperature=0), m.generate(prompt, 20, temperature=0))


def test_every_option_exports_to_pt2_and_decodes_the_same(tmp_path):
    _export_and_decode(tmp_path, 'pt2')


@slow
def test_every_option_exports_to_onnx_and_decodes_the_same(tmp_path):
    _export_and_decode(tmp_path, 'onnx')

"Sparse attention and attention backends from the CLI: train, eval, generate and export a run with a sparse pattern."
import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from bytropix.cli import main
from bytropix.config import load_config
from bytropix.core import ConfigError
from bytropix.models.base import BytropixModel, build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT/'configs'/'sparse-attention.yaml'
slow = pytest.mark.skipif(os.environ.get('BYTROPIX_SLOW') != '1', reason='long: runs with BYTROPIX_SLOW=1')
TINY = ['--model.n_layer', '1', '--model.n_embd', '32', '--model.n_head', '2', '--train.batch_size', '2',
        '--train.block_size', '32', '--model.sliding_window', '8', '--model.attn_global', '2', '--train.eval_batches', '1',
        '--train.tensorboard', 'false', '--no-progress', '--data.max_train_tokens', '20000', '--data.max_val_tokens', '3000',
        '--train.warmup_steps', '1', '--train.eval_interval', '0', '--sample-tokens', '0']


def run(*argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_shipped_config_is_a_sparse_pattern():
    c = load_config(CONFIG).model_config
    assert (c.attn_pattern, c.sliding_window, c.attn_global, c.block_size) == ('local_global', 64, 4, 512)


@pytest.mark.parametrize('impl', ['sdpa', 'flex'])
def test_train_eval_generate_with_a_sparse_pattern(impl, tmp_path, capsys):
    out = tmp_path/'run'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        rc, text = run('train', CONFIG, '--out_dir', out, '--train.steps', '3', '--model.attn_impl', impl, *TINY, capsys=capsys)
    assert rc == 0, text
    fallback = [str(w.message) for w in caught if 'attn_impl flex falls back' in str(w.message)]
    # training on the CPU: flex has no backward there, so it says so once and trains through sdpa with the same mask
    assert len(fallback) == (1 if impl == 'flex' else 0) and (impl == 'sdpa' or 'backward' in fallback[0])
    saved = load_config(out/'config.yaml').model_config
    assert (saved.attn_impl, saved.attn_pattern, saved.attn_global) == (impl, 'local_global', 2)
    rc, text = run('eval', out, '--json', '--checkpoint', 'latest', capsys=capsys)
    assert rc == 0 and json.loads(text)['bpb'] > 0, text
    rc, a = run('generate', out, '--checkpoint', 'latest', '--prompt', 'import ', '--max-new-tokens', '40', '--temperature', '0',
                capsys=capsys)
    assert rc == 0 and a.startswith('import '), a
    # the cached generation (past block_size: recomputing over the last 32 tokens) equals greedy decoding by full passes
    m = BytropixModel.from_pretrained(out/'export').eval()
    ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        want = ids
        for _ in range(40): want = torch.cat([want, m(want[:, -32:]).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(m.generate(ids, 40, temperature=0), want)


@pytest.mark.parametrize('argv, field', [
    (['--model.attn_pattern', 'local', '--model.sliding_window', 'null'], 'model.sliding_window'),
    (['--model.attn_global', '0'], 'model.attn_global'),
    (['--model.attn_global', '40'], 'model.attn_global'),
    (['--model.attn_pattern', 'block_sparse', '--model.sliding_window', 'null', '--model.attn_block_size', '0'], 'model.attn_block_size'),
    (['--model.attn_impl', 'flash'], 'model.attn_impl'),
    (['--model.sliding_window', '0'], 'model.sliding_window'),
])
def test_bad_pattern_is_one_clear_error_and_writes_nothing(argv, field, tmp_path, capsys):
    rc, text = run('train', CONFIG, '--out_dir', tmp_path/'run', *TINY, *argv, capsys=capsys)
    assert rc == 2 and f'`{field}`' in text and 'Traceback' not in text, text
    assert len(text.strip().splitlines()) == 1 and text.startswith('bytropix train: error:')
    assert not (tmp_path/'run').exists()


def test_transformers_export_refuses_global_and_block_sparse_patterns(tmp_path):
    from bytropix.export.core import export_model
    for extra in (dict(attn_pattern='local_global', sliding_window=4, attn_global=2),
                  dict(attn_pattern='block_sparse', attn_block_size=4)):
        m = build_model('gpt', dict(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16, **extra))
        with pytest.raises(ConfigError, match=f"attn_pattern {extra['attn_pattern']} has no .* export it as onnx or pt2"):
            export_model(m, 'hf', tmp_path/'x')
        assert not (tmp_path/'x').exists()


@slow
@pytest.mark.parametrize('fmt', ['pt2', 'onnx'])
def test_graph_exports_of_a_flex_model_trace_the_same_mask(fmt, tmp_path):
    from bytropix.export.core import export_model
    from bytropix.export.graphs import GraphGenerator, pt2_runner, read_manifest
    from bytropix.export.onnx import onnx_runner
    torch.manual_seed(0)
    m = build_model('gpt', dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32, attn_impl='flex',
                                attn_pattern='block_sparse', attn_block_size=4, attn_block_window=2, attn_block_stride=2,
                                attn_global=1)).eval()
    res = export_model(m, fmt, tmp_path/'x')   # exporters trace flex models through sdpa with the pattern's mask
    assert max(res.max_abs_diff.values()) <= 1e-5
    gen = GraphGenerator(read_manifest(tmp_path/'x', fmt), (pt2_runner if fmt == 'pt2' else onnx_runner)(tmp_path/'x'))
    prompt = torch.randint(0, 64, (2, 4))
    assert torch.equal(gen.generate(prompt, 20, temperature=0), m.generate(prompt, 20, temperature=0))

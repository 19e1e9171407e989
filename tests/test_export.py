"`bytropix export` / `bytropix import` end to end from the command line, and every bad input: one line, nothing written."
import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch

from bytropix.cli import main
from bytropix.core import ConfigError
from bytropix.data.tokenizers import byte_tokenizer
from bytropix.models.base import BytropixModel, build_model

TINY_RUN = ['--train.steps', '2', '--model.n_layer', '1', '--model.n_embd', '32', '--model.n_head', '2',
            '--train.batch_size', '4', '--train.block_size', '32', '--train.eval_batches', '2',
            '--train.tensorboard', 'false', '--no-progress', '--data.max_train_tokens', '50000',
            '--data.max_val_tokens', '5000', '--train.warmup_steps', '1', '--sample-tokens', '0']
slow = pytest.mark.skipif(os.environ.get('BYTROPIX_SLOW') != '1', reason='long: runs with BYTROPIX_SLOW=1')


def cli(*argv):
    "Exit status, stdout and stderr of `bytropix argv...` run in-process."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err): rc = main([str(a) for a in argv], out=out)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('run')/'run'
    rc, out, err = cli('train', '--out_dir', d, *TINY_RUN)
    assert rc == 0, err
    return d


def test_run_to_every_format_and_back(run_dir, tmp_path):
    "A trained run → hf, pt2 and onnx (each checked in its runtime by the export) → hf imported back: same text."
    for fmt in ('hf', 'pt2', 'onnx'):
        rc, out, err = cli('export', run_dir, '--format', fmt, '--out', tmp_path/fmt)
        assert rc == 0, err
        assert 'check:' in out and 'max |Δ logit|' in out
    assert {'config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json'} <= \
           {p.name for p in (tmp_path/'hf').iterdir()}
    assert json.loads((tmp_path/'onnx'/'export.json').read_text())['graphs']['step']['kind'] == 'kv_cache'
    rc, out, err = cli('import', tmp_path/'hf', '--out', tmp_path/'back')
    assert rc == 0 and 'check: llama logits' in out, err
    texts = []
    for src in (run_dir, tmp_path/'back'):
        rc, out, err = cli('generate', src, '--prompt', 'def ', '--max-new-tokens', '12', '--temperature', '0')
        assert rc == 0, err
        texts.append(out)
    assert texts[0] == texts[1] and texts[0].startswith('def ')
    from bytropix.export.onnx import OnnxGenerator
    assert OnnxGenerator(tmp_path/'onnx').generate_text('def ', 12, temperature=0) == texts[0].rstrip('\n')


def test_graph_selection_and_checkpoint_choice(run_dir, tmp_path):
    rc, out, err = cli('export', run_dir, '--format', 'pt2', '--graphs', 'model', '--checkpoint', 'latest',
                       '--out', tmp_path/'p')
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path/'p').iterdir()) == ['export.json', 'model.pt2', 'tokenizer.json']


def _expect_refusal(argv, message, out_dir):
    rc, out, err = cli(*argv)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'bytropix {argv[0]}: error:') and message in lines[0], err
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.fixture(scope='module')
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp('bad')
    build_model('bdh', dict(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16,
                            mlp_internal_dim_multiplier=4)).save_pretrained(d/'bdh', tokenizer=byte_tokenizer())
    build_model('wubu_bytes', dict(block_size=16, n_layer=1, n_head=2, n_embd=16, level_dims=[4], local_dim=16,
                                   local_heads=2, entropy_dim=16, entropy_heads=2)).save_pretrained(d/'wubu_bytes')
    build_model('gpt', dict(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16, style='gpt2',
                            n_kv_head=1)).save_pretrained(d/'gqa_gpt2', tokenizer=byte_tokenizer())
    build_model('gpt', dict(vocab_size=100, block_size=16, n_layer=1, n_head=2, n_embd=16)).save_pretrained(d/'small_vocab')
    (d/'notes').mkdir(); (d/'notes'/'readme.txt').write_text('not a checkpoint')
    (d/'bert').mkdir(); (d/'bert'/'config.json').write_text('{"model_type": "bert", "hidden_size": 8}')
    torch.save({'model': {'transformer.wte.weight': torch.zeros(4, 4)}, 'iter_num': 3}, d/'no_args.pt')
    (d/'full').mkdir(); (d/'full'/'x').write_text('keep me')
    from bytropix.export.hf import quiet_transformers
    with quiet_transformers() as tf:  # a GPT-2 checkpoint whose only tokenizer files are broken slow-tokenizer files
        tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)).save_pretrained(str(d/'slowtok'))
    (d/'slowtok'/'vocab.json').write_text('{"a": 0}'); (d/'slowtok'/'merges.txt').write_text('#version\nnot a merge line\n')
    return d


@pytest.mark.parametrize('argv, message', [
    (['export', '{d}/bdh', '--format', 'hf'], 'does not support arch `bdh`'),
    (['export', '{d}/gqa_gpt2', '--format', 'hf'], 'grouped-query attention'),
    (['export', '{d}/bdh', '--format', 'onnx', '--graphs', 'decode'], 'no `decode` graph'),
    (['export', '{d}/bdh', '--format', 'onx'], 'Did you mean `onnx`'),
    (['export', '{d}/notes', '--format', 'onnx'], 'neither a training run'),
    (['export', '{d}/bdh', '--format', 'pt2', '--out', '{d}/full'], 'already exists and is not empty'),
    (['import', '{d}/notes'], 'not a transformers checkpoint (no config.json)'),
    (['import', '{d}/bert'], 'model_type `bert` cannot be imported'),
    (['import', '{d}/no_args.pt'], 'no `model_args` entry'),
    (['import', '{d}/slowtok'], 'cannot be converted to a tokenizer.json'),
    (['import', '{d}/bdh'], 'already a bytropix export'),
    (['import', '{d}/missing.pt'], 'does not exist'),
])
def test_bad_input_is_one_line_and_writes_nothing(bad_inputs, tmp_path, argv, message):
    argv = [a.format(d=bad_inputs) for a in argv]
    out_dir = Path(argv[argv.index('--out') + 1]) if '--out' in argv else tmp_path/'out'
    if '--out' not in argv: argv += ['--out', out_dir]
    _expect_refusal(argv, message, out_dir if out_dir.name != 'full' else tmp_path/'unused')
    assert (bad_inputs/'full'/'x').read_text() == 'keep me'


def test_tokenizer_that_does_not_fit_the_model(bad_inputs, tmp_path):
    _expect_refusal(['import', bad_inputs/'slowtok', '--tokenizer', bad_inputs/'bdh', '--out', tmp_path/'o'],
                    '256 ids but the model only 64', tmp_path/'o')
    _expect_refusal(['import', bad_inputs/'slowtok', '--tokenizer', bad_inputs/'bdh', '--no-tokenizer', '--out', tmp_path/'o'],
                    'contradict', tmp_path/'o')
    from bytropix.export.core import export_model
    with pytest.raises(Exception, match='256 ids but the model only 100'):
        export_model(bad_inputs/'small_vocab', 'pt2', tmp_path/'o2', tokenizer=byte_tokenizer())
    assert not (tmp_path/'o2').exists()


def test_a_failing_check_leaves_nothing(monkeypatch, tmp_path):
    "An export whose runtime disagrees with bytropix is refused after writing, and its files are removed."
    from bytropix.export import graphs
    model = build_model('gpt', dict(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    real = graphs.pt2_runner
    def corrupted(directory):
        run = real(directory)
        return lambda name, inputs: [o + 1e-2 if i == 0 else o for i, o in enumerate(run(name, inputs))]
    monkeypatch.setattr(graphs, 'pt2_runner', corrupted)
    from bytropix.export.core import export_model
    with pytest.raises(Exception, match=r'differs from bytropix by 0.01 \(> 0.0001\).*nothing was written'):
        export_model(model, 'pt2', tmp_path/'a'/'b')
    assert not (tmp_path/'a').exists()


def test_nanogpt_import_matches_nanogpt_exactly(tmp_path):
    from bytropix.export.hf import import_checkpoint, quiet_transformers
    g = torch.Generator().manual_seed(0)
    E, V, T = 32, 64, 16
    r = lambda *s: torch.randn(*s, generator=g) * 0.5
    sd = {'transformer.wte.weight': r(V, E), 'transformer.wpe.weight': r(T, E), 'transformer.ln_f.weight': 1 + r(E),
          'transformer.h.0.ln_1.weight': 1 + r(E), 'transformer.h.0.attn.c_attn.weight': r(3 * E, E),
          'transformer.h.0.attn.c_proj.weight': r(E, E), 'transformer.h.0.ln_2.weight': 1 + r(E),
          'transformer.h.0.mlp.c_fc.weight': r(4 * E, E), 'transformer.h.0.mlp.c_proj.weight': r(E, 4 * E)}
    sd['lm_head.weight'] = sd['transformer.wte.weight']
    args = dict(n_layer=1, n_head=2, n_embd=E, block_size=T, bias=False, vocab_size=V, dropout=0.0)
    torch.save({'model': sd, 'model_args': args}, tmp_path/'ckpt.pt')
    import_checkpoint(tmp_path/'ckpt.pt', tmp_path/'out')
    with quiet_transformers() as tf:  # nanoGPT's forward = GPT-2's with the exact GELU and zero biases
        ref = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_positions=T, n_embd=E, n_layer=1, n_head=2,
                                               activation_function='gelu')).eval()
    full = {k: (v.T if v.ndim == 2 and any(s in k for s in ('c_attn', 'c_proj', 'c_fc')) else v) for k, v in sd.items()}
    with torch.no_grad():
        for k in ref.load_state_dict(full, strict=False).missing_keys: ref.get_parameter(k).zero_()
        ids = torch.randint(0, V, (2, T), generator=g)
        diff = (BytropixModel.from_pretrained(tmp_path/'out')(ids).logits - ref(ids).logits).abs().max()
    assert diff <= 1e-4, diff


def test_wubu_bytes_traces():
    "While exporting, WuBuBytesLM pads its patch sequence to one patch per byte: the graph traces, same logits."
    from bytropix.export.graphs import graph_specs, trace
    m = build_model('wubu_bytes', dict(block_size=16, n_layer=1, n_head=2, n_embd=16, level_dims=[4], local_dim=16,
                                       local_heads=2, entropy_dim=16, entropy_heads=2)).eval()
    ids = torch.randint(0, 256, (3, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(): assert (trace(m, graph_specs(m)[0]).module()(ids) - m(ids).logits).abs().max() <= 1e-5


@slow
@pytest.mark.parametrize('fmt', ['pt2', 'onnx'])
@pytest.mark.parametrize('arch, extra', [
    ('gpt', dict(n_kv_head=2, sliding_window=4)), ('gpt', dict(style='gpt2')), ('bdh', {}),
    ('wubu', dict(attention='hyperbolic', embedding='hyperbolic', intra='poincare', rotation='so')),
    ('wubu', dict(aggregation='sum', share_level_weights=True, level_dims=[8, 8], boundary_points=[2])),
    ('mamba', {}), ('gpt', dict(mlp='moe', n_experts=4, moe_top_k=2)), ('wubu', dict(mlp='moe', n_experts=3)),
    ('wubu_bytes', dict(local_dim=16, local_heads=2, entropy_dim=16, entropy_heads=2)),
])
def test_every_generative_variant_exports(tmp_path, fmt, arch, extra):
    from bytropix.export.core import export_model
    from bytropix.export.graphs import GraphGenerator, read_manifest
    base = {'gpt': dict(n_layer=2, n_head=4, n_embd=32), 'bdh': dict(n_layer=2, n_head=2, n_embd=16,
            mlp_internal_dim_multiplier=8, dropout=0.0), 'wubu': dict(n_layer=1, n_head=2, n_embd=16, level_dims=[8, 4]),
            'mamba': dict(n_layer=2, n_embd=16, d_state=4),
            'wubu_bytes': dict(n_layer=1, n_head=2, n_embd=16, level_dims=[4])}[arch]
    torch.manual_seed(0)
    m = build_model(arch, dict(vocab_size=64, block_size=16, **{**base, **extra})).eval()
    # (a sliding window's decoding step used to trace with a guard refusing caches shorter than the window; since the
    # masks come from AttentionPattern (chapter Attention) it traces for every cache length and pt2 writes it)
    res = export_model(m, fmt, tmp_path/'x')
    assert max(res.max_abs_diff.values()) <= 1e-4
    from bytropix.export.graphs import pt2_runner
    from bytropix.export.onnx import onnx_runner
    gen = GraphGenerator(read_manifest(tmp_path/'x', fmt), (pt2_runner if fmt == 'pt2' else onnx_runner)(tmp_path/'x'))
    prompt = torch.randint(0, 64, (2, 4))
    n = 12 if extra.get('sliding_window') else 20  # past block_size bytropix keeps decoding a windowed model incrementally
    assert torch.equal(gen.generate(prompt, n, temperature=0), m.generate(prompt, n, temperature=0))


def test_mixture_of_experts_gpt_is_refused_by_hf_with_one_line(tmp_path):
    from bytropix.export.core import export_model
    m = build_model('gpt', dict(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16, mlp='moe', n_experts=2))
    with pytest.raises(ConfigError, match='mixture-of-experts gpt .* export it as onnx or pt2'):
        export_model(m, 'hf', tmp_path/'x')
    assert not (tmp_path/'x').exists()


def test_mamba_exports_a_recurrent_step_graph():
    from bytropix.export.graphs import graph_specs
    m = build_model('mamba', dict(vocab_size=64, block_size=16, n_layer=2, n_embd=16, d_state=4)).eval()
    specs = graph_specs(m)
    assert [(s.name, s.kind) for s in specs] == [('model', 'logits'), ('step', 'recurrent')]
    assert len(specs[1].args) == 2 + 2 * 2      # ids, position, then per layer the convolution and SSM states

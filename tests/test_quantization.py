"""Quantization and compression end to end: every architecture through quantize → export → reload, the hyperbolic
layers' raw matrices, `bytropix quantize` / `bytropix prune` on exports, and their bad inputs (one line, nothing written)."""
import contextlib
import copy
import io
import os
from pathlib import Path

import pytest
import torch

from bytropix.cli import main
from bytropix.compression import prune_model
from bytropix.models.base import BytropixModel, build_model
from bytropix.quantization import (METHODS, cast_for_inference, is_quantized, load_quantized, quantization_targets,
                                   quantize_model, save_quantized)

SMALL_PUZZLE = dict(vocab_size=6, block_size=16, n_embd=32, n_head=2, multiple_of=16, halt_max_steps=3)
SMALL = {'gpt': dict(n_layer=1, n_embd=64, n_head=4, vocab_size=256, block_size=32),
         'bdh': dict(n_layer=1, n_embd=64, n_head=4, mlp_internal_dim_multiplier=16, vocab_size=256, block_size=32),
         'wubu': dict(n_layer=1, vocab_size=256, block_size=32),
         'wubu_bytes': dict(n_layer=1, block_size=32),
         'hrm': SMALL_PUZZLE, 'trm': SMALL_PUZZLE,
         'puzzle_transformer': {k: v for k, v in SMALL_PUZZLE.items() if not k.startswith('halt')}}
SLOW = pytest.mark.skipif(os.environ.get('BYTROPIX_SLOW') != '1', reason='slow: set BYTROPIX_SLOW=1')


def _round_trip(arch, kw, method, tmp_path):
    torch.manual_seed(0)
    m = build_model(arch, kw).eval()
    ids = torch.randint(0, m.config.vocab_size, (2, 16))
    q = copy.deepcopy(m)
    report = quantize_model(q, method)
    assert report.quantized and report.bytes_after < report.bytes_before
    with torch.no_grad(): out = q(ids).logits
    assert torch.isfinite(out).all()
    back = load_quantized(save_quantized(q, tmp_path/f"{arch}-{method}"))
    with torch.no_grad(): assert torch.equal(back(ids).logits, out)
    assert back.quantization == q.quantization and is_quantized(back)


@pytest.mark.parametrize('arch', sorted(SMALL))
def test_every_architecture_quantizes_and_reloads_bit_for_bit(arch, tmp_path):
    # torchao's int8 kernel where the model has nn.Linear layers, a low-bit format everywhere (BDH: raw matrices only)
    for method in (('int4', 'nf4') if arch == 'bdh' else ('int8', 'nvfp4')): _round_trip(arch, SMALL[arch], method, tmp_path)


@SLOW
@pytest.mark.parametrize('arch', sorted(SMALL))
def test_every_architecture_with_every_method(arch, tmp_path):
    for method, m in METHODS.items():
        if arch == 'bdh' and not m.raw_ok: continue
        _round_trip(arch, SMALL[arch], method, tmp_path)


def test_hyperbolic_layers_quantize_their_euclidean_matrices(tmp_path):
    kw = dict(n_layer=1, vocab_size=256, block_size=32, intra='mobius', attention='hyperbolic', embedding='hyperbolic')
    m = build_model('wubu', kw)
    raw = [t.key for t in quantization_targets(m, 'nvfp4')[0] if t.kind == 'raw']
    assert raw and all(k.endswith(('fc1.weight', 'fc2.weight')) for k in raw)   # the Möbius layers' matrices
    _round_trip('wubu', kw, 'nvfp4', tmp_path)
    h = cast_for_inference(copy.deepcopy(m).eval(), 'bf16')
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad(): assert abs(h(ids, ids).loss.item() - m.eval()(ids, ids).loss.item()) < 0.05


def test_bf16_on_a_quantized_model_keeps_the_codes():
    m = build_model('gpt', SMALL['gpt']).eval()
    quantize_model(m, 'nf4')
    qw = m.blocks[0].attn.qkv.qweight
    codes = qw.qdata.clone()
    cast_for_inference(m, 'bf16')
    assert torch.equal(qw.qdata, codes) and qw.absmax_scale.dtype == torch.float32
    out = m(torch.randint(0, 256, (1, 8))).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        try: rc = main([str(a) for a in argv], out=out)
        except SystemExit as e: rc = e.code   # argparse's usage errors
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def export(tmp_path):
    torch.manual_seed(0)
    d = tmp_path/'export'
    build_model('gpt', SMALL['gpt']).save_pretrained(d)
    return d


def test_cli_quantize_an_export(export, tmp_path):
    rc, out, err = _cli('quantize', export, '--method', 'int4', '--out', tmp_path/'q')
    assert rc == 0, err
    assert 'quantized 4 weight matrices with int4' in out and 'kept in float32: lm_head.weight: tied to wte.weight' in out
    m = load_quantized(tmp_path/'q')
    assert m.quantization['method'] == 'int4' and (tmp_path/'q'/'README.md').read_text().count('int4') >= 1


def test_loading_a_quantized_export_prints_no_torchao_notes(export, tmp_path):
    "torchao's import-time notes (a CUDA extension it cannot load, torch's deprecation of its enum registrations) stay silent."
    import subprocess, sys
    assert _cli('quantize', export, '--method', 'int8', '--out', tmp_path/'q')[0] == 0
    r = subprocess.run([sys.executable, '-m', 'bytropix', 'generate', str(tmp_path/'q'), '--prompt', 'ab', '--max-new-tokens', '3'],
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0 and r.stderr.strip() == '', r.stderr[-2000:]


def test_cli_quantize_unknown_method_is_a_usage_error(export, tmp_path):
    rc, _, err = _cli('quantize', export, '--method', 'int3', '--out', tmp_path/'x')
    assert rc == 2 and "argument --method: invalid choice: 'int3'" in err and not (tmp_path/'x').exists()


def test_cli_quantize_bad_inputs_write_nothing(export, tmp_path):
    (tmp_path/'full').mkdir(); (tmp_path/'full'/'keep.txt').write_text('mine')
    rc, _, err = _cli('quantize', export, '--method', 'int8', '--out', tmp_path/'full')
    assert rc == 2 and 'already exists and is not empty' in err and os.listdir(tmp_path/'full') == ['keep.txt']
    assert _cli('quantize', export, '--method', 'int8', '--out', tmp_path/'q8')[0] == 0
    rc, _, err = _cli('quantize', tmp_path/'q8', '--method', 'int4', '--out', tmp_path/'q4')
    assert rc == 2 and 'already quantized (int8)' in err and not (tmp_path/'q4').exists()
    torch.manual_seed(0)
    build_model('bdh', SMALL['bdh']).save_pretrained(tmp_path/'bdh')
    rc, _, err = _cli('quantize', tmp_path/'bdh', '--method', 'int8-dyn', '--out', tmp_path/'bq')
    assert rc == 2 and 'raw weight matrices' in err and 'use --method int8' in err and not (tmp_path/'bq').exists()
    m = build_model('gpt', SMALL['gpt'])
    with torch.no_grad(): m.blocks[0].attn.qkv.weight[0, 0] = float('nan')
    m.save_pretrained(tmp_path/'nan')
    rc, _, err = _cli('quantize', tmp_path/'nan', '--method', 'nf4', '--out', tmp_path/'nq')
    assert rc == 2 and 'NaN or infinite' in err and not (tmp_path/'nq').exists()
    assert err.count('\n') == 1 and err.startswith('bytropix quantize: error: ')
    rc, _, err = _cli('quantize', tmp_path/'nowhere', '--method', 'int8', '--out', tmp_path/'nq')
    assert rc == 2 and 'does not exist' in err


def test_cli_prune_an_export_and_bad_inputs(export, tmp_path):
    rc, out, err = _cli('prune', export, '--pattern', '2:4', '--out', tmp_path/'p')
    assert rc == 0, err
    w = BytropixModel.from_pretrained(tmp_path/'p').blocks[0].mlp.gate_up.weight
    assert ((w.reshape(-1, 4) != 0).sum(-1) <= 2).all()
    for argv, message in [(['--sparsity', '1'], 'sparsity must be a fraction in (0, 1)'),
                          (['--sparsity', '-0.2'], 'sparsity must be a fraction in (0, 1)'),
                          (['--sparsity', '0.5', '--finetune-steps', '3'], 'needs training data'),
                          (['--pattern', '3:4'], "invalid choice: '3:4'")]:
        rc, _, err = _cli('prune', export, *argv, '--out', tmp_path/'bad')
        assert rc == 2 and message in err and not (tmp_path/'bad').exists(), err
    rc, _, err = _cli('prune', tmp_path/'p', '--out', tmp_path/'bad')   # a pruned export can be pruned further
    assert rc == 0, err


def test_prune_then_quantize_not_the_other_way(export):
    m = BytropixModel.from_pretrained(export)
    quantize_model(m, 'int8')
    with pytest.raises(Exception, match='already quantized'): prune_model(m, 0.5)


def test_distill_teacher_with_another_vocabulary_is_one_line(tmp_path):
    from bytropix.data.tokenizers import train_tokenizer
    tok = train_tokenizer([f"hello world number {i}, " * 20 for i in range(40)], 'bpe', 300)
    build_model('gpt', {**SMALL['gpt'], 'vocab_size': tok.vocab_size}).save_pretrained(tmp_path/'teacher', tokenizer=tok)
    rc, _, err = _cli('train', '--task', 'distill', '--task_options.teacher', tmp_path/'teacher', '--out_dir', tmp_path/'student',
                      '--train.steps', '2', '--model.n_layer', '1', '--data.max_train_tokens', '50000')
    assert rc == 2 and err.count('\n') == 1 and "the teacher's tokenizer (bpe" in err and 'tokenizer.path' in err, err
    assert not any((tmp_path/'student').rglob('*.safetensors'))

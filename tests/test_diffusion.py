"Masked diffusion (task mdlm) from the command line: train, eval (ELBO bpb), resume, export, reload, generate; bad input."
import json
from pathlib import Path

import pytest
import torch

from bytropix.cli import main
from bytropix.models.base import BytropixModel, build_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--model.n_layer', '1', '--model.n_embd', '32', '--model.n_head', '2', '--train.batch_size', '4',
        '--train.block_size', '32', '--train.eval_batches', '2', '--train.tensorboard', 'false', '--no-progress',
        '--data.max_train_tokens', '50000', '--data.max_val_tokens', '5000', '--train.warmup_steps', '2']
TINY_MDLM = [*TINY, '--task_options.eval_points', '2']


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_mdlm_train_eval_export_generate(tmp_path, capsys):
    out = tmp_path/'mdlm'
    rc, text, err = run(capsys, 'train', ROOT/'configs'/'mdlm.yaml', '--out_dir', out, '--train.steps', '6',
                        '--train.eval_interval', '3', '--train.save_interval', '3', *TINY_MDLM, '--sample-tokens', '16')
    assert rc == 0, text + err
    assert 'done: step 6' in text and '--- sample ---' in text and 'masked diffusion' in text
    rc, text, err = run(capsys, 'eval', out, '--json')
    assert rc == 0, err
    r = json.loads(text)
    # an untrained byte model's ELBO is about ln(256) nats per token = 8 bits per byte
    assert 5 < r['bpb'] < 12 and r['metric/elbo_sd'] > 0, r
    rc2, text2, _ = run(capsys, 'eval', out, '--json')
    assert json.loads(text2)['loss'] == r['loss']                  # fixed evaluation masks: the same figure
    m = BytropixModel.from_pretrained(out/'export')
    assert m.config.causal is False and m.config.vocab_size == 257
    for src in (out, out/'export'):
        rc, text, err = run(capsys, 'generate', src, '--prompt', 'def ', '--max-new-tokens', '12', '--steps', '4',
                            '--block-length', '6', '--temperature', '0', '--top-k', '0')
        assert rc == 0 and text.startswith('def ') and '4 steps' in err and 'per token' in err, err
    rc, a, _ = run(capsys, 'generate', out, '--prompt', 'x', '--max-new-tokens', '8', '--sampler', 'ancestral', '--seed', '1')
    assert rc == 0 and a.startswith('x')
    with pytest.raises(SystemExit) as e: main(['generate', str(out), '--prompt', 'x', '--steps', '0'])
    assert e.value.code == 2 and 'argument --steps: 0 is out of range' in capsys.readouterr().err
    rc, text, err = run(capsys, 'generate', out, '--prompt', 'x', '--chat')
    assert rc == 2 and 'left-to-right' in err and 'Traceback' not in err


def test_mdlm_bad_configs(tmp_path, capsys):
    base = ['train', ROOT/'configs'/'mdlm.yaml', '--out_dir', tmp_path/'r', *TINY_MDLM]
    for extra, words in [(['--model.causal', 'true'], 'model.causal: false'),
                         (['--model.vocab_size', '256'], 'no room for [MASK]'),
                         (['--task_options.schedule', 'cosin'], 'cosine')]:
        rc, text, err = run(capsys, *base, *extra)
        assert rc == 2 and words in err and 'Traceback' not in err, (extra, err)
        assert not (tmp_path/'r').exists()      # refused before any work
    rc, text, err = run(capsys, 'train', '--arch', 'bdh', '--task', 'mdlm', '--out_dir', tmp_path/'b')
    assert rc == 2 and 'cannot run bidirectionally' in err


def test_causal_model_refuses_diffusion_flags(tmp_path, capsys):
    d = tmp_path/'gpt'
    build_model('gpt', dict(vocab_size=256, block_size=16, n_layer=1, n_embd=32, n_head=2)).save_pretrained(d)
    rc, text, err = run(capsys, 'generate', d, '--prompt', 'x', '--steps', '4')
    assert rc == 2 and 'only for masked-diffusion models' in err


def test_mla_gpt_from_the_cli(tmp_path, capsys):
    "configs/mla.yaml trains, evaluates, exports, reloads and generates (cached decoding through the latent cache)."
    out = tmp_path/'mla'
    rc, text, err = run(capsys, 'train', ROOT/'configs'/'mla.yaml', '--out_dir', out, '--train.steps', '3', *TINY,
                        '--model.kv_lora_rank', '8', '--model.rope_head_dim', '4', '--sample-tokens', '8')
    assert rc == 0, text + err
    rc, text, err = run(capsys, 'eval', out, '--json')
    assert rc == 0 and json.loads(text)['bpb'] > 0, err
    m = BytropixModel.from_pretrained(out/'export')
    assert m.config.attention == 'mla' and m.init_state(1).caches[0].values_per_token == 8 + 4
    rc, text, err = run(capsys, 'generate', out/'export', '--prompt', 'def ', '--max-new-tokens', '8', '--temperature', '0')
    assert rc == 0 and text.startswith('def '), err
    rc, text, err = run(capsys, 'train', ROOT/'configs'/'mla.yaml', '--out_dir', tmp_path/'bad', *TINY, '--model.rope_head_dim', '5')
    assert rc == 2 and 'rope_head_dim' in err and not (tmp_path/'bad').exists()


def test_encoder_mlm_from_the_cli(tmp_path, capsys):
    "configs/encoder.yaml trains (task mlm), evaluates, exports and embeds; generate refuses; a decoder head generates."
    from bytropix.data.tokenizers import Tokenizer
    out = tmp_path/'enc'
    rc, text, err = run(capsys, 'train', ROOT/'configs'/'encoder.yaml', '--out_dir', out, '--train.steps', '3', *TINY,
                        '--sample-tokens', '8')
    assert rc == 0 and 'masked LM' in text and 'does not generate: no sample' in text, text + err
    rc, text, err = run(capsys, 'eval', out, '--json')
    assert rc == 0 and 0 <= json.loads(text)['metric/mlm_accuracy'] <= 1, err
    m = BytropixModel.from_pretrained(out/'export')
    e = m.embed(['def f(x):', 'The cat sat.', 'def f(x):'], Tokenizer.load(out/'export'))
    assert e.shape == (3, 32) and torch.allclose(e[0], e[2])
    rc, text, err = run(capsys, 'generate', out/'export', '--prompt', 'x')
    assert rc == 2 and 'does not generate' in err and 'Traceback' not in err
    rc, text, err = run(capsys, 'train', '--arch', 'encoder', '--out_dir', tmp_path/'dec', '--model.causal', 'true', '--train.steps', '2', *TINY, '--sample-tokens', '8')
    assert rc == 0 and '--- sample ---' in text, text + err


@pytest.mark.parametrize('fmt', ['onnx', 'pt2'])
def test_graph_export_of_bidirectional_models(tmp_path, capsys, fmt):
    """A bidirectional model's forward graph exports exactly (ONNX / torch.export); generating from the export unmasks
    (the same tokens as diffusion_generate without a cache), never left to right; an encoder export refuses to generate."""
    from bytropix.export.graphs import pt2_generator
    from bytropix.training.diffusion import diffusion_generate
    from bytropix.data.tokenizers import Tokenizer
    small = dict(vocab_size=257, block_size=16, n_layer=1, n_embd=32, n_head=2)
    for arch in ('gpt', 'encoder'):
        build_model(arch, dict(small, causal=False)).save_pretrained(tmp_path/arch)
        rc, text, err = run(capsys, 'export', tmp_path/arch, '--format', fmt, '--out', tmp_path/f'{arch}-{fmt}')
        assert rc == 0 and 'max |Δ logit|' in text and 'step' not in json.loads((tmp_path/f'{arch}-{fmt}'/'export.json').read_text())['graphs'], err
    if fmt == 'onnx':
        from bytropix.export.onnx import OnnxGenerator as make
    else: make = pt2_generator
    m = BytropixModel.from_pretrained(tmp_path/'gpt').eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    want, _ = diffusion_generate(m, ids, 6, steps=6, temperature=0, use_cache=False)
    gen = make(tmp_path/f'gpt-{fmt}')
    assert torch.equal(gen.generate(ids, 6, temperature=0), want)
    long = torch.arange(20)[None] % 250     # a prompt longer than the window: kept whole, the sampler sees its tail
    out = gen.generate(long, 6, temperature=0)
    assert out.shape == (1, 26) and torch.equal(out[:, :20], long)
    with pytest.raises(Exception, match='repetition_penalty'): gen.generate(ids, 4, repetition_penalty=1.2)
    with pytest.raises(Exception, match='does not generate'): make(tmp_path/f'encoder-{fmt}').generate(ids, 4)


def test_sampler_bad_input_before_work():
    "Step counts, block lengths and answer lengths the sampler cannot honour are refused with one line naming them."
    from bytropix.core import ConfigError
    from bytropix.training.diffusion import diffusion_generate
    m = build_model('gpt', dict(vocab_size=65, block_size=16, n_layer=1, n_embd=32, n_head=2, causal=False)).eval()
    ids = torch.tensor([[1, 2]])
    for kw, words in [(dict(steps=0), 'steps must be at least 1'), (dict(steps=True), 'steps must be at least 1'),
                      (dict(block_length=0), 'block_length'), (dict(sampler='greedy'), 'Unknown sampler')]:
        with pytest.raises(ConfigError, match=words): diffusion_generate(m, ids, 4, **kw)
    with pytest.raises(ConfigError, match='block_size'): diffusion_generate(m, ids, 17)
    enc = build_model('encoder', dict(vocab_size=65, block_size=16, n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(ConfigError, match='not a masked-diffusion model'): diffusion_generate(enc, ids, 4)
    with pytest.raises(ConfigError, match='does not generate'): enc.generate(ids, 4)


def test_mdlm_on_the_wubu_stack(tmp_path, capsys):
    "configs/mdlm-wubu.yaml: the WuBu stack made bidirectional trains (ELBO falls), evaluates, reloads and unmasks."
    out = tmp_path/'w'
    rc, text, err = run(capsys, 'train', ROOT/'configs'/'mdlm-wubu.yaml', '--out_dir', out, *TINY_MDLM, '--model.level_dims', '[16, 8]',
                        '--train.batch_size', '8', '--train.steps', '30', '--train.eval_interval', '10', '--train.lr', '3e-3',
                        '--sample-tokens', '8')
    assert rc == 0 and 'training wubu' in text and 'masked diffusion' in text, text + err
    bpb = [float(l.split('bpb ')[1].split()[0]) for l in text.splitlines() if l.startswith('eval step')]
    assert len(bpb) == 3 and bpb[-1] < bpb[0], bpb
    m = BytropixModel.from_pretrained(out/'export')
    assert m.arch == 'wubu' and m.config.causal is False
    rc, text, err = run(capsys, 'generate', out, '--prompt', 'def ', '--max-new-tokens', '8', '--steps', '4', '--block-length', '4')
    assert rc == 0 and text.startswith('def ') and '2 block(s)' in err, err
    rc, text, err = run(capsys, 'train', ROOT/'configs'/'mdlm-wubu.yaml', '--out_dir', tmp_path/'c', *TINY_MDLM, '--model.causal', 'true')
    assert rc == 2 and 'model.causal: false' in err and not (tmp_path/'c').exists()
    rc, text, err = run(capsys, 'train', '--arch', 'wubu_bytes', '--task', 'mdlm', '--out_dir', tmp_path/'b')
    assert rc == 2 and 'cannot run bidirectionally' in err


def test_generate_of_a_diffusion_model_unmasks():
    "model.generate / bytropix.generation.generate unmask (never left to right); streaming and beam options refuse."
    from bytropix.core import ConfigError
    from bytropix.generation import generate, stream
    from bytropix.training.diffusion import diffusion_generate
    for arch, kw in [('gpt', {}), ('wubu', dict(level_dims=[8, 4]))]:
        m = build_model(arch, dict(vocab_size=65, block_size=16, n_layer=1, n_embd=32, n_head=2, causal=False, **kw)).eval()
        ids = torch.tensor([[1, 2, 3]])
        want, _ = diffusion_generate(m, ids, 5, temperature=0)
        assert torch.equal(m.generate(ids, 5, temperature=0), want) and torch.equal(generate(m, ids[0], 5, temperature=0), want[0])
        long = torch.arange(30)[None] % 64          # longer than the window: the whole prompt comes back
        out = m.generate(long, 40, temperature=0)
        assert out.shape == (1, 30 + 16) and torch.equal(out[:, :30], long) and (out[:, 30:] < 64).all()
        with pytest.raises(ConfigError, match='does not stream'): list(stream(m, ids, 4))
        with pytest.raises(ConfigError, match='num_beams'): m.generate(ids, 4, num_beams=2)
        with pytest.raises(ConfigError, match='repetition_penalty'): m.generate(ids, 4, repetition_penalty=1.3)

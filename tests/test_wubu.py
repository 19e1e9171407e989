"""WuBu Nesting token LM and WuBu byte-latent LM: configs, every option end to end, causality, incremental decoding,
save/load, the trainer (aux logging, Riemannian parameters, checkpointing, bf16), curvature positivity, patching."""
import json
import math
from pathlib import Path

import pytest
import torch

from lm_fixtures import SeqLoader, TokenData
from hypothesis import given, settings, strategies as st

import bytropix.models.wubu  # noqa: F401  (registers `wubu`)
import bytropix.models.wubu_bytes  # noqa: F401  (registers `wubu_bytes`)
from bytropix.config import load_config
from bytropix.core import ConfigError, DataError
from bytropix.models.base import BytropixModel, build_model
from bytropix.layers.wubu import WuBuBlock, WuBuNestingConfig
from bytropix.models.wubu import WuBuConfig, WuBuLM
from bytropix.models.wubu_bytes import (WuBuBytesConfig, WuBuBytesLM, completed_patch, patch_ids, patch_starts,
                                        pool_patches)
from bytropix.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
V, T = 48, 16
TINY = dict(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=16, level_dims=[8, 8, 4], boundary_points=[2])
VARIANTS = {
    'default': {},
    'hyperbolic_attention': dict(attention='hyperbolic'),
    'gyromidpoint': dict(attention='hyperbolic', attn_aggregation='gyromidpoint'),
    'hyperbolic_embedding': dict(embedding='hyperbolic'),
    'hyperbolic_embedding_untied': dict(embedding='hyperbolic', tie_embeddings=False),
    'mobius': dict(intra='mobius'),
    'poincare': dict(intra='poincare'),
    'quaternion': dict(rotation='quaternion', level_dims=[8, 8, 4]),
    'identity_rotation': dict(rotation='identity'),
    'sum_aggregation': dict(aggregation='sum'),
    'shared': dict(share_level_weights=True, level_dims=[8, 8, 8]),
    'frozen_geometry': dict(learnable_curvature=False, learnable_scale=False, learnable_spread=False),
    'one_level': dict(level_dims=[8]),
}


def ids(B=2, n=T, seed=0):
    return torch.randint(0, V, (B, n), generator=torch.Generator().manual_seed(seed))


# -- the token LM, every option -----------------------------------------------------------------------------------------
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_variant_is_causal_decodes_incrementally_and_round_trips(variant, tmp_path):
    torch.manual_seed(0)
    m = build_model('wubu', {**TINY, **VARIANTS[variant]})
    x = ids()
    out = m(x, x)
    assert out.logits.shape == (2, T, V) and torch.isfinite(out.loss)
    out.loss.backward()
    dead = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not dead, dead
    m.eval()
    with torch.no_grad():
        full = m(x).logits
        x2 = x.clone(); x2[:, 9] = (x2[:, 9] + 1) % V
        torch.testing.assert_close(m(x2).logits[:, :9], full[:, :9], atol=1e-5, rtol=1e-4)
        st_ = m.init_state(2, 'cpu')
        inc = torch.cat([m.step(x[:, :7], st_)[0], m.step(x[:, 7:8], st_)[0], m.step(x[:, 8:], st_)[0]], 1)
        torch.testing.assert_close(inc, full, atol=1e-4, rtol=1e-4)
    m.save_pretrained(tmp_path)
    m2 = BytropixModel.from_pretrained(tmp_path)
    with torch.no_grad(): assert torch.equal(m2(x).logits, full)


def test_generation_past_block_size_matches_between_paths():
    torch.manual_seed(0)
    m = build_model('wubu', {**TINY, 'attention': 'hyperbolic'})
    a = m.generate(ids(1, 4), 30, temperature=0)
    b = m.generate(ids(1, 4), 30, temperature=0, use_cache=False)
    assert a.shape == (1, 34) and torch.equal(a, b)
    s = m.generate(ids(1, 4), 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (1, 14) and int(s.max()) < V


def test_aux_reports_every_level_and_layer():
    m = build_model('wubu', {**TINY, 'attention': 'hyperbolic', 'curvature_init': [0.5, 1.0, 2.0]})
    aux = m(ids()).aux
    for kind in ('curvature', 'scale', 'spread'):
        for i in range(3):
            assert f'wubu/{kind}/level{i}' in aux and all(f'wubu/{kind}/layer{l}/level{i}' in aux for l in range(2))
    assert [round(aux[f'wubu/curvature/level{i}'].item(), 5) for i in range(3)] == [0.5, 1.0, 2.0]
    assert aux['wubu/scale/level2'].item() == pytest.approx(4 ** -0.5, rel=1e-5)
    assert 'wubu/attn_curvature/layer1' in aux
    assert all(v.ndim == 0 and not v.requires_grad for v in aux.values())


def test_config_errors_are_clear():
    for bad, msg in [({'level_dims': []}, 'at least one positive'), ({'boundary_points': [1, 2]}, 'has 2 entries'),
                     ({'boundary_points': [-1]}, 'non-negative'), ({'level_norm': 'lorenz'}, 'hyperbolic'), ({'curvature_min': 0.0}, 'must be positive'),
                     ({'scale_init': [1e-4], 'scale_min': 1e-3}, 'exceed scale_min'), ({'n_embd': 18, 'n_head': 4}, 'divisible'),
                     ({'rotation': 'quaternion', 'level_dims': [8, 6]}, 'divisible by 4'),
                     ({'share_level_weights': True}, 'equal level_dims'), ({'attentoin': 'x'}, 'Did you mean `attention`')]:
        with pytest.raises(ConfigError, match=msg): build_model('wubu', bad)
    with pytest.raises(DataError, match='batch, time'): build_model('wubu', TINY)(torch.zeros(5, dtype=torch.long))


def test_curvature_scale_spread_stay_positive_under_absurd_optimizer_steps():
    torch.manual_seed(0)
    m = build_model('wubu', {**TINY, 'intra': 'mobius', 'attention': 'hyperbolic'})
    geo = [p for b in m.blocks for g in b.wubu.geo for n, p in g.named_parameters() if n.endswith(('raw', 'isp_c'))]
    assert len(geo) == 3 * 2 * len(TINY['level_dims'])  # curvature, scale, spread per level and layer
    opt = torch.optim.SGD(geo, lr=1e6)
    for sign in (1.0, -1.0, 1.0):
        loss = sign * m(ids(), ids()).loss * 1e3
        opt.zero_grad(); loss.backward()
        for p in geo: p.grad = torch.full_like(p, sign * 10.0)   # as large as any step could ever be
        opt.step()
        out = m(ids(), ids())
        vals = [v.item() for k, v in out.aux.items() if k.split('/')[1] in ('curvature', 'scale', 'spread')]
        assert min(vals) > 0 and all(math.isfinite(v) for v in vals)
        assert torch.isfinite(out.loss) and torch.isfinite(out.logits).all()


def test_bf16_autocast_deep_stack_is_finite():
    torch.manual_seed(0)
    m = build_model('wubu', {**TINY, 'n_layer': 6, 'level_dims': [16, 12, 8, 4], 'attention': 'hyperbolic', 'intra': 'poincare'})
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for step in range(5):
        with torch.autocast('cpu', dtype=torch.bfloat16): out = m(ids(seed=step), ids(seed=step + 1))
        opt.zero_grad(); out.loss.backward()
        assert torch.isfinite(out.loss)
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
        opt.step()


def test_level_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    m = build_model('wubu', TINY)
    grads = []
    for ck in (False, True):
        m.zero_grad(); m.gradient_checkpointing = ck
        m(ids(), ids()).loss.backward()
        grads.append([p.grad.clone() for p in m.parameters() if p.grad is not None])
    assert m.gradient_checkpointing
    for a, b in zip(*grads): torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_block_levels_change_with_curvature():
    # the output depends on each level's curvature (the geometry is not a no-op)
    torch.manual_seed(0)
    blk = WuBuBlock(16, WuBuNestingConfig.from_dict({'level_dims': [8, 4]}))
    x = torch.randn(3, 16)
    y0 = blk(x)
    for i in range(2):
        with torch.no_grad(): blk.geo[i].curvature.isp_c += 1.0
        assert not torch.allclose(blk(x), y0, atol=1e-6)
        with torch.no_grad(): blk.geo[i].curvature.isp_c -= 1.0


# -- the trainer ------------------------------------------------------------------------------------------------------
def make_data(B=4):
    g = torch.Generator().manual_seed(0)
    rows = (torch.randint(0, V, (32, 1), generator=g) + torch.arange(T + 1)) % V
    val = (torch.randint(0, V, (4, 1), generator=g) + torch.arange(T + 1)) % V
    return TokenData(SeqLoader(rows, B), lambda: iter([(val[:, :-1], val[:, 1:])]), vocab_size=V)


def run_config(tmp_path, arch='wubu', model=None, **train):
    over = {'arch': arch, 'train.steps': 6, 'train.batch_size': 4, 'train.block_size': T, 'train.warmup_steps': 1,
            'train.lr': 1e-2, 'train.log_interval': 1, 'train.eval_interval': 3, 'train.save_interval': 3,
            'train.sample_interval': 0, 'train.tensorboard': False, 'train.num_threads': 1, 'out_dir': str(tmp_path / 'run')}
    for k, v in (model or {}).items(): over[f'model.{k}'] = v
    over.update({f'train.{k}': v for k, v in train.items()})
    return load_config(None, over)


def test_trainer_logs_geometry_trains_manifold_parameters_and_checkpoints(tmp_path):
    model = {k: v for k, v in TINY.items() if k not in ('vocab_size', 'block_size')}
    run = run_config(tmp_path, model={**model, 'embedding': 'hyperbolic', 'attention': 'hyperbolic'},
                     precision='bf16', grad_checkpointing=True)
    t = Trainer(run, data=make_data(), log=None, progress=False)
    m = t.fit()
    assert m['step'] == 6 and m['skipped_steps'] == 0 and math.isfinite(m['val/loss'])
    assert 'riemannian' in t.optimizer.optimizers and t.model.gradient_checkpointing
    recs = [json.loads(l) for l in (Path(run.out_dir) / 'metrics.jsonl').read_text().splitlines()]
    curv = [r['wubu/curvature/level0'] for r in recs if 'wubu/curvature/level0' in r]
    assert len(curv) == 6 and curv[0] != curv[-1] and min(curv) > 0      # logged every step, and it adapts
    assert (t.model.wte.weight.norm(dim=-1) < 1).all()
    ck = sorted((Path(run.out_dir) / 'checkpoints').iterdir())
    assert [p.name for p in ck] == ['step-3', 'step-6']
    # resuming from the step-3 checkpoint reproduces the uninterrupted run exactly (curvatures, manifold points, ...)
    t3 = Trainer(run, data=make_data(), log=None, progress=False, resume=3)
    t3.fit()
    for (n, a), b in zip(t.model.named_parameters(), t3.model.parameters()): assert torch.equal(a, b), n


def test_trainer_runs_wubu_bytes(tmp_path):
    run = run_config(tmp_path, arch='wubu_bytes', model=dict(vocab_size=V, n_layer=1, n_head=2, n_embd=16, level_dims=[8, 4],
                                                             local_dim=16, local_heads=2, entropy_dim=16, max_patch_len=4))
    m = Trainer(run, data=make_data(), log=None, progress=False).fit()
    assert m['step'] == 6 and math.isfinite(m['val/loss'])
    recs = [json.loads(l) for l in (Path(run.out_dir) / 'metrics.jsonl').read_text().splitlines()]
    assert any('wubu_bytes/bytes_per_patch' in r for r in recs) and any('wubu/curvature/level1' in r for r in recs)


@pytest.mark.parametrize('name', ['wubu.yaml', 'wubu-bytes.yaml'])
def test_shipped_configs_validate(name):
    run = load_config(ROOT / 'configs' / name, ['train.steps=20'])
    assert run.arch in ('wubu', 'wubu_bytes') and run.train.steps == 20
    m = build_model(run.arch, run.resolved(256).model_config)
    assert 0.3e6 < m.num_parameters() < 1.5e6


# -- the byte-latent LM -----------------------------------------------------------------------------------------------
BYTES = dict(block_size=48, n_layer=1, n_head=2, n_embd=16, level_dims=[8, 4], boundary_points=[2], local_dim=16,
             local_heads=2, local_window=8, entropy_dim=16, entropy_window=16, max_patch_len=5, entropy_threshold=0.0,
             entropy_rule='relative')


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), thr=st.floats(0.0, 6.0), max_len=st.integers(1, 9),
       rule=st.sampled_from(['global', 'relative']))
def test_patching_is_prefix_consistent_and_bounded(seed, thr, max_len, rule):
    H = torch.rand(2, 30, generator=torch.Generator().manual_seed(seed)) * 6
    full = patch_starts(H, thr, max_len, rule)
    for k in (1, 2, 11, 29):
        assert torch.equal(patch_starts(H[:, :k], thr, max_len, rule), full[:, :k + 1])
    pid, n = patch_ids(full)
    lengths = torch.stack([torch.bincount(pid[b], minlength=int(n[b]))[:int(n[b])].max() for b in range(2)])
    assert int(lengths.max()) <= max_len
    q = completed_patch(full)
    assert (q <= pid).all() and (q >= pid - 1).all()                   # only finished patches are visible


def test_pool_patches_handles_ragged_rows():
    h = torch.randn(3, 7, 2)
    starts = torch.zeros(3, 8, dtype=torch.bool); starts[:, 0] = True; starts[0, [2, 5]] = True; starts[2, 1:] = True
    pid, n = patch_ids(starts)
    mean, last = pool_patches(h, pid, int(n.max()))
    assert mean.shape == (3, 7, 2)
    torch.testing.assert_close(mean[1, 0], h[1].mean(0)); torch.testing.assert_close(last[1, 0], h[1, -1])
    torch.testing.assert_close(mean[2], h[2])                              # one byte per patch
    assert mean[0, 3:].abs().sum() == 0 and last[1, 1:].abs().sum() == 0   # padding patches are zero


@pytest.mark.parametrize('patching', ['entropy', 'fixed'])
def test_byte_model_prefix_logits_and_generation(patching, tmp_path):
    torch.manual_seed(0)
    # the relative rule with threshold 0 (a patch starts where the entropy rises): ragged patches even untrained
    m = build_model('wubu_bytes', {**BYTES, 'patching': patching}).eval()
    x = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(x).logits
        n = patch_ids(m.patches(x))[1]
        assert (n < 40).all() and (n >= 8).all(), n              # 40 bytes, at most 5 per patch
        for k in (3, 19, 40):
            torch.testing.assert_close(m(x[:, :k]).logits, full[:, :k], atol=1e-4, rtol=1e-4)
    g = m.generate(x[:1, :5], 60, temperature=0)
    assert g.shape == (1, 65) and torch.equal(g, m.generate(x[:1, :5], 60, temperature=0))
    m.save_pretrained(tmp_path)
    with torch.no_grad(): assert torch.equal(BytropixModel.from_pretrained(tmp_path)(x).logits, full)


def test_byte_model_loss_parts():
    torch.manual_seed(0)
    m = build_model('wubu_bytes', BYTES)
    x = torch.randint(0, 256, (2, 33))
    out = m(x[:, :-1], x[:, 1:])
    parts = out.aux['wubu_bytes/byte_loss'] + out.aux['wubu_bytes/entropy_loss']
    torch.testing.assert_close(out.loss.detach(), parts)                 # training: byte + entropy-model loss
    m.eval()
    torch.testing.assert_close(m(x[:, :-1], x[:, 1:]).loss, out.aux['wubu_bytes/byte_loss'])  # eval: the byte loss
    with pytest.raises(ConfigError, match='embedding'): build_model('wubu_bytes', {**BYTES, 'embedding': 'hyperbolic'})

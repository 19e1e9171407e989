"""BDH: reference-weight interop against an independent re-statement of the reference forward, and property tests of
the parallel, chunked and recurrent forms."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from bytropix.core import CheckpointError
from bytropix.models.base import BytropixModel, build_model
from bytropix.models.bdh import (BDH, BDHConfig, REFERENCE_FREQS, REFERENCE_WEIGHTS, bdh_attention,
                                 bdh_attention_chunked, bdh_config_from_reference, bdh_from_reference,
                                 collect_activations, load_reference_state_dict, reference_state_dict, sparsity_stats)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    "Tiny models: one thread avoids OpenMP barrier stalls on a busy machine (restored afterwards)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------------------
# An independent re-statement of the reference BDH forward (pathwaycom/bdh, bdh.py), written from its semantics:
# the rotation as complex multiplication of neuron pairs z_j = u_{2j} + i·u_{2j+1} by e^{iφ}, the attention as an
# explicit masked sum over earlier tokens, per-head loops. Phases as the reference computes them: float32 t·f, mod 1
# cycle, times 2π, with f_i = θ^(-2⌊i/2⌋/N) / 2π.
# ---------------------------------------------------------------------------------------------------------------
def reference_logits(sd, ids, n_layer, theta=2.0 ** 16):
    emb, enc, enc_v, dec, head = (sd[k] for k in ('embed.weight', 'encoder', 'encoder_v', 'decoder', 'lm_head'))
    H, D, N = enc.shape
    B, T = ids.shape
    dt = enc.dtype
    ln = lambda z: F.layer_norm(z, (D,), eps=1e-5)
    j = torch.arange(N // 2, dtype=torch.float32)
    f = 1.0 / theta ** (2 * j / N) / (2 * math.pi)                   # one frequency per pair
    cycles = (torch.arange(T, dtype=torch.float32)[:, None] * f) % 1   # (T, N/2), float32 as the reference
    rot = torch.polar(torch.ones_like(cycles), cycles * (2 * math.pi)).to(torch.complex128)

    def rope(u):  # u (T, N) real → (T, N) real, pairs rotated
        z = torch.complex(u[:, 0::2].double(), u[:, 1::2].double()) * rot
        return torch.stack([z.real, z.imag], -1).reshape(T, N).to(dt)

    mask = torch.ones(T, T, dtype=torch.bool).tril(-1)                # s < t
    x = ln(emb[ids])                                                  # (B, T, D)
    for _ in range(n_layer):
        new_x = torch.empty_like(x)
        for b in range(B):
            xs_all, ys_all = [], []
            for h in range(H):
                xs = F.relu(x[b] @ enc[h])                            # (T, N)
                q = rope(xs)
                scores = torch.where(mask, q @ q.T, torch.zeros((), dtype=dt))
                a = ln(scores @ x[b])                                 # (T, D): Σ_{s<t} <q_t, q_s> x_s
                ys = F.relu(a @ enc_v[h])
                xs_all.append(xs); ys_all.append(ys)
            xy = torch.cat([xs * ys for xs, ys in zip(xs_all, ys_all)], -1)   # (T, H·N), head-major
            new_x[b] = ln(x[b] + ln(xy @ dec))
        x = new_x
    return x @ head


def _model(seed=0, dtype=torch.float64, **over):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=61, block_size=64, n_layer=3, n_embd=16, n_head=2, mlp_internal_dim_multiplier=6, dropout=0.0)
    return BDH(BDHConfig(**{**cfg, **over})).to(dtype).eval()


def test_reference_state_dict_layout():
    m = _model()
    sd = reference_state_dict(m)
    # the reference module's state_dict: five parameters and the persistent RoPE buffer `attn.freqs` (1, 1, 1, N)
    assert set(sd) == {'embed.weight', 'encoder', 'encoder_v', 'decoder', 'lm_head', 'attn.freqs'}
    H, D, N, V = 2, 16, 48, 61
    assert sd['encoder'].shape == sd['encoder_v'].shape == (H, D, N)
    assert sd['decoder'].shape == (H * N, D) and sd['lm_head'].shape == (D, V) and sd['embed.weight'].shape == (V, D)
    i = torch.arange(N, dtype=torch.float32)
    want = 1.0 / (2.0 ** 16) ** (((i / 2).floor() * 2) / N) / (2 * math.pi)
    assert torch.equal(sd['attn.freqs'].reshape(-1), want) and sd['attn.freqs'].shape == (1, 1, 1, N)


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-7), (torch.float32, 2e-4)])
def test_reference_weights_give_reference_logits(dtype, tol):
    # weights in the reference layout (as a compiled reference model saves them), loaded into a fresh BDH
    torch.manual_seed(1)
    H, D, N, V = 2, 16, 48, 61
    sd = {'embed.weight': torch.randn(V, D), 'encoder': torch.randn(H, D, N) * 0.3,
          'encoder_v': torch.randn(H, D, N) * 0.3, 'decoder': torch.randn(H * N, D) * 0.1, 'lm_head': torch.randn(D, V)}
    sd = {k: v.to(dtype) for k, v in sd.items()}
    m = bdh_from_reference({'model': {'_orig_mod.' + k: v for k, v in sd.items()}, 'step': 10}, n_layer=3, dropout=0.0)
    m = m.to(dtype).eval()
    ids = torch.randint(0, V, (2, 37))
    with torch.no_grad(): ours = m(ids).logits
    ref = reference_logits(sd, ids, n_layer=3)
    assert (ours - ref).abs().max().item() <= tol * ref.abs().max().item()
    # and the export is the same weights
    back = reference_state_dict(m)
    for k in REFERENCE_WEIGHTS: assert torch.equal(back[k], sd[k])


def test_reference_phases_at_long_positions():
    # the float32 `t·f mod 1` phases of the reference are reproduced exactly, also far beyond the trained context
    m = _model(dtype=torch.float32)
    N = m.config.n_neurons
    t = torch.tensor([0, 1, 4095, 8191, 100_000], dtype=torch.float32)
    cos, sin = m.rope_tables(0, 100_001)
    freqs = reference_state_dict(m)[REFERENCE_FREQS].reshape(-1)[0::2]
    phases = ((t[:, None] * freqs) % 1) * (2 * math.pi)
    assert torch.equal(cos[t.long()], phases.cos()) and torch.equal(sin[t.long()], phases.sin())


def test_config_inference_and_errors(tmp_path):
    m = _model()
    sd = reference_state_dict(m)
    cfg = bdh_config_from_reference(sd, n_layer=3, dropout=0.0, block_size=64)
    assert cfg == m.config.replace(vocab_size=61)
    with pytest.raises(CheckpointError, match='No `encoder`'):
        bdh_config_from_reference({'lm_head': sd['lm_head']})
    with pytest.raises(CheckpointError, match='not a multiple of n_embd'):
        bdh_config_from_reference({**sd, 'encoder': torch.zeros(2, 16, 7)})
    with pytest.raises(CheckpointError, match='state dict'):
        load_reference_state_dict(m, [1, 2, 3])
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='Cannot read'):
        bdh_from_reference(tmp_path / 'junk.pt')


# ---------------------------------------------------------------------------------------------------------------
# The three forms
# ---------------------------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 40), N=st.integers(1, 8).map(lambda n: 2 * n),
       D=st.integers(1, 6), chunk=st.integers(1, 45), split=st.integers(0, 40), seed=st.integers(0, 10_000))
def test_chunked_equals_naive(B, H, T, N, D, chunk, split, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, N, generator=g, dtype=torch.float64)
    v = torch.randn(B, 1, T, D, generator=g, dtype=torch.float64)
    ref = bdh_attention(q, v)
    out, rho = bdh_attention_chunked(q, v, chunk_size=chunk)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(rho, q.mT @ v, rtol=1e-9, atol=1e-9)
    # continuing from a state at an arbitrary split gives the same outputs
    s = min(split, T)
    o1, r1 = bdh_attention_chunked(q[:, :, :s], v[:, :, :s], chunk_size=chunk)
    o2, r2 = bdh_attention_chunked(q[:, :, s:], v[:, :, s:], r1, chunk_size=chunk, inplace=True)
    torch.testing.assert_close(torch.cat([o1, o2], 2), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(r2, rho, rtol=1e-9, atol=1e-9)


_M64 = _model(seed=3)


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 12), min_size=1, max_size=8), seed=st.integers(0, 10_000))
def test_recurrent_equals_parallel(cuts, seed):
    T = sum(cuts)
    ids = torch.randint(0, 61, (2, T), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = _M64(ids).logits
        state, parts, t = _M64.init_state(2), [], 0
        for n in cuts:
            lg, state = _M64.step(ids[:, t:t + n], state); parts.append(lg); t += n
    assert state.pos == T
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-9, atol=1e-9)


def test_long_context_recurrent_equals_chunked_parallel():
    # 600 tokens > block_size: the recurrent form has no length limit; compare with the chunked parallel form
    m = _model(seed=4, dtype=torch.float32, block_size=32)
    mc = _model(seed=4, dtype=torch.float32, block_size=32, attn_chunk_size=64)
    ids = torch.randint(0, 61, (1, 600))
    with torch.no_grad():
        full = mc(ids).logits
        torch.testing.assert_close(full, m(ids).logits, rtol=1e-4, atol=1e-4)   # chunked == naive here too
        state = m.init_state(1)
        _, state = m.step(ids[:, :500], state)
        tail = [m.step(ids[:, t:t + 1], state)[0] for t in range(500, 600)]
    torch.testing.assert_close(torch.cat(tail, 1), full[:, 500:], rtol=1e-4, atol=1e-4)
    assert m.incremental_limit is None


def test_greedy_generation_recurrent_equals_recompute():
    m = _model(seed=5, dtype=torch.float32, block_size=64)
    prompt = torch.randint(0, 61, (3, 6))
    a = m.generate(prompt, 40, temperature=0)
    b = m.generate(prompt, 40, temperature=0, use_cache=False)
    assert torch.equal(a, b) and a.shape == (3, 46)


def test_state_in_place_only_without_autograd():
    m = _model(seed=6, dtype=torch.float32)
    ids = torch.randint(0, 61, (1, 9))
    # with autograd the recurrent form is differentiable (truncated BPTT) ...
    state = m.init_state(1)
    lg, state = m.step(ids[:, :5], state)
    lg2, state = m.step(ids[:, 5:], state)
    (lg.sum() + lg2.sum()).backward()
    assert m.encoder.grad is not None and torch.isfinite(m.encoder.grad).all()
    # ... and without it the state tensors are updated in place (no new allocation per token)
    with torch.no_grad():
        state = m.init_state(1)
        ptr = state.rho[0].data_ptr()
        m.step(ids[:, :5], state); m.step(ids[:, 5:6], state)
    assert state.rho[0].data_ptr() == ptr and state.pos == 6


def test_chunked_training_matches_naive_gradients():
    m = _model(seed=7, dtype=torch.float64)
    mc = _model(seed=7, dtype=torch.float64, attn_chunk_size=5)
    ids, tgt = torch.randint(0, 61, (2, 23)), torch.randint(0, 61, (2, 23))
    m(ids, tgt).loss.backward(); mc(ids, tgt).loss.backward()
    for p, pc in zip(m.parameters(), mc.parameters()):
        torch.testing.assert_close(p.grad, pc.grad, rtol=1e-9, atol=1e-12)


def test_registry_save_load_and_sparsity(tmp_path):
    m = build_model('bdh', {'vocab_size': 61, 'n_layer': 2, 'n_embd': 16, 'n_head': 2, 'mlp_internal_dim_multiplier': 6})
    assert type(m) is BDH and m.arch == 'bdh'
    m.save_pretrained(tmp_path / 'm')
    m2 = BytropixModel.from_pretrained(tmp_path / 'm')
    ids = torch.randint(0, 61, (2, 20))
    with torch.no_grad(): assert torch.equal(m2(ids).logits, m.eval()(ids).logits)
    # untrained: ReLU of a random projection of a normalised vector fires about half the time
    stats = sparsity_stats(collect_activations(m, ids))
    assert all(0.3 < s < 0.7 for s in stats['x']) and len(stats['x']) == 2
    assert all(s <= min(a, b) for s, a, b in zip(stats['xy'], stats['x'], stats['y']))
    assert not m.training
    m.train(); collect_activations(m, ids); assert m.training   # collect_activations restores the mode


# ---------------------------------------------------------------------------------------------------------------
# The run config and the trainer
# ---------------------------------------------------------------------------------------------------------------
def test_config_file():
    config = pytest.importorskip('bytropix.config')
    run = config.load_config(ROOT / 'configs' / 'bdh.yaml')
    assert run.arch == 'bdh' and isinstance(run.model_config, BDHConfig)
    assert run.model_config.block_size >= run.train.block_size


def test_trainer_end_to_end(tmp_path):
    trainer = pytest.importorskip('bytropix.training.trainer')
    pytest.importorskip('bytropix.data.datasets')
    from bytropix.config import load_config
    run = load_config(ROOT / 'configs' / 'bdh.yaml',
                      [f'out_dir={tmp_path / "run"}', 'train.steps=20', 'train.eval_interval=0', 'train.eval_batches=2',
                       'train.save_interval=0', 'train.sample_interval=0', 'train.batch_size=4', 'train.block_size=64',
                       'train.log_interval=10', 'train.tensorboard=false'])
    metrics = trainer.Trainer(run).fit()
    assert metrics['step'] == 20 and math.isfinite(metrics['val/loss']) and metrics['val/loss'] < math.log(256)
    assert isinstance(BytropixModel.from_pretrained(tmp_path / 'run' / 'export'), BDH)


def test_bf16_recurrent_close_to_parallel():
    # a bf16 model decodes with a float32 state; its logits stay close to the bf16 parallel form's
    m = _model(seed=8, dtype=torch.bfloat16)
    ids = torch.randint(0, 61, (2, 30))
    with torch.no_grad():
        full = m(ids).logits.float()
        state = m.init_state(2)
        assert state.rho[0].dtype == torch.float32
        lg1, state = m.step(ids[:, :11], state)
        lg2, state = m.step(ids[:, 11:], state)
    rec = torch.cat([lg1, lg2], 1).float()
    assert rec.dtype == torch.float32 and torch.isfinite(rec).all()
    assert (rec - full).abs().max() <= 0.1 * full.abs().max()

"""Hyperbolic layers and tangent-space rotations: identities (property-based), gradients, boundary stability in every
float dtype and curvature, geoopt interop and persistence."""
import math

import geoopt
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.autograd import gradcheck

from bytropix.core import ConfigError
from bytropix.geometry import ball_eps, cdist, dist, expmap0, mobius_add, PoincareBall, poincare_to_klein
from bytropix.layers.hyperbolic import (HyperbolicAttention, HyperbolicEmbedding, HyperbolicMLP, HyperbolicMLR,
                                        MobiusLinear, PoincareLinear, ganea_mlr_logits, hnnpp_logits,
                                        hyperbolic_attention, mobius_fn, poincare_fc, weighted_midpoint)
from bytropix.layers.rope import RotaryEmbedding
from bytropix.layers.rotations import (QuaternionRotation, SORotation, make_rotation, quaternion_rotate, so_matrix,
                                       unit_quaternion)

DT = torch.float64
curv = st.floats(0.05, 5.0)
seeds = st.integers(0, 2**31 - 1)


def rand_ball(*shape, c=1.0, scale=1.0, g=None):
    return expmap0(torch.randn(*shape, dtype=DT, generator=g) * scale, c)


# -- identities -----------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=seeds, c=curv, n=st.integers(1, 6), m=st.integers(1, 7))
def test_einstein_midpoint_is_the_gyromidpoint_and_inside_the_ball(seed, c, n, m):
    g = torch.Generator().manual_seed(seed)
    pts = rand_ball(m, n, c=c, scale=2.0, g=g)
    w = torch.softmax(torch.randn(3, m, dtype=DT, generator=g) * 3, -1)
    e, gm = weighted_midpoint(pts, w, c), weighted_midpoint(pts, w, c, 'gyromidpoint')
    torch.testing.assert_close(e, gm, atol=1e-8, rtol=1e-6)
    assert (e.norm(dim=-1) * math.sqrt(c) < 1).all()
    # the Klein image of the midpoint is a convex combination: inside the bounding box of the Klein points
    k, km = poincare_to_klein(pts, c), poincare_to_klein(e, c)
    assert (km <= k.max(0).values + 1e-9).all() and (km >= k.min(0).values - 1e-9).all()


@settings(max_examples=40, deadline=None)
@given(seed=seeds, c=curv, n=st.integers(1, 6), K=st.integers(1, 5))
def test_hnnpp_mlr_equals_ganea_mlr_under_the_reparametrisation(seed, c, n, K):
    g = torch.Generator().manual_seed(seed)
    x = rand_ball(4, n, c=c, scale=0.5 / math.sqrt(c), g=g)   # away from the projection margin (Ganea's ⊕ projects)
    z = torch.randn(K, n, dtype=DT, generator=g)
    r = torch.randn(K, dtype=DT, generator=g) * 0.5 / math.sqrt(c)
    zh = z / z.norm(dim=-1, keepdim=True)
    p, a = expmap0(r[:, None] * zh, c), z / torch.cosh(math.sqrt(c) * r)[:, None] ** 2
    torch.testing.assert_close(hnnpp_logits(x, z, r, c), ganea_mlr_logits(x, p, a, c), atol=1e-7, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, c=curv)
def test_mlr_sign_is_the_side_of_the_gyroplane(seed, c):
    # the gyroplane through p with normal a: points p ⊕ exp0(±ε a) lie on either side
    g = torch.Generator().manual_seed(seed)
    p, a = rand_ball(1, 3, c=c, scale=0.5, g=g), torch.randn(1, 3, dtype=DT, generator=g)
    eps = 1e-2 * a / a.norm()
    plus, minus = mobius_add(p, expmap0(eps, c), c), mobius_add(p, expmap0(-eps, c), c)
    assert ganea_mlr_logits(plus, p, a, c).item() > 0 > ganea_mlr_logits(minus, p, a, c).item()


def test_mobius_linear_is_the_mobius_version_of_the_linear_map_without_bias():
    lin = MobiusLinear(4, 3, bias=None, c=0.5).double()
    x = rand_ball(6, 4, c=0.5)
    torch.testing.assert_close(lin(x), mobius_fn(lambda t: t @ lin.weight.T, x, 0.5))


def test_poincare_fc_origin_and_linear_regime():
    z, r = torch.randn(3, 4, dtype=DT), torch.zeros(3, dtype=DT)
    torch.testing.assert_close(poincare_fc(torch.zeros(2, 4, dtype=DT), z, r), torch.zeros(2, 3, dtype=DT))
    x = torch.randn(2, 4, dtype=DT) * 1e-6                                 # near the origin: y ≈ 2 Z x
    torch.testing.assert_close(poincare_fc(x, z, r), 2 * x @ z.T, atol=1e-15, rtol=1e-5)


# -- gradients ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kind', ['mobius', 'poincare'])
def test_gradcheck_with_a_per_row_curvature(kind):
    torch.manual_seed(0)
    layer = (MobiusLinear(3, 2, c=None) if kind == 'mobius' else PoincareLinear(3, 2, c=None)).double()
    torch.nn.init.normal_(next(iter(layer.parameters())))
    x = rand_ball(4, 3, c=0.7).requires_grad_()
    c = (torch.rand(4, 1, dtype=DT) + 0.5).requires_grad_()
    assert gradcheck(lambda xx, cc: layer(xx, c=cc), (x, c))


def test_gradcheck_attention_functional():
    torch.manual_seed(0)
    q, k, v = (rand_ball(1, 2, 3, 2, c=0.7).requires_grad_() for _ in range(3))
    beta = torch.tensor([0.5, 2.0], dtype=DT, requires_grad=True)
    c = torch.tensor(0.7, dtype=DT, requires_grad=True)
    for agg in ('einstein', 'gyromidpoint'):
        assert gradcheck(lambda *a: hyperbolic_attention(*a, aggregation=agg), (q, k, v, c, beta))


# -- boundary stability ------------------------------------------------------------------------------------------------
def edge_inputs(n, d, dt, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(n, d, generator=g, dtype=DT), dim=-1) / math.sqrt(c)
    edge = u * (1 - 1e-9)  # on the boundary to rounding (in half precision: past the margin)
    return torch.cat([edge, u * 3.0, torch.zeros(1, d, dtype=DT), u * 1e-8]).to(dt)


LAYERS = {
    'mobius_linear': lambda c: MobiusLinear(5, 4, c=c, learnable_c=True),
    'mobius_linear_manifold_bias': lambda c: MobiusLinear(5, 4, bias='manifold', c=c),
    'poincare_linear': lambda c: PoincareLinear(5, 4, c=c, learnable_c=True),
    'mlr_hnnpp': lambda c: HyperbolicMLR(5, 4, c=c, learnable_c=True),
    'mlr_ganea': lambda c: HyperbolicMLR(5, 4, c=c, param='ganea', manifold=True),
    'mlp_mobius': lambda c: HyperbolicMLP(5, 6, 'mobius', c=c, learnable_c=True),
    'mlp_poincare': lambda c: HyperbolicMLP(5, 6, 'poincare', c=c, learnable_c=True),
}


@pytest.mark.parametrize('dt', [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize('c', [1e-3, 1.0, 20.0])
@pytest.mark.parametrize('name', list(LAYERS))
def test_layers_finite_at_the_boundary(name, c, dt):
    torch.manual_seed(0)
    layer = LAYERS[name](c).to(dt)  # the curvature parameter too: its float16 gradient saturates instead of overflowing
    x = edge_inputs(4, 5, dt, c).requires_grad_()
    out = layer(x)
    assert out.dtype == dt and torch.isfinite(out).all()
    if name.startswith('mlr'):  # class scores: train them as classifiers are trained (logits reach 1e3 at c = 1e-3)
        F.cross_entropy(out.float(), torch.arange(len(out)) % out.shape[-1]).backward()
    else:
        assert (out.double().norm(dim=-1) * math.sqrt(c) < 1).all()
        out.float().square().sum().backward()
    for n, p in list(layer.named_parameters()) + [('x', x)]:
        if p.requires_grad: assert p.grad is not None and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize('dt', [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize('agg', ['einstein', 'gyromidpoint'])
def test_attention_finite_for_huge_inputs(agg, dt):
    torch.manual_seed(0)
    att = HyperbolicAttention(8, 2, aggregation=agg, rope=RotaryEmbedding(4, 16), window=3).to(dt)
    x = (torch.randn(2, 6, 8, dtype=DT) * 1e3).to(dt).requires_grad_()
    out = att(x)
    assert out.dtype == dt and torch.isfinite(out).all()
    out.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in att.parameters() if p.requires_grad) and torch.isfinite(x.grad).all()


FLOATS = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize('dt', FLOATS, ids=str)
@pytest.mark.parametrize('name', list(LAYERS))
def test_layers_finite_for_zero_inputs_in_every_dtype(name, dt):
    """Padding: all-zero inputs (the origin of the ball) through every layer, cast whole to `dt` — the curvature
    parameter too — forward and backward finite, also with zero weights."""
    torch.manual_seed(0)
    for zero_weights in (False, True):
        layer = LAYERS[name](1.0).to(dt)
        if zero_weights:
            with torch.no_grad():
                for n, p in layer.named_parameters():
                    if 'isp_c' not in n: p.zero_()
        x = torch.zeros(3, 5, dtype=dt, requires_grad=True)
        out = layer(x)
        assert out.dtype == dt and torch.isfinite(out).all(), (name, zero_weights)
        out.float().square().sum().backward()
        bad = [n for n, p in list(layer.named_parameters()) + [('x', x)]
               if p.requires_grad and p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, (name, zero_weights, bad)


@pytest.mark.parametrize('dt', FLOATS, ids=str)
@pytest.mark.parametrize('agg', ['einstein', 'gyromidpoint'])
def test_attention_and_embedding_finite_for_padding(agg, dt):
    "Zero tangent inputs at padded positions (and all positions), a zero embedding row: finite forward and backward."
    torch.manual_seed(0)
    att = HyperbolicAttention(8, 2, aggregation=agg, rope=RotaryEmbedding(4, 16)).to(dt)
    x = (torch.randn(2, 6, 8, dtype=DT)).to(dt)
    x[:, 3:] = 0                                                    # right padding
    x[1] = 0                                                        # a fully padded row
    x.requires_grad_()
    out = att(x)
    assert out.dtype == dt and torch.isfinite(out).all()
    out.float().square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in att.parameters() if p.requires_grad)
    emb = HyperbolicEmbedding(5, 4, learnable_c=True).to(dt)
    with torch.no_grad(): emb.weight[0] = 0                         # a padding token at the origin
    y = emb.tangent(torch.tensor([[0, 1, 0]]))
    assert y.dtype == dt and torch.isfinite(y).all() and (y[0, 0] == 0).all()
    y.float().sum().backward()
    assert torch.isfinite(emb.weight.grad).all() and torch.isfinite(emb.ball.isp_c.grad).all()


# -- attention ----------------------------------------------------------------------------------------------------
def test_attention_kv_cache_with_window_matches_full():
    torch.manual_seed(0)
    att = HyperbolicAttention(8, 2, rope=RotaryEmbedding(4, 32), window=3).double().eval()
    x = torch.randn(1, 9, 8, dtype=DT)
    full = att(x)
    cache = att.new_cache(1, 9)
    steps = torch.cat([att(x[:, i:i + 1], cache) for i in range(9)], 1)
    torch.testing.assert_close(steps, full)


def test_attention_weights_follow_distance_and_mask():
    q = k = v = rand_ball(1, 1, 4, 3, c=1.0)
    _, w = hyperbolic_attention(q, k, v, 1.0, beta=1.0, causal=True, return_weights=True)
    assert torch.all(torch.triu(w[0, 0], 1) == 0)
    # each query's largest weight (among allowed keys) goes to its nearest allowed key
    d = cdist(q, k).masked_fill(torch.triu(torch.ones(4, 4, dtype=torch.bool), 1), float('inf'))
    assert torch.equal(w.argmax(-1), d.argmin(-1))


def test_bad_configurations_fail_clearly():
    with pytest.raises(ConfigError, match='not divisible by n_head'): HyperbolicAttention(10, 3)
    with pytest.raises(ConfigError, match='einstein'): HyperbolicAttention(8, 2, aggregation='mean')
    with pytest.raises(ConfigError, match='needs its own ball'): MobiusLinear(3, 2, bias='manifold', c=None)
    with pytest.raises(ConfigError, match='pass the curvature'): PoincareLinear(3, 2, c=None)(torch.zeros(1, 3))
    with pytest.raises(ConfigError, match="param='ganea'"): HyperbolicMLR(3, 2, manifold=True)
    with pytest.raises(ConfigError, match=r'z must be \(K, n=3\)'): hnnpp_logits(torch.zeros(1, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ConfigError, match='Did you mean'): HyperbolicMLP(3, 4, kind='mobious')


# -- geoopt interop and persistence ------------------------------------------------------------------------------------
def test_riemannian_adam_keeps_manifold_parameters_on_the_ball():
    torch.manual_seed(0)
    lin, emb = MobiusLinear(3, 3, bias='manifold', c=2.0), HyperbolicEmbedding(10, 3, c=2.0, std=0.5)
    opt = geoopt.optim.RiemannianAdam([lin.bias, emb.weight], lr=0.5)
    for _ in range(20):
        loss = -(lin(emb(torch.arange(10))).norm(dim=-1).sum())      # pushes everything towards the boundary
        opt.zero_grad(); loss.backward(); opt.step()
    assert (lin.bias.norm() * math.sqrt(2) < 1) and (emb.weight.norm(dim=-1) * math.sqrt(2) < 1).all()


def test_embedding_and_layers_survive_safetensors(tmp_path):
    from bytropix.models.base import load_weights, save_weights
    torch.manual_seed(0)
    mods = torch.nn.ModuleDict({'emb': HyperbolicEmbedding(7, 4, learnable_c=True), 'lin': MobiusLinear(4, 4, bias='manifold'),
                                'mlr': HyperbolicMLR(4, 3, param='ganea', manifold=True), 'att': HyperbolicAttention(4, 2)})
    save_weights(mods, tmp_path / 'w.safetensors')
    torch.manual_seed(1)
    fresh = torch.nn.ModuleDict({'emb': HyperbolicEmbedding(7, 4, learnable_c=True), 'lin': MobiusLinear(4, 4, bias='manifold'),
                                 'mlr': HyperbolicMLR(4, 3, param='ganea', manifold=True), 'att': HyperbolicAttention(4, 2)})
    load_weights(fresh, tmp_path / 'w.safetensors')
    for (n, a), b in zip(mods.state_dict().items(), fresh.state_dict().values()): assert torch.equal(a, b), n
    assert isinstance(fresh['emb'].weight, geoopt.ManifoldParameter)


# -- rotations ----------------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(seed=seeds, n=st.integers(1, 12), scale=st.floats(0.0, 3.0))
def test_so_rotation_is_a_proper_rotation(seed, n, scale):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n * (n - 1) // 2, dtype=DT, generator=g) * scale
    R = so_matrix(w, n)
    torch.testing.assert_close(R.T @ R, torch.eye(n, dtype=DT), atol=1e-9, rtol=0)
    assert abs(torch.linalg.det(R).item() - 1) < 1e-9


@settings(max_examples=30, deadline=None)
@given(seed=seeds, m=st.integers(1, 4), scale=st.floats(0.01, 5.0))
def test_quaternion_rotation_is_a_proper_rotation(seed, m, scale):
    torch.manual_seed(seed)
    rot = QuaternionRotation(4 * m, init_std=scale).double()
    R = rot.matrix()
    torch.testing.assert_close(R.T @ R, torch.eye(4 * m, dtype=DT), atol=1e-9, rtol=0)
    assert abs(torch.linalg.det(R).item() - 1) < 1e-9
    x = torch.randn(5, 4 * m, dtype=DT)
    torch.testing.assert_close(rot(x).norm(dim=-1), x.norm(dim=-1))


def test_quaternion_rotations_reach_every_rotation_of_r4():
    # any R in SO(4) factors as x -> p x q̄: fit p, q to a random SO(4) matrix by gradient descent
    torch.manual_seed(0)
    target = so_matrix(torch.randn(6, dtype=DT), 4)
    p, q = torch.randn(1, 4, dtype=DT, requires_grad=True), torch.randn(1, 4, dtype=DT, requires_grad=True)
    opt = torch.optim.Adam([p, q], lr=0.05)
    eye = torch.eye(4, dtype=DT)
    for _ in range(1500):
        R = quaternion_rotate(eye, unit_quaternion(p), unit_quaternion(q)).T
        loss = (R - target).square().sum()
        opt.zero_grad(); loss.backward(); opt.step()
    assert loss.item() < 1e-8


def test_rotation_gradients_reach_the_parameters():
    for rot in (SORotation(5, init_std=0.3), QuaternionRotation(8, init_std=0.3)):
        x = torch.randn(3, rot.dim)
        (rot(x) * torch.randn(3, rot.dim)).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rot.parameters())
    assert make_rotation('identity', 4).matrix().equal(torch.eye(4))

"""Property-based tests of bytropix.geometry (hypothesis): agreement with geoopt, gyrogroup axioms, inverses,
isometries, transport, gradients (points and curvature), finiteness and dtypes.

Points are drawn as direction × radius with the radius a fraction of the ball's radius 1/sqrt(c), so every
example is a valid point of the ball; curvatures span two orders of magnitude.
"""
import math

import geoopt.manifolds.stereographic.math as gm
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bytropix import geometry as G

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F64 = torch.float64

curv = st.floats(0.05, 5.0)
dims = st.integers(1, 8)
seeds = st.integers(0, 2**31 - 1)


def points(seed: int, n: int, d: int, c: float, rmax: float = 0.95, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=F64)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    r = torch.rand(n, 1, generator=g, dtype=F64) * rmax
    return (v * r / math.sqrt(c)).to(dtype)


def vectors(seed: int, n: int, d: int, scale: float = 1.0, dtype=F64) -> torch.Tensor:
    return (torch.randn(n, d, generator=torch.Generator().manual_seed(seed + 7), dtype=F64) * scale).to(dtype)


def assert_close(a, b, tol, what=''):
    err = ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1.0)).item()
    assert err <= tol, f'{what}: error {err:.2e} > {tol:.0e}'


def k_of(c, dtype=F64):
    return torch.tensor(-c, dtype=dtype)


# ---------------------------------------------------------------------------------------------- geoopt agreement
@SETTINGS
@given(seed=seeds, d=dims, c=curv)
def test_agrees_with_geoopt_float64(seed, d, c):
    x, y, z = points(seed, 16, d, c), points(seed + 1, 16, d, c), points(seed + 2, 16, d, c)
    v = vectors(seed, 16, d)
    M = vectors(seed + 3, d + 1, d, scale=0.5)
    r = vectors(seed + 4, 16, 1)
    k = k_of(c)
    P = lambda t: gm.project(t, k=k)
    pairs = [
        (G.mobius_add(x, y, c), P(gm.mobius_add(x, y, k=k)), 'mobius_add'),
        (G.mobius_sub(x, y, c), P(gm.mobius_sub(x, y, k=k)), 'mobius_sub'),
        (G.expmap0(v, c), P(gm.expmap0(v, k=k)), 'expmap0'),
        (G.logmap0(x, c), gm.logmap0(x, k=k), 'logmap0'),
        (G.expmap(x, v, c), P(gm.expmap(x, v, k=k)), 'expmap'),
        (G.logmap(x, y, c), gm.logmap(x, y, k=k), 'logmap'),
        (G.dist(x, y, c), gm.dist(x, y, k=k), 'dist'),
        (G.dist0(x, c), gm.dist0(x, k=k), 'dist0'),
        (G.cdist(x, y[:5], c), gm.dist(x[:, None], y[None, :5], k=k), 'cdist'),
        (G.lambda_x(x, c), gm.lambda_x(x, k=k, keepdim=True), 'lambda_x'),
        (G.gyration(x, y, z, c), gm.gyration(x, y, z, k=k), 'gyration'),
        (G.parallel_transport(x, y, v, c), gm.parallel_transport(x, y, v, k=k), 'parallel_transport'),
        (G.egrad2rgrad(x, v, c), gm.egrad2rgrad(x, v, k=k), 'egrad2rgrad'),
        (G.mobius_scalar_mul(r, x, c), P(gm.mobius_scalar_mul(r, x, k=k)), 'mobius_scalar_mul'),
        (G.mobius_matvec(M, x, c), P(gm.mobius_matvec(M, x, k=k)), 'mobius_matvec'),
        (G.project(v, c), gm.project(v, k=k), 'project'),
    ]
    for ours, ref, name in pairs:
        # logmap/transport near the boundary amplify geoopt's own float64 round-off; 1e-9 relative to the values
        assert_close(ours, ref, 1e-9, name)


@SETTINGS
@given(seed=seeds, d=dims, c=curv)
def test_agrees_with_geoopt_float32(seed, d, c):
    "float32: both libraries against the float64 truth on the same float32 inputs; ours at least as accurate."
    x, y = points(seed, 16, d, c, rmax=0.9, dtype=torch.float32), points(seed + 1, 16, d, c, rmax=0.9, dtype=torch.float32)
    v = vectors(seed, 16, d, dtype=torch.float32)
    k = k_of(c, torch.float32)
    P = lambda t: gm.project(t, k=k)
    for op, ref, args in [(G.mobius_add, lambda a, b: P(gm.mobius_add(a, b, k=k)), (x, y)),
                          (G.expmap0, lambda a: P(gm.expmap0(a, k=k)), (v,)),
                          (G.logmap0, lambda a: gm.logmap0(a, k=k), (x,)),
                          (G.expmap, lambda a, b: P(gm.expmap(a, b, k=k)), (x, v)),
                          (G.logmap, lambda a, b: gm.logmap(a, b, k=k), (x, y)),
                          (G.dist, lambda a, b: gm.dist(a, b, k=k), (x, y))]:
        ours = op(*args, c)
        assert ours.dtype == torch.float32
        truth = op(*[a.double() for a in args], c)
        scale = truth.abs().max().clamp_min(1.0)
        err_ours = ((ours.double() - truth).abs().max() / scale).item()
        err_geo = ((ref(*args).double() - truth).abs().max() / scale).item()
        assert err_ours <= max(1e-5, 2 * err_geo), f'{op.__name__}: ours {err_ours:.1e}, geoopt {err_geo:.1e}'


# ---------------------------------------------------------------------------------------------- algebra
@SETTINGS
@given(seed=seeds, d=dims, c=curv)
def test_gyrogroup_axioms(seed, d, c):
    x, y, z = points(seed, 8, d, c, 0.9), points(seed + 1, 8, d, c, 0.9), points(seed + 2, 8, d, c, 0.9)
    add = lambda a, b: G.mobius_add(a, b, c)
    zero = torch.zeros_like(x)
    assert_close(add(zero, x), x, 1e-12, 'left identity')
    assert_close(add(-x, x), zero, 1e-12, 'left inverse')
    assert_close(add(-x, add(x, y)), y, 1e-9, 'left cancellation')
    assert_close(add(x, add(y, z)), add(add(x, y), G.gyration(x, y, z, c)), 1e-9, 'left gyroassociativity')
    assert_close(add(x, y), G.gyration(x, y, add(y, x), c), 1e-9, 'gyrocommutativity')
    # gyrations are orthogonal maps and gyr[x, y] is inverted by gyr[y, x]
    assert_close(G.gyration(x, y, z, c).norm(dim=-1), z.norm(dim=-1), 1e-10, 'gyration isometry')
    assert_close(G.gyration(y, x, G.gyration(x, y, z, c), c), z, 1e-9, 'gyration inverse')


@SETTINGS
@given(seed=seeds, d=dims, c=curv)
def test_exp_log_inverse(seed, d, c):
    x, y = points(seed, 8, d, c, 0.9), points(seed + 1, 8, d, c, 0.9)
    v = vectors(seed, 8, d, scale=0.5 / math.sqrt(c))
    assert_close(G.expmap0(G.logmap0(x, c), c), x, 1e-10, 'exp0 log0')
    assert_close(G.logmap0(G.expmap0(v, c), c), v, 1e-8, 'log0 exp0')
    assert_close(G.expmap(x, G.logmap(x, y, c), c), y, 1e-8, 'exp log')
    # log_x(exp_x(v)) = v while exp_x(v) stays well inside the margin
    w = v * 0.2 / G.lambda_x(x, c)
    assert_close(G.logmap(x, G.expmap(x, w, c), c), w, 1e-8, 'log exp')
    # d(x, exp_x(v)) = |v|_x = lambda_x |v|
    assert_close(G.dist(x, G.expmap(x, w, c), c), (G.lambda_x(x, c) * w.norm(dim=-1, keepdim=True)).squeeze(-1), 1e-8, 'speed')


@SETTINGS
@given(seed=seeds, d=st.integers(2, 8), c=curv)
def test_distance_isometries(seed, d, c):
    x, y, a = points(seed, 8, d, c, 0.9), points(seed + 1, 8, d, c, 0.9), points(seed + 2, 1, d, c, 0.9)
    base = G.dist(x, y, c)
    assert_close(G.dist(G.mobius_add(a, x, c), G.mobius_add(a, y, c), c), base, 1e-8, 'Möbius left translation')
    Q = torch.linalg.qr(vectors(seed, d, d))[0]
    assert_close(G.dist(x @ Q, y @ Q, c), base, 1e-12, 'orthogonal map')
    assert_close(G.dist(y, x, c), base, 1e-12, 'symmetry')
    assert (base >= 0).all()
    z = points(seed + 3, 8, d, c, 0.9)
    assert (G.dist(x, z, c) <= G.dist(x, y, c) + G.dist(y, z, c) + 1e-9).all(), 'triangle inequality'
    assert_close(G.cdist(x, y, c).diagonal(), base, 1e-12, 'cdist diagonal')


@SETTINGS
@given(seed=seeds, d=dims, c=curv)
def test_parallel_transport_preserves_metric(seed, d, c):
    x, y = points(seed, 8, d, c, 0.9), points(seed + 1, 8, d, c, 0.9)
    u, v = vectors(seed, 8, d), vectors(seed + 1, 8, d)
    pu, pv = G.parallel_transport(x, y, u, c), G.parallel_transport(x, y, v, c)
    lx, ly = G.lambda_x(x, c), G.lambda_x(y, c)
    assert_close(ly * pu.norm(dim=-1, keepdim=True), lx * u.norm(dim=-1, keepdim=True), 1e-9, 'norm')
    assert_close(ly**2 * (pu * pv).sum(-1, keepdim=True), lx**2 * (u * v).sum(-1, keepdim=True), 1e-8, 'inner product')
    assert_close(G.parallel_transport(y, x, pu, c), u, 1e-8, 'transport back')
    # the geodesic's own velocity is transported to minus the log back: P(log_x y) = -log_y x
    assert_close(G.parallel_transport(x, y, G.logmap(x, y, c), c), -G.logmap(y, x, c), 1e-8, 'velocity')


@SETTINGS
@given(seed=seeds, d=dims, c=curv)
def test_model_maps_roundtrip(seed, d, c):
    x, y = points(seed, 8, d, c, 0.9), points(seed + 1, 8, d, c, 0.9)
    p, q = G.poincare_to_lorentz(x, c), G.poincare_to_lorentz(y, c)
    mink = lambda a, b: -a[..., 0] * b[..., 0] + (a[..., 1:] * b[..., 1:]).sum(-1)
    assert_close(mink(p, p) * c, -torch.ones(8, dtype=F64), 1e-9, 'on the hyperboloid')
    assert_close(G.lorentz_to_poincare(p, c), x, 1e-10, 'lorentz roundtrip')
    assert_close(torch.acosh((-c * mink(p, q)).clamp_min(1)) / math.sqrt(c), G.dist(x, y, c), 1e-6, 'lorentz distance')
    assert_close(G.klein_to_poincare(G.poincare_to_klein(x, c), c), x, 1e-10, 'klein roundtrip')


# ---------------------------------------------------------------------------------------------- autograd
def _gradcheck(fn, *args, c):
    ct = torch.tensor(c, dtype=F64, requires_grad=True)
    ins = [a.detach().clone().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: fn(*a[:-1], c=a[-1]), (*ins, ct), eps=1e-6, atol=1e-6, rtol=1e-4)


@settings(max_examples=8, deadline=None)
@given(seed=seeds, c=st.floats(0.2, 3.0))
def test_gradcheck_including_curvature(seed, c):
    x, y = points(seed, 3, 3, c, 0.8), points(seed + 1, 3, 3, c, 0.8)
    v, M = vectors(seed, 3, 3), vectors(seed + 2, 2, 3, scale=0.5)
    for fn, args in [(G.mobius_add, (x, y)), (G.expmap0, (v,)), (G.logmap0, (x,)), (G.expmap, (x, v)),
                     (G.logmap, (x, y)), (G.dist, (x, y)), (G.dist0, (x,)), (G.cdist, (x, y)), (G.gyration, (x, y, v)),
                     (G.parallel_transport, (x, y, v)), (G.mobius_matvec, (M, x)),
                     (G.mobius_linear, (x, M, points(seed + 5, 1, 2, c, 0.8)[0]))]:
        _gradcheck(fn, *args, c=c)


# ---------------------------------------------------------------------------------------------- numerics
HUGE = st.floats(1e2, 1e6)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@settings(max_examples=10, deadline=None)
@given(seed=seeds, d=dims, c=curv, huge=HUGE)
def test_finite_forward_backward_and_inside(dtype, seed, d, c, huge):
    if dtype == torch.float16: huge = min(huge, 6e4)  # the largest float16 is 65504
    r = 1 - G.ball_eps(dtype)
    x = points(seed, 6, d, c, 1.0).to(dtype)                       # up to the boundary (and rounding past it)
    edge = (points(seed + 1, 6, d, c, 1.0) / points(seed + 1, 6, d, c, 1.0).norm(dim=-1, keepdim=True).clamp_min(1e-300)
            * r / math.sqrt(c)).to(dtype)                          # the outermost valid points
    v = vectors(seed, 6, d)
    v = (v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300) * huge).to(dtype)  # tangent vectors of norm `huge`
    zero = torch.zeros(6, d, dtype=dtype)
    for fn, args, is_point in [(G.expmap0, (v,), True), (G.expmap0, (zero,), True), (G.expmap, (edge, v), True),
                               (G.mobius_add, (edge, edge), True), (G.mobius_add, (x, -x), True),
                               (G.logmap0, (x,), False), (G.logmap0, (zero,), False), (G.logmap, (edge, -edge), False),
                               (G.dist, (edge, -edge), False), (G.dist, (x, x), False), (G.dist0, (x,), False),
                               (G.mobius_scalar_mul, (3.0, edge), True), (G.project, (v,), True)]:
        ins = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        ct = torch.tensor(c, requires_grad=True)
        out = fn(*ins, c=ct)
        assert out.dtype == dtype, fn.__name__
        assert torch.isfinite(out).all(), (fn.__name__, dtype)
        if is_point:
            assert (out.double().norm(dim=-1) < 1 / math.sqrt(c)).all(), (fn.__name__, dtype)
        grads = torch.autograd.grad(out.float().sum(), [a for a in ins if isinstance(a, torch.Tensor)] + [ct])
        assert all(torch.isfinite(g).all() for g in grads), (fn.__name__, dtype)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, d=dims, c=curv)
def test_half_matches_float32(seed, d, c):
    x, y = points(seed, 32, d, c, 0.9, torch.float32), points(seed + 1, 32, d, c, 0.9, torch.float32)
    for dt, tol in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        xh, yh = x.to(dt), y.to(dt)
        for fn in (G.mobius_add, G.logmap, G.dist):
            out, ref = fn(xh, yh, c), fn(xh.float(), yh.float(), c)
            assert out.dtype == dt
            assert_close(out, ref, tol, f'{fn.__name__} {dt}')


def test_per_row_curvature_broadcasts():
    x, y = points(0, 5, 3, 1.0, 0.5), points(1, 5, 3, 1.0, 0.5)
    cs = torch.linspace(0.2, 2.0, 5, dtype=F64)[:, None]
    rows = torch.stack([G.dist(x[i], y[i], float(cs[i])) for i in range(5)])
    assert_close(G.dist(x, y, cs), rows, 1e-14, 'per-row c')
    assert_close(G.mobius_add(x, y, cs), torch.stack([G.mobius_add(x[i], y[i], float(cs[i])) for i in range(5)]), 1e-14, 'add')


def test_bad_curvature_is_a_clear_error():
    from bytropix.core import ConfigError
    for bad in (0.0, -1.0, float('nan'), float('inf'), 'one', True):
        with pytest.raises(ConfigError, match='[Cc]urvature'):
            G.dist0(torch.zeros(2, 3), bad)

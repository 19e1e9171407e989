"""Property-based tests of bytropix.geometry (hypothesis): agreement with geoopt, gyrogroup axioms, inverses,
isometries, transport, gradients (points and curvature), accuracy against float64, and finiteness of every op's
forward and backward in every float dtype at zero vectors, at the origin and on the boundary.

Points are drawn as direction × radius with the radius a fraction of the ball's radius 1/sqrt(c), so every
example is a valid point of the ball; curvatures span two orders of magnitude.

Reproducible by default: the `ci` profile derandomizes hypothesis (the same examples on every run and machine)
and uses no example database. `BYTROPIX_PROPERTY_PROFILE=thorough` draws 20x as many fresh random examples and
keeps failures in hypothesis' database (commit each counterexample it finds as an explicit test).
"""
import math
import os

import geoopt.manifolds.stereographic.math as gm
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bytropix import geometry as G

PROFILE = os.environ.get('BYTROPIX_PROPERTY_PROFILE', 'ci')
if PROFILE not in ('ci', 'thorough'):
    raise ValueError(f"BYTROPIX_PROPERTY_PROFILE must be 'ci' or 'thorough', got {PROFILE!r}")


def prop(n: int) -> settings:
    "Settings of a property test with `n` examples in the `ci` profile (see the module docstring)."
    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    if PROFILE == 'thorough': return settings(max_examples=20 * n, **common)
    return settings(max_examples=n, derandomize=True, database=None, **common)


SETTINGS = prop(25)
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


ACCURACY_F32 = 1e-5  # max |error| / max(1, |truth|) of the float32 ops below (measured: ≤ 2.6e-6 over 24k rows)


@SETTINGS
@given(seed=seeds, d=dims, c=curv)
def test_float32_accuracy_against_float64(seed, d, c):
    """float32 results against the float64 truth computed from the same float32 inputs: a fixed error bound.

    Not "at least as accurate as geoopt": near-antipodal sums x ⊕ y (and exp_x(v), a Möbius sum) lose up to ~5e-5
    in geoopt's form of the Möbius sum (and in ours before the stable form: the same formula) although the
    function is well conditioned there; which of two equally unstable float32 results happens to be closer is
    rounding luck, and that made the former criterion flaky (seed=1, d=1, c=0.375: expmap error 4.0e-05 vs
    geoopt 2.3e-06)."""
    x, y = points(seed, 16, d, c, rmax=0.9, dtype=torch.float32), points(seed + 1, 16, d, c, rmax=0.9, dtype=torch.float32)
    v = vectors(seed, 16, d, dtype=torch.float32)
    margin = (1 - G.ball_eps(torch.float32)) / math.sqrt(c)  # float64 results are projected with float64's margin
    clip = lambda t: t * (margin / t.norm(dim=-1, keepdim=True).clamp_min(1e-300)).clamp_max(1.0)
    for op, args, is_point in [(G.mobius_add, (x, y), True), (G.mobius_add, (x, -x * 0.999), True), (G.expmap0, (v,), True),
                               (G.logmap0, (x,), False), (G.expmap, (x, v), True), (G.expmap, (x, -G.logmap0(x, c) * 2), True),
                               (G.logmap, (x, y), False), (G.dist, (x, y), False)]:
        ours = op(*args, c)
        assert ours.dtype == torch.float32
        truth = op(*[a.double() for a in args], c)
        if is_point: truth = clip(truth)
        err = ((ours.double() - truth).abs().max() / truth.abs().max().clamp_min(1.0)).item()
        assert err <= ACCURACY_F32, f'{op.__name__}: error {err:.1e}'


def test_near_antipodal_mobius_sum_float32():
    "The stored counterexample and a sweep of 1-D exp_x(v) across the origin: accurate where geoopt is not."
    c = 0.375
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(20000, 1, generator=g, dtype=F64) * 2 - 1) * 0.9 / math.sqrt(c)
    v = torch.randn(20000, 1, generator=g, dtype=F64)
    x = torch.cat([x, torch.tensor([[-1.4692522287368774]], dtype=F64)]).float()
    v = torch.cat([v, torch.tensor([[0.8614068031311035]], dtype=F64)]).float()
    truth = G.expmap(x.double(), v.double(), c)
    margin = (1 - G.ball_eps(torch.float32)) / math.sqrt(c)   # the float32 results' projection
    truth = truth * (margin / truth.norm(dim=-1, keepdim=True)).clamp_max(1.0)
    k = k_of(c, torch.float32)
    err = lambda out: (out.double() - truth).abs().max().item()
    assert err(G.expmap(x, v, c)) <= ACCURACY_F32                        # measured 4.5e-6
    assert err(gm.project(gm.expmap(x, v, k=k), k=k)) > 2e-5  # geoopt's form of the sum: 4.7e-5, measured


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


@prop(8)
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
@prop(10)
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


@prop(20)
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


# ---------------------------------------------------------------------------------------------- zero vectors, origin, boundary
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
POINT_KINDS = ['origin', 'tiny', 'inner', 'margin', 'on', 'past']  # 'on': norm 1/sqrt(c) in the dtype; 'past': 1.01x
VECTOR_KINDS = ['zero', 'tiny', 'unit', 'huge']


def point(kind: str, c: float, dtype, d: int = 4, n: int = 3, seed: int = 0) -> torch.Tensor:
    "Points of the ball of curvature -c at a given kind of radius, rounded to `dtype`."
    if kind == 'origin': return torch.zeros(n, d, dtype=dtype)
    u = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    u = u / u.norm(dim=-1, keepdim=True)
    r = {'tiny': 1e-4, 'inner': 0.5, 'margin': 1 - G.ball_eps(dtype), 'on': 1.0, 'past': 1.01}[kind]
    return (u * r / math.sqrt(c)).to(dtype)


def vector(kind: str, dtype, d: int = 4, n: int = 3, seed: int = 1) -> torch.Tensor:
    if kind == 'zero': return torch.zeros(n, d, dtype=dtype)
    u = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    if kind == 'huge': u = u / u.norm(dim=-1, keepdim=True) * 6e4   # the largest float16 is 65504
    return (u * (1e-6 if kind == 'tiny' else 1.0)).to(dtype)


def _cases(c: float, dt, d: int):
    "(name, op, args, returns a point?) for every public op over the kinds of points and vectors above."
    P = lambda k, seed=0: point(k, c, dt, d, seed=seed)
    V = lambda k, seed=1: vector(k, dt, d, seed=seed)
    M = torch.randn(3, d, generator=torch.Generator().manual_seed(2), dtype=F64).to(dt)
    out = []
    for k in VECTOR_KINDS:
        out += [('expmap0', G.expmap0, (V(k),), True), ('project', G.project, (V(k),), True)]
    for k in POINT_KINDS:
        x = P(k)
        hyp = G.poincare_to_lorentz(P(k), c)
        out += [('logmap0', G.logmap0, (x,), False), ('dist0', G.dist0, (x,), False), ('lambda_x', G.lambda_x, (x,), False),
                ('project', G.project, (x,), True), ('poincare_to_lorentz', G.poincare_to_lorentz, (x,), False),
                ('lorentz_to_poincare', G.lorentz_to_poincare, (hyp,), True),
                ('poincare_to_klein', G.poincare_to_klein, (x,), False),
                ('klein_to_poincare', G.klein_to_poincare, (x,), True),
                ('mobius_scalar_mul', G.mobius_scalar_mul, (2.0, x), True),
                ('mobius_scalar_mul r=0', G.mobius_scalar_mul, (torch.zeros(3, 1, dtype=dt), x), True),
                ('mobius_matvec', G.mobius_matvec, (M, x), True),
                ('mobius_matvec M=0', G.mobius_matvec, (torch.zeros_like(M), x), True),
                ('mobius_linear', G.mobius_linear, (x, M, P('inner', 3)[0, :3] if d >= 3 else None), True),
                ('mobius_linear W=0', G.mobius_linear, (x, torch.zeros_like(M), None), True)]
        for kv in VECTOR_KINDS:
            out += [('expmap', G.expmap, (x, V(kv)), True), ('egrad2rgrad', G.egrad2rgrad, (x, V(kv)), False)]
        for k2 in POINT_KINDS:
            for y in (P(k2, 5), x, -x):
                out += [('mobius_add', G.mobius_add, (x, y), True), ('mobius_sub', G.mobius_sub, (x, y), True),
                        ('logmap', G.logmap, (x, y), False), ('dist', G.dist, (x, y), False),
                        ('cdist', G.cdist, (x, y), False), ('gyration', G.gyration, (x, y, V('unit')), False),
                        ('gyration w=0', G.gyration, (x, y, V('zero')), False),
                        ('parallel_transport', G.parallel_transport, (x, y, V('unit')), False),
                        ('parallel_transport v=0', G.parallel_transport, (x, y, V('zero')), False)]
    return out


@pytest.mark.parametrize('dtype', FLOATS, ids=str)
@pytest.mark.parametrize('c', [1e-3, 1.0, 50.0])
def test_every_op_finite_at_zero_origin_and_boundary(dtype, c):
    """Forward and backward (every tensor input and a learnable c) finite in every float dtype, for zero and huge
    tangent vectors and for points at the origin, on the margin, on the boundary and past it (rounding puts
    half-precision points there); point-valued results inside the ball."""
    failures = []
    for d in (1, 4):
        for name, fn, args, is_point in _cases(c, dtype, d):
            ins = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
            ct = torch.tensor(c, requires_grad=True)
            out = fn(*ins, c=ct)
            where = f'{name} d={d} inputs |.|={[round(float(a.double().norm()), 4) for a in args if isinstance(a, torch.Tensor)]}'
            if out.dtype != dtype: failures.append(f'{where}: dtype {out.dtype}'); continue
            if not torch.isfinite(out).all(): failures.append(f'{where}: forward'); continue
            if is_point and not (out.double().norm(dim=-1) < 1 / math.sqrt(c)).all(): failures.append(f'{where}: outside')
            wrt = [a for a in ins if isinstance(a, torch.Tensor)] + [ct]
            grads = torch.autograd.grad(out.float().sum(), wrt, allow_unused=True)
            if not all(g is None or torch.isfinite(g).all() for g in grads): failures.append(f'{where}: backward')
    assert not failures, f'{len(failures)} failures, e.g. ' + '; '.join(sorted(set(failures))[:8])


@pytest.mark.parametrize('dtype', FLOATS, ids=str)
@pytest.mark.parametrize('kind', POINT_KINDS)
def test_expmap_differential_at_zero(dtype, kind):
    """d exp_x(v)/dv at v = 0 is the identity at every point x inside the margin (exp_x(v) = x + v + O(|v|²)); in
    float16 this gradient was ±inf (then NaN downstream) at points that rounding put on the boundary. Points on or
    past the margin count as margin points, where the projection of the result keeps the tangential directions."""
    c = 0.5
    x = point(kind, c, dtype)
    v = torch.zeros_like(x, requires_grad=True)
    J = torch.stack([torch.autograd.grad(G.expmap(x, v, c)[:, i].float().sum(), v)[0] for i in range(x.shape[-1])], -2)
    assert torch.isfinite(J).all()
    J = J.double()
    eye = torch.eye(x.shape[-1], dtype=F64).expand(x.shape[0], -1, -1)
    tol = {torch.float16: 4e-3, torch.bfloat16: 2e-2, torch.float32: 1e-6, torch.float64: 1e-12}[dtype]
    if kind in ('origin', 'tiny', 'inner'):
        assert_close(J, eye, tol, f'Jacobian at {kind}')
    else:  # J restricted to the tangent space of the margin sphere at x is the identity there
        u = x.double() / x.double().norm(dim=-1, keepdim=True)
        T = eye - u[:, :, None] * u[:, None, :]
        assert_close(J @ T, T, 10 * tol, f'tangential Jacobian at {kind}')


@pytest.mark.parametrize('dtype', FLOATS, ids=str)
@prop(15)
@given(seed=seeds, d=dims, c=curv)
def test_zero_tangent_vectors(dtype, seed, d, c):
    "exp_x(0) = x, exp_0(0) = 0, log_x(x) = 0, transport of 0 is 0 — values exact and every gradient finite."
    x = points(seed, 8, d, c, 0.9).to(dtype).requires_grad_()
    zero = torch.zeros(8, d, dtype=dtype, requires_grad=True)
    ct = torch.tensor(c, requires_grad=True)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6, torch.float64: 1e-12}[dtype]
    y = points(seed + 1, 8, d, c, 0.9).to(dtype)
    for out, want in [(G.expmap(x, zero, ct), x), (G.expmap0(zero, ct), zero), (G.logmap(x, x, ct), zero),
                      (G.logmap0(zero, ct), zero), (G.parallel_transport(x, y, zero, ct), zero),
                      (G.mobius_add(x, zero, ct), x), (G.mobius_add(zero, x, ct), x), (G.dist(x, x, ct), zero[:, 0])]:
        assert out.dtype == dtype
        assert_close(out, want.detach(), tol)
        grads = torch.autograd.grad(out.float().sum(), [x, zero, ct], allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)

"""Heavier checks of `bytropix.kernels` than the notebook's: every operation x dtype x shape, strides and broadcasts,
curvature variants, declines, determinism, and importing without Triton.

On a machine without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set here before the
kernels are imported; CI exports it for the whole suite). With CUDA and no TRITON_INTERPRET they run on the GPU.
"""
import itertools
import math
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

pytest.importorskip('triton')

from bytropix import geometry  # noqa: E402
from bytropix import kernels as K  # noqa: E402

INTERPRET = os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')
DEV = 'cuda' if torch.cuda.is_available() and not INTERPRET else 'cpu'
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


_seeds = iter(range(1000, 10**9))


def ball(*shape, r=0.8, c=0.8, dtype=torch.float32, seed=None):
    g = _gen(next(_seeds) if seed is None else seed)
    v = torch.randn(*shape, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30) * torch.rand(*shape[:-1], 1, generator=g, dtype=torch.float64)
    return (v * r / math.sqrt(c)).to(dtype).to(DEV)


def tangent(*shape, scale=1.0, dtype=torch.float32, seed=None):
    g = _gen(next(_seeds) if seed is None else seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).to(DEV)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item() if b.numel() else 0.0


def check(op, *args, c=0.8, tol=None, c_grad=True, **kw):
    "Kernel vs geometry.TORCH_OPS on the same inputs: the output and the gradient of every tensor input (and c)."
    dtype = args[0].dtype
    tol = tol or TOL[dtype]
    if isinstance(c, float) and c_grad:
        c = torch.tensor(c, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=DEV)
    def fresh(a):
        return a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
    ins, ins_r = [fresh(a) for a in args], [fresh(a) for a in args]
    grad_c = isinstance(c, torch.Tensor) and c_grad
    ck, cr = (fresh(c), fresh(c)) if grad_c else (c, c)
    out = K.KERNELS[op](*ins, c=ck, **kw)
    assert out is not NotImplemented
    ref = geometry.TORCH_OPS[op](*ins_r, c=cr, **kw)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all()
    g = torch.randn(ref.shape, generator=_gen(7), dtype=torch.float64).to(ref.dtype).to(DEV)
    wrt = [a for a in ins if isinstance(a, torch.Tensor)] + ([ck] if grad_c else [])
    wrt_r = [a for a in ins_r if isinstance(a, torch.Tensor)] + ([cr] if grad_c else [])
    gk = torch.autograd.grad(out, wrt, g)
    gr = torch.autograd.grad(ref, wrt_r, g)
    errs = [rel_err(out, ref)] + [rel_err(a, b) for a, b in zip(gk, gr)]
    if grad_c:  # a sum over all elements: measure it against the size of its terms, sum |g * d out/dc|
        floor = 1e-6 * (g.double().abs() * ref.detach().double().abs()).sum().item()  # when dL/dc is ~0 exactly
        errs[-1] = (gk[-1] - gr[-1]).abs().item() / max(c_scale(op, args, c, g, kw), floor, 1e-30)
    assert max(errs) < tol, f'{op} {dtype}: relative errors (output, grads) {["%.1e" % e for e in errs]} > {tol}'
    return gk


def c_scale(op, args, c, g, kw, h=1e-6):
    "sum |g * d out/dc|, with d out/dc by central differences in float64."
    a64 = [a.detach().double() if isinstance(a, torch.Tensor) else a for a in args]
    c0 = float(c)
    d = (geometry.TORCH_OPS[op](*a64, c=c0 + h, **kw) - geometry.TORCH_OPS[op](*a64, c=c0 - h, **kw)) / (2 * h)
    return (g.double().abs() * d.abs()).sum().item()


def args_for(op, R, D, dtype, seed=0):
    x, y = ball(R, D, dtype=dtype, seed=seed), ball(R, D, dtype=dtype, seed=seed + 1)
    v = tangent(R, D, dtype=dtype, seed=seed + 2)
    if op in ('mobius_add', 'logmap', 'dist'): return (x, y)
    if op == 'expmap': return (x, v)
    if op == 'expmap0': return (v,)
    if op == 'logmap0': return (x,)
    if op == 'project': return (tangent(R, D, scale=0.6, dtype=dtype, seed=seed),)
    if op == 'cdist': return (ball(R, D, dtype=dtype, seed=seed), ball(max(1, R // 2 + 1), D, dtype=dtype, seed=seed + 1))
    if op == 'mobius_linear':
        return (x, tangent(D + 2, D, scale=D ** -0.5, dtype=dtype, seed=seed + 3), ball(D + 2, dtype=dtype, seed=seed + 4))
    raise KeyError(op)


OPS = list(K.KERNELS)


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('op', OPS)
def test_every_op_every_dtype(op, dtype):
    for R, D in [(5, 3), (257, 17)] if op != 'cdist' else [(5, 3), (40, 17)]:
        check(op, *args_for(op, R, D, dtype))


@pytest.mark.parametrize('op', OPS)
def test_shapes(op):
    for R in (1, 5, 257):
        for D in (1, 3, 17, 130):
            if R * D > (2000 if op in ('cdist', 'mobius_linear') else 5000): continue  # slow in the interpreter
            check(op, *args_for(op, R, D, torch.float32, seed=R + D))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize('op', [o for o in OPS if o not in ('cdist', 'mobius_linear')])
def test_rows_wider_than_a_block(op, dtype):
    check(op, *args_for(op, 3, K._MAX_BLOCK_D + 5, dtype))


def test_mobius_linear_wide():
    x = ball(3, K._MAX_BLOCK_D + 3)
    check('mobius_linear', x, tangent(5, x.shape[-1], scale=x.shape[-1] ** -0.5), ball(5))
    check('mobius_linear', ball(3, 7), tangent(K._MAX_BLOCK_D + 2, 7, scale=0.3), ball(K._MAX_BLOCK_D + 2, r=0.5))


def test_strides_and_broadcasts():
    check('mobius_add', ball(9, 6).t(), ball(6, 9))  # transposed: last dim not contiguous
    check('expmap', ball(7, 20)[:, 3:14], tangent(7, 11))  # sliced rows: a strided view, no copy
    check('logmap', ball(4, 5, 8)[:, ::2], ball(4, 3, 8))  # every other row
    check('mobius_add', ball(3, 5, 4), ball(4))  # one point broadcast to every row (stride 0)
    check('expmap', ball(3, 5, 4), tangent(5, 4))  # broadcast over the leading dimension: expanded
    check('dist', ball(3, 1, 4), ball(1, 6, 4), keepdim=True)
    check('cdist', ball(2, 3, 4, 5), ball(3, 6, 5))  # batch broadcast
    check('cdist', ball(9, 5)[::2], ball(3, 5).t().contiguous().t())
    check('mobius_linear', ball(2, 3, 6).transpose(0, 1), tangent(4, 6, scale=0.4), ball(4))
    check('mobius_linear', ball(5, 6), tangent(6, 4, scale=0.4).t(), None)  # non-contiguous weight


def test_noncontiguous_upstream_gradients():
    x, y = ball(6, 5).requires_grad_(), ball(6, 5)
    K.mobius_add(x, y, 0.8).sum().backward()  # an expanded (stride-0) gradient
    x2 = x.detach().clone().requires_grad_()
    geometry.TORCH_OPS['mobius_add'](x2, y, c=0.8).sum().backward()
    assert rel_err(x.grad, x2.grad) < 1e-5
    x.grad = None
    K.dist(x, y, 0.8).sum().backward()
    x2.grad = None
    geometry.TORCH_OPS['dist'](x2, y, c=0.8).sum().backward()
    assert rel_err(x.grad, x2.grad) < 1e-5


@pytest.mark.parametrize('c', [0.8, 1, 'tensor0', 'tensor1', 'float64', 'nograd'])
def test_curvature_forms(c):
    x, v = ball(6, 5), tangent(6, 5)
    if c == 'tensor0': c = torch.tensor(0.8, device=DEV)
    elif c == 'tensor1': c = torch.tensor([0.8], device=DEV)
    elif c == 'float64': c = torch.tensor(0.8, dtype=torch.float64, device=DEV)
    elif c == 'nograd': c = torch.tensor(0.8, device=DEV).requires_grad_(False)
    check('expmap', x, v, c=c, c_grad=False)
    check('mobius_linear', x, tangent(3, 5, scale=0.4), ball(3), c=c, c_grad=False)


def test_curvature_gradient_reaches_a_parameter():
    c = torch.nn.Parameter(torch.tensor(0.7, device=DEV))
    x, y = ball(8, 4, c=0.7), ball(8, 4, c=0.7)
    K.dist(x, y, c).sum().backward()
    g_k = c.grad.clone()
    c.grad = None
    geometry.TORCH_OPS['dist'](x, y, c=c).sum().backward()
    assert rel_err(g_k, c.grad) < 1e-4


def test_boundary_and_degenerate_inputs():
    for dt in (torch.float32, torch.float64):
        tol = 3e-3 if dt == torch.float32 else 1e-6  # the float32 reference itself is off by ~1e-3 here
        margin = K._numerics(dt)[1]
        near = ball(12, 7, dtype=dt)
        near = near / near.norm(dim=-1, keepdim=True) * (1 - 2 * margin) / math.sqrt(0.8)
        x, y = ball(12, 7, dtype=dt), ball(12, 7, dtype=dt, seed=3)
        x[0] = 0; y[1] = 0; y[2] = x[2]
        zero = torch.zeros(12, 7, dtype=dt, device=DEV)
        for op, args in [('mobius_add', (near, near.flip(0))), ('mobius_add', (x, y)), ('expmap0', (zero,)),
                         ('expmap0', (tangent(12, 7, scale=1e5, dtype=dt),)), ('logmap0', (near,)), ('logmap0', (zero,)),
                         ('expmap', (near, tangent(12, 7, scale=1e3, dtype=dt))), ('expmap', (x, zero)),
                         ('logmap', (x, y)), ('logmap', (near, near.flip(0))), ('dist', (x, y)),
                         ('dist', (near, near.flip(0))), ('project', (tangent(12, 7, scale=50.0, dtype=dt),)),
                         ('project', (zero,)), ('cdist', (near, x)),
                         ('mobius_linear', (zero, tangent(3, 7, scale=0.3, dtype=dt), ball(3, dtype=dt))),
                         ('mobius_linear', (near, tangent(3, 7, scale=30.0, dtype=dt), None))]:
            check(op, *args, tol=tol)
        # coincident points: distance exactly 0 and the zero subgradient (the reference's gradient there depends
        # on the rounding of (-x) + x, so it is not compared)
        xg = x.clone().requires_grad_()
        d = K.cdist(xg, x, 0.8)
        assert (d.diagonal() == 0).all()
        d.sum().backward()
        assert torch.isfinite(xg.grad).all()
        xg.grad = None
        K.dist(xg, x, 0.8).sum().backward()
        assert (xg.grad == 0).all()


def test_declines_fall_back_to_torch():
    x = ball(5, 4)
    c_rows = torch.full((5, 1), 0.8, device=DEV)
    assert K.mobius_add(x, x, c_rows) is NotImplemented
    assert K.cdist(x, x, torch.full((5, 5), 0.8, device=DEV)) is NotImplemented
    assert K.dist(x, x.double(), 0.8) is NotImplemented
    assert K.mobius_add(x, ball(5, 1), 0.8) is NotImplemented  # broadcast along the last dimension
    assert K.expmap0(torch.ones(2, 3, dtype=torch.int32, device=DEV), 1.0) is NotImplemented
    assert K.mobius_linear(x, torch.randn(3, 4, device=DEV), torch.randn(4, device=DEV), 1.0) is NotImplemented
    with geometry.use_backend('triton'):
        out = geometry.mobius_add(x, x, c=c_rows)  # declined: the torch reference runs
    torch.testing.assert_close(out, geometry.TORCH_OPS['mobius_add'](x, x, c=c_rows))


def test_backward_is_deterministic():
    x, y, b = ball(300, 33), ball(300, 33), ball(33)
    w = tangent(33, 33, scale=0.2)
    c = torch.tensor(0.8, device=DEV)
    g1 = check('mobius_linear', x, w, b, c=c)
    g2 = check('mobius_linear', x, w, b, c=c)
    for a, bb in zip(g1, g2): assert torch.equal(a, bb)


def test_public_api_dispatch():
    x, y = ball(4, 6), ball(4, 6)
    n = K.kernel_calls['logmap']
    with geometry.use_backend('triton'):
        out = geometry.logmap(x, y, c=0.8)
    assert K.kernel_calls['logmap'] == n + 1
    with geometry.use_backend('torch'):
        ref = geometry.logmap(x, y, c=0.8)
    assert K.kernel_calls['logmap'] == n + 1
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)


def _run(code, **env):
    e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), **env)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=e, timeout=120)


def test_imports_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from bytropix import kernels, geometry\n"
            "assert kernels.TRITON_AVAILABLE is False and kernels.REGISTERED == []\n"
            "x = torch.rand(3, 4) * 0.2\n"
            "assert kernels.mobius_add(x, x, 1.0) is NotImplemented\n"
            "assert torch.allclose(geometry.mobius_add(x, x, c=1.0), geometry.TORCH_OPS['mobius_add'](x, x, c=1.0))\n"
            "print('ok')\n")
    r = _run(code)
    assert r.returncode == 0 and 'ok' in r.stdout, r.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-without-interpreter error')
def test_cpu_without_interpreter_is_a_clear_error():
    code = ("import torch\n"
            "from bytropix import kernels\n"
            "from bytropix.core import ConfigError\n"
            "try:\n"
            "    kernels.expmap0(torch.rand(2, 3), 1.0)\n"
            "except ConfigError as e:\n"
            "    assert 'TRITON_INTERPRET=1' in str(e); print('ok')\n")
    r = _run(code, TRITON_INTERPRET='0')
    assert r.returncode == 0 and 'ok' in r.stdout, r.stderr[-2000:]


# Degenerate inputs (issue 10, defect 11): zero vectors, the origin, equal points and the boundary of the ball, in
# every float dtype and at several curvatures. The kernels compute in float32 (float64 for float64 inputs), so no
# intermediate overflows; what must hold is that every output and gradient is finite.

def _rows_with_norms(norms, D, dtype, seed):
    u = torch.randn(len(norms), D, generator=_gen(seed), dtype=torch.float64)
    return (u / u.norm(dim=-1, keepdim=True) * torch.tensor(norms, dtype=torch.float64)[:, None]).to(dtype).to(DEV)


def _degenerate(op, dtype, c, D=6, seed=0):
    """Every combination of degenerate inputs for `op` as one batch: points at the origin, of norm 1e-6, mid-ball,
    just inside the boundary, on the projection radius (1 - margin)/sqrt(c) and on the rim 1/sqrt(c); tangent vectors
    zero, tiny, unit and huge; pairs of equal points. Returns (labels, args)."""
    m = K._numerics(dtype)[1]
    pts = dict(origin=0.0, tiny=1e-6, mid=0.5, near=1 - 3 * m, edge=1 - m, rim=1.0)
    pts = {k: r / math.sqrt(c) for k, r in pts.items()}
    tans = dict(zero=0.0, tiny=1e-6, unit=1.0, huge=1e4)
    kinds = {'mobius_add': (pts, pts), 'logmap': (pts, pts), 'dist': (pts, pts), 'cdist': (pts, pts),
             'expmap': (pts, tans), 'expmap0': (tans,), 'logmap0': (pts,), 'project': (pts,),
             'mobius_linear': (pts,)}[op]
    combos = list(itertools.product(*[k.items() for k in kinds]))
    labels = [','.join(n for n, _ in combo) for combo in combos]
    args = [_rows_with_norms([combo[i][1] for combo in combos], D, dtype, seed + i) for i in range(len(kinds))]
    if len(kinds) == 2 and kinds[1] is pts:  # the same point twice
        same = _rows_with_norms(list(pts.values()), D, dtype, seed + 7)
        labels += [f'{k}={k}' for k in pts]
        args = [torch.cat([a, same]) for a in args]
    return labels, args


@pytest.mark.parametrize('c', [0.1, 0.8, 10.0])
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('op', OPS)
def test_degenerate_inputs_are_finite(op, dtype, c):
    labels, args = _degenerate(op, dtype, c)
    # float16 on the rim itself (1 - c|x|^2 down to ~1e-6, a point no operation returns) has exact gradients past
    # 65504, which round to inf like the exact value would: those rows are checked forward only
    keep = [i for i, l in enumerate(labels) if not (dtype == torch.float16 and 'rim' in l)]
    extra = ()
    if op == 'mobius_linear':
        W = tangent(5, args[0].shape[-1], scale=0.4, dtype=dtype, seed=11)
        edge_bias = _rows_with_norms([(1 - K._numerics(dtype)[1]) / math.sqrt(c)], 5, dtype, 12)[0]
        extra = [(W, None), (W, torch.zeros(5, dtype=dtype, device=DEV)), (W, edge_bias), (0 * W, None)]
    for tail in (extra or [()]):
        with torch.no_grad():
            out = K.KERNELS[op](*args, *tail, c=c)
        assert torch.isfinite(out).all(), [l for i, l in enumerate(labels) if not torch.isfinite(out[i]).all()]
        ins = [a[keep].detach().clone().requires_grad_() for a in args]
        tl_ = [t.detach().clone().requires_grad_() if t is not None else None for t in tail]
        ct = torch.tensor(c, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=DEV,
                          requires_grad=True)
        out = K.KERNELS[op](*ins, *tl_, c=ct)
        wrt = ins + [t for t in tl_ if t is not None] + [ct]
        grads = torch.autograd.grad(out, wrt, torch.randn(out.shape, generator=_gen(5)).to(dtype).to(DEV))
        for j, g in enumerate(grads):
            if j < len(ins):
                bad = [labels[keep[i]] for i in range(len(keep)) if not torch.isfinite(g[i]).all()]
                assert not bad, f'{op} {dtype} c={c}: non-finite gradient of input {j} at {bad}'
            else:
                assert torch.isfinite(g).all(), f'{op} {dtype} c={c}: non-finite gradient {j}'


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_gradient_at_a_zero_tangent_vector_is_the_upstream_gradient(dtype):
    # d exp_x(v)/dv at v = 0 is the identity (the Möbius addition contributes 1 - c|x|^2, lambda_x/2 its inverse):
    # a masked or padded position (v = 0) passes its gradient through unchanged, in every dtype
    tol = TOL[dtype] * 3
    for x in (ball(8, 5, dtype=dtype), torch.zeros(8, 5, dtype=dtype, device=DEV)):
        v = torch.zeros(8, 5, dtype=dtype, device=DEV, requires_grad=True)
        g = tangent(8, 5, dtype=dtype)
        gv, = torch.autograd.grad(K.expmap(x, v, 0.8), v, g)
        assert rel_err(gv, g) < tol
        gv, = torch.autograd.grad(K.expmap0(v, 0.8), v, g)
        assert rel_err(gv, g) < tol


def _close_points(R, D, dtype, seed):
    x = ball(R, D, dtype=dtype, seed=seed)
    ulps = torch.randint(-3, 4, x.shape, generator=_gen(seed + 1)).to(DEV)
    return x, x + ulps * x.abs() * torch.finfo(dtype).eps  # 0 to 3 ulps apart, componentwise


@pytest.mark.parametrize('D', [6, K._MAX_BLOCK_D + 5])  # rows in registers, and rows in chunks
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
def test_dist_gradient_of_close_points(dtype, D):
    # d dist/d|x-y|^2 grows like 1/|x-y|; written as coefficients of x and y the gradient cancelled to a relative
    # error of ~0.5 for points a few ulps apart; the kernel now multiplies the difference x - y itself
    x, y = _close_points(16 if D < 100 else 3, D, dtype, seed=D)
    for y_ in (y, y[:1]):  # a second row each, and one row broadcast to all (its gradient summed in the kernel)
        xk, yk, x64, y64 = (t.detach().clone().requires_grad_() for t in (x, y_, x.double(), y_.double()))
        g = torch.rand(x.shape[0], generator=_gen(3), dtype=torch.float64).to(DEV)
        gk = torch.autograd.grad(K.dist(xk, yk, 0.8), (xk, yk), g.to(dtype))
        gr = torch.autograd.grad(geometry.TORCH_OPS['dist'](x64, y64, c=0.8), (x64, y64), g)
        errs = [rel_err(a, b) for a, b in zip(gk, gr)]
        assert max(errs) < (1e-5 if dtype == torch.float32 else 1e-12), errs

"""Poincaré-ball kernels: forward+backward time of the Triton kernels vs eager torch vs torch.compile vs geoopt.

For every operation the script times one forward and one backward pass (gradients of every input and of a
learnable curvature c) of four implementations on the same inputs:

- kernel:  `bytropix.geometry`'s public function with `use_backend('triton')` (the fused Triton kernels);
- eager:   `geometry.TORCH_OPS[op]`, the pure-torch reference;
- compile: `torch.compile(TORCH_OPS[op])`;
- geoopt:  geoopt's `stereographic.math` functions (k = -c), projected like the reference.

It prints a markdown table with the times, the speed-ups and the kernel's achieved bandwidth (the fewest bytes
the forward and backward must move — each input, output and gradient once — over the time) as a fraction of the
GPU's peak memory bandwidth (detected from its name, or `--peak-gbps`); then the Möbius linear layer against a
plain `nn.Linear` of the same shape, and the pairwise distance `cdist`.

On CUDA, times are medians of CUDA-graph replays (`triton.testing.do_bench_cudagraph`): device time without the
Python launch overhead, which a training step hides when the CPU runs ahead of the GPU. The kernel's eager
(event-timed, `do_bench`) time is printed too. `--quick` runs tiny shapes on the CPU in Triton's interpreter as
a smoke test: its times say nothing about speed.

    python benchmarks/kernels.py                              # GPU: 2^20 rows x 64, float32 and bfloat16
    python benchmarks/kernels.py --dim 128 --dtypes bfloat16 --peak-gbps 3350
    TRITON_INTERPRET=1 python benchmarks/kernels.py --quick   # CPU smoke test
"""
import argparse
import os
import statistics
import sys
import time

if '--quick' in sys.argv and not os.environ.get('TRITON_INTERPRET'):
    try:
        import torch as _t
        if not _t.cuda.is_available(): os.environ['TRITON_INTERPRET'] = '1'  # before the kernels are imported
    except ImportError:
        pass

import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
from bytropix import geometry  # noqa: E402
from bytropix import kernels  # noqa: E402

PEAK_GBPS = {  # datasheet memory bandwidth, GB/s
    'H200': 4800, 'H100 NVL': 3900, 'H100 PCIE': 2000, 'H100': 3350, 'GH200': 4000,
    'A100-SXM4-80GB': 2039, 'A100 80GB PCIE': 1935, 'A100': 1555, 'L40S': 864, 'L4': 300, 'RTX 4090': 1008,
}
ELEMENTWISE = ['mobius_add', 'expmap0', 'logmap0', 'expmap', 'logmap', 'dist', 'project']
# (inputs, outputs) in units of one (rows, D) tensor; dist's output is one number per row (~0)
PASSES = {'mobius_add': (2, 1), 'expmap0': (1, 1), 'logmap0': (1, 1), 'expmap': (2, 1), 'logmap': (2, 1),
          'dist': (2, 0), 'project': (1, 1)}


def peak_gbps(name: str) -> float | None:
    up = name.upper()
    for key, v in sorted(PEAK_GBPS.items(), key=lambda kv: -len(kv[0])):
        if key.upper() in up: return v
    return None


def geoopt_fn(op):
    try:
        import geoopt.manifolds.stereographic.math as gm
    except ImportError:
        return None
    proj = lambda o, k: gm.project(o, k=k)  # noqa: E731
    fns = {
        'mobius_add': lambda x, y, c: proj(gm.mobius_add(x, y, k=-c), -c),
        'expmap0': lambda v, c: proj(gm.expmap0(v, k=-c), -c),
        'logmap0': lambda y, c: gm.logmap0(y, k=-c),
        'expmap': lambda x, v, c: proj(gm.expmap(x, v, k=-c), -c),
        'logmap': lambda x, y, c: gm.logmap(x, y, k=-c),
        'dist': lambda x, y, c: gm.dist(x, y, k=-c),
        'project': lambda x, c: gm.project(x, k=-c),
        'cdist': lambda x, y, c: gm.dist(x.unsqueeze(-2), y.unsqueeze(-3), k=-c),
        'mobius_linear': lambda x, w, b, c: proj(gm.mobius_add(proj(gm.mobius_matvec(w, x, k=-c), -c), b, k=-c), -c),
    }
    return fns[op]


def make_inputs(op, rows, dim, dtype, device, gen):
    def ball(*shape, r=0.8):
        v = torch.randn(*shape, generator=gen)
        return (v / v.norm(dim=-1, keepdim=True) * torch.rand(*shape[:-1], 1, generator=gen) * r).to(device, dtype)
    def tangent(*shape, s=1.0):  # noqa: E306
        return (s * torch.randn(*shape, generator=gen)).to(device, dtype)
    return {'mobius_add': lambda: [ball(rows, dim), ball(rows, dim)], 'expmap0': lambda: [tangent(rows, dim)],
            'logmap0': lambda: [ball(rows, dim)], 'expmap': lambda: [ball(rows, dim), tangent(rows, dim)],
            'logmap': lambda: [ball(rows, dim), ball(rows, dim)], 'dist': lambda: [ball(rows, dim), ball(rows, dim)],
            'project': lambda: [tangent(rows, dim, s=0.5)]}[op]()


class Timer:
    "After each call, `graphed` says whether the time came from CUDA-graph replays."
    def __init__(self, device, quick):
        self.device, self.quick, self.graphed = device, quick, False

    def __call__(self, fn, graph=True):
        "Median milliseconds of fn(); on CUDA from CUDA-graph replays (graph=True) or events."
        self.graphed = False
        if self.device.type != 'cuda':
            fn()
            ts = []
            for _ in range(1 if self.quick else 5):
                t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
            return 1e3 * statistics.median(ts)
        from triton.testing import do_bench, do_bench_cudagraph
        if graph:
            try:
                ms = do_bench_cudagraph(fn, rep=50, return_mode='median')
                self.graphed = True
                return ms
            except Exception as e:  # a capture failure: report event timing instead
                print(f'  (CUDA graph capture failed: {type(e).__name__}: {str(e)[:300]}; timing with events)', file=sys.stderr)
        return do_bench(fn, warmup=25, rep=100, return_mode='median')


def fwd_bwd(fn, inputs, c):
    "A closure running fn forward and backward (gradients of every input and of c)."
    out = fn(*inputs, c)
    # the upstream gradient from a CPU generator: a failed graph capture can leave the CUDA generator unusable
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    wrt = inputs + [c]
    return lambda: torch.autograd.grad(fn(*inputs, c), wrt, g)


def fmt(ms, events=False):
    "A time in ms; `*` marks an event-timed cell on CUDA (its graph capture failed: launch overhead included)."
    return '—' if ms is None else (f'{ms:.3f}' if ms < 10 else f'{ms:.1f}') + ('*' if events else '')


def ratio(a, b):
    return '—' if a is None or b is None else f'{a / b:.1f}×'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=1 << 20)
    ap.add_argument('--dim', type=int, default=64)
    ap.add_argument('--dtypes', default='float32,bfloat16')
    ap.add_argument('--ops', default=','.join(ELEMENTWISE))
    ap.add_argument('--peak-gbps', type=float, default=None, help='peak memory bandwidth (GB/s) of the GPU')
    ap.add_argument('--no-compile', action='store_true', help='skip torch.compile (its compile time is minutes)')
    ap.add_argument('--compile-dtypes', default='float32', help='dtypes for which torch.compile is timed')
    ap.add_argument('--linear', default='16384x1024x1024,8192x4096x4096', help='rows x in x out shapes')
    ap.add_argument('--cdist', type=int, default=2048, help='N = M for cdist (0 skips it)')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--quick', action='store_true', help='tiny shapes, CPU interpreter smoke test')
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if a.quick:
        a.rows, a.dim, a.linear, a.cdist, a.no_compile = 64, 8, '32x16x16', 16, True
    if not kernels.TRITON_AVAILABLE:
        sys.exit('Triton is not importable here: nothing to benchmark.')
    if device.type == 'cpu' and not kernels.INTERPRET:
        sys.exit('CPU runs need TRITON_INTERPRET=1 (use --quick).')
    timer = Timer(device, a.quick)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU (Triton interpreter)'
    peak = a.peak_gbps or (peak_gbps(name) if device.type == 'cuda' else None)
    import triton
    print(f'device: {name}; torch {torch.__version__}, triton {triton.__version__}; '
          f'peak bandwidth {peak or "unknown"} GB/s')
    if device.type == 'cuda':
        buf = torch.empty(1 << 28, device=device)  # 1 GiB
        ms = timer(lambda: buf.clone(), graph=False)
        print(f'device-to-device copy: {2 * buf.numel() * 4 / ms / 1e6:.0f} GB/s (read + write)')
        del buf
    # every random input is drawn on the CPU: a failed graph capture can leave the CUDA generator unusable
    gen = torch.Generator().manual_seed(0)
    ev = set()  # (row key, impl) of event-timed CUDA cells
    def timed(key, impl, fn):
        ms = timer(fn)
        if device.type == 'cuda' and not timer.graphed: ev.add((key, impl))
        return ms
    dtypes = [getattr(torch, d) for d in a.dtypes.split(',')]
    compile_dtypes = set() if a.no_compile else {getattr(torch, d) for d in a.compile_dtypes.split(',')}

    def kernel_fn(op):
        f = getattr(geometry, op)
        def run(*args):
            with geometry.use_backend('triton'): return f(*args[:-1], c=args[-1])
        return run

    def torch_fn(op):
        return lambda *args: geometry.TORCH_OPS[op](*args[:-1], c=args[-1])

    # each row is printed as soon as it is measured (stdout flushed): a run stopped by a time limit keeps its rows
    print(f'\n### Forward + backward, {a.rows} × {a.dim} (times in ms; speed-up = other / kernel)\n')
    print('| op | dtype | kernel | eager | compile | geoopt | vs eager | vs compile | vs geoopt | kernel GB/s | % of peak '
          '| kernel, eager launch |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|', flush=True)
    for dtype in dtypes:
        for op in a.ops.split(','):
            xs = [t.requires_grad_() for t in make_inputs(op, a.rows, a.dim, dtype, device, gen)]
            c = torch.tensor(0.8, device=device, requires_grad=True)
            r = {}
            impls = [('kernel', kernel_fn(op)), ('eager', torch_fn(op))]
            if dtype in compile_dtypes: impls.append(('compile', torch.compile(torch_fn(op), dynamic=False)))
            g = geoopt_fn(op)
            if g is not None: impls.append(('geoopt', g))
            for impl, f in impls:
                try:
                    r[impl] = timed((op, dtype), impl, fwd_bwd(f, xs, c))
                except Exception as e:  # keep the table going; say why a cell is empty
                    print(f'  {op} {impl}: {type(e).__name__}: {str(e)[:200]}', file=sys.stderr)
                    r[impl] = None
            r['kernel_eager'] = timer(fwd_bwd(kernel_fn(op), xs, c), graph=False) if device.type == 'cuda' else None
            n_in, n_out = PASSES[op]
            nbytes = ((n_in + n_out) + (n_in + n_out + n_in)) * a.rows * a.dim * xs[0].element_size()
            k = r['kernel']
            gbps = nbytes / k / 1e6 if k else None
            pct = f'{100 * gbps / peak:.0f}%' if gbps and peak else '—'
            e = lambda impl: ((op, dtype), impl) in ev  # noqa: E731
            print(f"| {op} | {str(dtype).replace('torch.', '')} | {fmt(k, e('kernel'))} | {fmt(r.get('eager'), e('eager'))} "
                  f"| {fmt(r.get('compile'), e('compile'))} | {fmt(r.get('geoopt'), e('geoopt'))} "
                  f"| {ratio(r.get('eager'), k)} | {ratio(r.get('compile'), k)} | {ratio(r.get('geoopt'), k)} "
                  f"| {'—' if gbps is None else f'{gbps:.0f}'} | {pct} | {fmt(r.get('kernel_eager'))} |", flush=True)
            del xs
            if device.type == 'cuda': torch.cuda.empty_cache()

    print('\n### Möbius linear layer vs nn.Linear (forward + backward, ms)\n')
    print('| shape (rows × in → out) | dtype | nn.Linear | mobius_linear kernel | ratio | eager torch | geoopt |')
    print('|---|---|---|---|---|---|---|', flush=True)
    for shape in a.linear.split(','):
        n, din, dout = (int(v) for v in shape.split('x'))
        for dtype in dtypes:
            x = (torch.randn(n, din, generator=gen) * 0.5 / din ** 0.5).to(device, dtype).requires_grad_()
            lin = torch.nn.Linear(din, dout).to(device, dtype)
            w = lin.weight.detach().clone().requires_grad_()
            b = (torch.randn(dout, generator=gen) * 0.3 / dout ** 0.5).to(device, dtype).requires_grad_()
            c = torch.tensor(0.8, device=device, requires_grad=True)
            gl = torch.randn(n, dout, generator=gen).to(device, dtype)
            t_lin = timed((shape, dtype), 'linear', lambda: torch.autograd.grad(lin(x), [x, lin.weight, lin.bias], gl))
            t = {}
            for impl, f in [('kernel', kernel_fn('mobius_linear')), ('eager', torch_fn('mobius_linear')),
                            ('geoopt', geoopt_fn('mobius_linear'))]:
                if f is None: t[impl] = None; continue
                try:
                    t[impl] = timed((shape, dtype), impl, lambda: torch.autograd.grad(f(x, w, b, c), [x, w, b, c], gl))
                except Exception as e:
                    print(f'  mobius_linear {impl}: {type(e).__name__}: {str(e)[:200]}', file=sys.stderr)
                    t[impl] = None
            e = lambda impl: ((shape, dtype), impl) in ev  # noqa: E731
            print(f"| {n} × {din} → {dout} | {str(dtype).replace('torch.', '')} | {fmt(t_lin, e('linear'))} | {fmt(t['kernel'], e('kernel'))} "
                  f"| {ratio(t['kernel'], t_lin)} | {fmt(t['eager'], e('eager'))} | {fmt(t['geoopt'], e('geoopt'))} |", flush=True)
            del x, lin, w, b
            if device.type == 'cuda': torch.cuda.empty_cache()

    if a.cdist:
        print(f'\n### cdist, {a.cdist} × {a.cdist} points of dimension {a.dim} (forward + backward, ms)\n')
        print('| dtype | kernel | eager | geoopt | vs eager | vs geoopt |')
        print('|---|---|---|---|---|---|')
        for dtype in dtypes:
            xs = [(torch.rand(a.cdist, a.dim, generator=gen) * 0.2).to(device, dtype).requires_grad_()
                  for _ in range(2)]
            c = torch.tensor(0.8, device=device, requires_grad=True)
            t = {}
            for impl, f in [('kernel', kernel_fn('cdist')), ('eager', torch_fn('cdist')), ('geoopt', geoopt_fn('cdist'))]:
                try:
                    t[impl] = None if f is None else timed(('cdist', dtype), impl, fwd_bwd(f, xs, c))
                except Exception as e:
                    print(f'  cdist {impl}: {type(e).__name__}: {str(e)[:200]}', file=sys.stderr)
                    t[impl] = None
            e = lambda impl: (('cdist', dtype), impl) in ev  # noqa: E731
            print(f"| {str(dtype).replace('torch.', '')} | {fmt(t['kernel'], e('kernel'))} | {fmt(t['eager'], e('eager'))} | {fmt(t['geoopt'], e('geoopt'))} "
                  f"| {ratio(t['eager'], t['kernel'])} | {ratio(t['geoopt'], t['kernel'])} |", flush=True)
    if ev: print('\n`*`: event-timed (`do_bench`), its CUDA-graph capture failed: includes the Python launch overhead')
    if a.quick: print('\n(--quick: interpreter smoke test; the times say nothing about speed)')


if __name__ == '__main__':
    main()

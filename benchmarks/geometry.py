"""Poincaré-ball operations: bytropix.geometry vs geoopt, forward + backward, eager and torch.compile.

Times one forward and one backward pass (gradients of every tensor input, upstream gradient fixed) of
mobius_add, expmap0, expmap, logmap0, dist and mobius_matvec on `rows` × `dim` float32 inputs (the matrix-vector product
with a `dim` × `dim` matrix), against geoopt's `stereographic.math` at k = -c in the same run. The geoopt side
computes what its `PoincareBall` methods compute by default: results that are points (mobius_add, expmap0,
expmap, mobius_matvec) are projected onto the ball, as bytropix's are. Ratios are geoopt time / ours (higher is better):

    eager x    geoopt eager / bytropix eager
    compile x  geoopt eager / bytropix under torch.compile(fullgraph=True)
    (with --compile-geoopt also geoopt under torch.compile — it cannot be captured with fullgraph=True, so it
    is compiled with graph breaks — and the ratio of the two compiled versions)

Targets on the 2-core development CPU: eager ≥ 1× for every op, compile ≥ 5×. Contenders are interleaved and
the best of `repeats` runs is kept, since the machine is shared. On a loaded machine, multi-threaded runs of the
small --quick sizes are dominated by OpenMP threads waiting for a descheduled sibling (milliseconds per op);
use OMP_NUM_THREADS=1 there for meaningful small-size ratios.

    python benchmarks/geometry.py              # 200k rows x 64, 5 repeats
    python benchmarks/geometry.py --quick      # 20k rows, 10 repeats (smoke test)
    python benchmarks/geometry.py --rows 50000 --no-compile
"""
import argparse
import os
import sys
import time

import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
from geoopt.manifolds.stereographic import math as gm  # noqa: E402

from bytropix import geometry as G  # noqa: E402


def _cases(rows: int, dim: int, c: float, device):
    "op name -> (ours, geoopt, inputs); inputs are random points of the ball / tangent vectors."
    g = torch.Generator().manual_seed(0)
    def ball(*shape):
        v = torch.randn(*shape, generator=g)
        return (v / v.norm(dim=-1, keepdim=True) * torch.rand(*shape[:-1], 1, generator=g) * 0.9 / c ** 0.5).to(device)
    x, y, v = ball(rows, dim), ball(rows, dim), torch.randn(rows, dim, generator=g).to(device)
    M = (torch.randn(dim, dim, generator=g) / dim ** 0.5).to(device)
    k = torch.tensor(-c, device=device)
    return {
        'mobius_add': (lambda a, b: G.mobius_add(a, b, c), lambda a, b: gm.project(gm.mobius_add(a, b, k=k), k=k), (x, y)),
        'expmap0': (lambda a: G.expmap0(a, c), lambda a: gm.project(gm.expmap0(a, k=k), k=k), (v,)),
        'expmap': (lambda a, b: G.expmap(a, b, c), lambda a, b: gm.project(gm.expmap(a, b, k=k), k=k), (x, v)),
        'logmap0': (lambda a: G.logmap0(a, c), lambda a: gm.logmap0(a, k=k), (x,)),
        'dist': (lambda a, b: G.dist(a, b, c), lambda a, b: gm.dist(a, b, k=k), (x, y)),
        'mobius_matvec': (lambda m, a: G.mobius_matvec(m, a, c), lambda m, a: gm.project(gm.mobius_matvec(m, a, k=k), k=k), (M, x)),
    }


def _fwd_bwd(fn, inputs, grad_out):
    def run():
        ins = [t.detach().requires_grad_() for t in inputs]
        out = fn(*ins)
        return out, torch.autograd.grad(out, ins, grad_out)
    return run


def _time(run, repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == 'cuda': torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        if device.type == 'cuda': torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)  # the least-disturbed run: the machine is shared


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=200_000)
    ap.add_argument('--dim', type=int, default=64)
    ap.add_argument('--c', type=float, default=1.0)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--quick', action='store_true', help='20k rows, 10 repeats')
    ap.add_argument('--no-compile', action='store_true', help='eager only')
    ap.add_argument('--compile-geoopt', action='store_true', help='also time geoopt under torch.compile (slow to compile)')
    ap.add_argument('--mode', default=None, help="torch.compile mode, e.g. 'max-autotune-no-cudagraphs' (CPU GEMM epilogue fusion)")
    ap.add_argument('--ops', default='mobius_add,expmap0,expmap,logmap0,dist,mobius_matvec')
    ap.add_argument('--device', default='cpu')
    args = ap.parse_args(argv)
    if args.quick: args.rows, args.repeats = min(args.rows, 20_000), 10
    device = torch.device(args.device)
    cases = _cases(args.rows, args.dim, args.c, device)
    ops = [o for o in args.ops.split(',') if o]
    unknown = [o for o in ops if o not in cases]
    if unknown: ap.error(f"unknown ops {unknown}; choose from {', '.join(cases)}")

    print(f'# {args.rows} x {args.dim} float32 on {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, '
          f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}; forward + backward, best of {args.repeats}')
    head = f"| {'op':<14} | {'geoopt ms':>9} | {'ours ms':>8} | {'eager x':>7} |"
    if not args.no_compile: head += f" {'compiled ms':>11} | {'compile x':>9} |"
    if args.compile_geoopt: head += f" {'geoopt comp. ms':>15} | {'comp/comp x':>11} |"
    print(head)
    print('|' + '|'.join('-' * (len(col)) for col in head.split('|')[1:-1]) + '|')
    worst_eager, worst_comp = float('inf'), float('inf')
    for op in ops:
        ours, ref, inputs = cases[op]
        with torch.no_grad(): out = ref(*inputs)
        gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
        err = (ours(*inputs) - out).abs().max().item()
        assert err < 1e-3, f'{op}: bytropix and geoopt disagree by {err:.2e}'
        runs = {'geoopt': _fwd_bwd(ref, inputs, gout), 'ours': _fwd_bwd(ours, inputs, gout)}
        if not args.no_compile:
            torch._dynamo.reset()
            runs['compiled'] = _fwd_bwd(torch.compile(ours, fullgraph=True, dynamic=False, mode=args.mode), inputs, gout)
        if args.compile_geoopt:
            try:
                runs['geoopt compiled'] = _fwd_bwd(torch.compile(ref, dynamic=False, mode=args.mode), inputs, gout)
                runs['geoopt compiled']()
            except Exception as e:  # report, do not hide: geoopt may not compile at all
                print(f'# geoopt {op} failed to compile: {type(e).__name__}: {e}')
                del runs['geoopt compiled']
        for run in runs.values(): run(); run()  # compile / warm up
        # interleave the contenders so that load changes on the shared machine hit all of them alike
        best = {name: float('inf') for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items(): best[name] = min(best[name], _time(run, 1, device))
        t_ref, t_ours = best['geoopt'], best['ours']
        worst_eager = min(worst_eager, t_ref / t_ours)
        row = f'| {op:<14} | {t_ref * 1e3:9.1f} | {t_ours * 1e3:8.1f} | {t_ref / t_ours:7.2f} |'
        if 'compiled' in best:
            t_comp = best['compiled']
            worst_comp = min(worst_comp, t_ref / t_comp)
            row += f' {t_comp * 1e3:11.1f} | {t_ref / t_comp:9.2f} |'
        if args.compile_geoopt:
            t_gc = best.get('geoopt compiled', float('nan'))
            row += f' {t_gc * 1e3:15.1f} | {t_gc / best.get("compiled", float("nan")):11.2f} |'
        print(row, flush=True)
    print(f'# worst eager ratio {worst_eager:.2f}' + ('' if args.no_compile else f', worst compiled ratio {worst_comp:.2f}'))


if __name__ == '__main__':
    main()

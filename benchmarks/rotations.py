"""SO(n) rotation matrices for training on the CPU: forward + backward of `exp(A - Aᵀ)` from its n(n-1)/2 parameters.

Contenders, all in this process, interleaved, fastest of `--repeats` (CPU time of this thread):

- `matrix_exp`   `torch.linalg.matrix_exp` (what `so_matrix` uses without gradients, for export and on accelerators);
- `taylor`       `bytropix.layers.rotations.expm_taylor`: scaling and squaring of the degree-8 Taylor polynomial, the
                 scaling count read on the Python side (what eager training on the CPU uses);
- `in-graph`     the same with `max_squarings=TRACED_SQUARINGS` (what `torch.compile` traces: the count computed in the
                 graph, the polynomial evaluated the Paterson–Stockmeyer way), run eagerly;
- `compiled`     (with `--compile`) `so_matrix` under `torch.compile(fullgraph=True)`: the in-graph form as Inductor
                 compiles it, the squarings under `torch.cond` (only the needed ones run), which is what a compiled
                 WuBu model runs; the matrix_exp / compiled column compares it with what it replaces.

The parameters are drawn at WuBu's initial scale (`--std`, default 0.02, as `WuBuNestingConfig.init_std`) and at a
larger one (`--std-large`, a rotation that has moved), so the number of squarings differs; the table prints it.

    OMP_NUM_THREADS=1 python benchmarks/rotations.py          # n = 32, 64, 96; seconds
    OMP_NUM_THREADS=1 python benchmarks/rotations.py --compile  # also compiled (one compilation per n, ~1 minute)
    python benchmarks/rotations.py --quick                    # n = 16, 32, a few repeats (smoke test)
"""
import argparse
import math
import os
import sys
import time

import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
from bytropix.layers.rotations import TRACED_SQUARINGS, expm_taylor, skew_from_params, so_matrix, taylor_squarings  # noqa: E402


def contenders(n: int, compile_: bool) -> dict:
    "name -> parameters → rotation matrix (each builds the skew matrix, as `so_matrix` does)."
    out = {'matrix_exp': lambda p: torch.linalg.matrix_exp(skew_from_params(p, n)),
           'taylor': lambda p: expm_taylor(skew_from_params(p, n)),
           'in-graph': lambda p: expm_taylor(skew_from_params(p, n), TRACED_SQUARINGS)}
    if compile_: out['compiled'] = torch.compile(lambda p: so_matrix(p, n), fullgraph=True)
    return out


def fwd_bwd_ms(fn, params: torch.Tensor, G: torch.Tensor) -> float:
    "One forward + backward from the parameters, ms of this thread's CPU time."
    t = time.thread_time()
    R = fn(params)
    torch.autograd.grad((R * G).sum(), params)
    return (time.thread_time() - t) * 1e3


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dims', type=int, nargs='+', default=[32, 64, 96])
    ap.add_argument('--repeats', type=int, default=60)
    ap.add_argument('--std', type=float, default=0.02)
    ap.add_argument('--std-large', type=float, default=0.2)
    ap.add_argument('--compile', action='store_true', help='add so_matrix under torch.compile (a compilation per n)')
    ap.add_argument('--quick', action='store_true', help='n = 16, 32 and a few repeats (smoke test)')
    a = ap.parse_args(argv)
    if a.quick: a.dims, a.repeats = [16, 32], 3
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"SO(n) rotation, forward + backward from the parameters, float32, {torch.get_num_threads()} thread(s), "
          f"fastest of {a.repeats} (ms):\n")
    names = list(contenders(2, a.compile))
    ratios = ['taylor'] + (['compiled'] if a.compile else [])
    print('| n | parameter std | squarings | ' + ' | '.join(names) + ' | ' + ' | '.join(f'matrix_exp / {k}' for k in ratios) + ' |')
    print('|---:|---:|---:|' + '---:|' * (len(names) + len(ratios)))
    for n in a.dims:
        fns = contenders(n, a.compile)
        for std in (a.std, a.std_large):
            params = (torch.randn(n * (n - 1) // 2, generator=g) * std).requires_grad_()
            G = torch.randn(n, n, generator=g)
            A = skew_from_params(params.detach(), n)
            for fn in fns.values():   # the same rotation first: a faster wrong answer is no answer
                torch.testing.assert_close(fn(params).detach(), torch.linalg.matrix_exp(A), atol=2e-5, rtol=2e-5)
            s = taylor_squarings(A)
            best = {k: math.inf for k in fns}
            for r in range(a.repeats + 2):   # two warm-up rounds; contenders interleaved, order alternating
                for k in (names if r % 2 == 0 else names[::-1]):
                    ms = fwd_bwd_ms(fns[k], params, G)
                    if r >= 2: best[k] = min(best[k], ms)
            rows.append(dict(n=n, std=std, squarings=s, **best))
            print(f"| {n} | {std} | {s} | " + ' | '.join(f"{best[k]:.3f}" for k in names) + ' | '
                  + ' | '.join(f"{best['matrix_exp'] / best[k]:.2f}×" for k in ratios) + ' |')
    return rows


if __name__ == '__main__':
    main()

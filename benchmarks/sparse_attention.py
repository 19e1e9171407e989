"""Sparse vs dense attention: time and peak memory of one attention call at 2k, 4k and 8k tokens of context.

One causal self-attention call (batch 1, 4 heads of 64 channels, fp32) through `bytropix.layers.attention.attend`:

- training (forward + backward, the gradients of q, k and v): every pattern through `sdpa` (sparse patterns work in
  chunks of 256 queries over the keys each chunk may see; dense uses sdpa's own causal kernel), local + global
  through `sdpa` as one call with the whole n × n mask (`SPARSE_CHUNK = 0`), and every pattern through `math` (the
  written-out softmax) up to `--math-max` tokens — `flex` has no backward on the CPU in torch 2.13, so it is absent
  from this table there;
- inference (forward only): `sdpa` vs `flex` — flex compiled when `--compile` is given (or on a GPU), else its
  unfused eager form.

Patterns: local (W = 256), local + global (W = 256, G = 16), block-sparse (blocks of 128, the 2 nearest block
diagonals, every 8th block). Each measurement runs in a fresh process, after one warm-up call (compilation, block
masks): time is the median of `--repeat` calls; peak memory is the highest level of torch's allocations during one
call above the inputs (the profiler's memory events: masks, scores, everything autograd saves). Ratios are against dense `sdpa` at the same length, measured in
the same run.

    python benchmarks/sparse_attention.py                 # 2048, 4096, 8192 tokens (about 8 minutes on 2 CPU cores)
    python benchmarks/sparse_attention.py --compile       # also compile flex on the CPU (forward only; slow to compile)
    python benchmarks/sparse_attention.py --quick         # tiny sizes: checks that the script runs
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

PATTERNS = {'dense': {}, 'local': dict(kind='local', window=256),
            'local_global': dict(kind='local_global', window=256, n_global=16),
            'block_sparse': dict(kind='block_sparse', block_size=128, block_window=2, block_stride=8)}


def peak_alloc_mib(fn) -> float:
    "Peak of the bytes torch allocates during `fn()` above what was allocated before (from the profiler's memory events)."
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof: fn()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):   # allocations by op (self), frees as [memory]
        cur += e.cpu_memory_usage if e.name == '[memory]' else e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak / 2**20


def measure(pattern: str, impl: str, n: int, train: bool, repeat: int, heads: int, head_dim: int, compile_: bool,
            device: str) -> dict:
    "One measurement, in this process: median ms and the peak-RSS rise (MiB) of one call."
    import torch
    import bytropix.layers.attention as A
    torch.manual_seed(0)
    A.FLEX_COMPILE = True if compile_ else None
    if impl == 'sdpa, one masked call': impl, A.SPARSE_CHUNK = 'sdpa', 0   # the whole n × n mask, no query chunks
    p = A.AttentionPattern(**PATTERNS[pattern])
    q, k, v = (torch.randn(1, heads, n, head_dim, device=device, requires_grad=train) for _ in range(3))
    g = torch.randn(1, heads, n, head_dim, device=device)
    def once():
        if train:
            A.attend(q, k, v, pattern=p, impl=impl).backward(g)
            q.grad = k.grad = v.grad = None
        else:
            with torch.no_grad(): A.attend(q, k, v, pattern=p, impl=impl)
        if device == 'cuda': torch.cuda.synchronize()
    t0 = time.perf_counter(); once(); first = time.perf_counter() - t0   # warm-up (compiles, builds block masks)
    peak = peak_alloc_mib(once) if device == 'cpu' else float('nan')
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter(); once(); times.append(time.perf_counter() - t0)
    return dict(ms=1000 * statistics.median(times), mib=peak, first_s=first, keys=p.density(min(n, 2048)))


def run_one(args, pattern, impl, n, train) -> dict:
    if args.quick:   # in this process: seconds, and the memory column means nothing
        return measure(pattern, impl, n, train, args.repeat, args.heads, args.head_dim, args.compile, args.device)
    cmd = [sys.executable, os.path.abspath(__file__), '--one', json.dumps([pattern, impl, n, train]),
           '--repeat', str(args.repeat), '--heads', str(args.heads), '--head-dim', str(args.head_dim), '--device', args.device]
    if args.compile: cmd.append('--compile')
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    if r.returncode != 0: return dict(error=(r.stderr.strip().splitlines() or ['?'])[-1][:80])
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(args, train: bool) -> None:
    impls = ['sdpa', 'sdpa, one masked call', 'math'] if train else ['sdpa', 'flex']
    title = 'training: forward + backward' if train else 'inference: forward only'
    print(f"\n### {title} (batch 1, {args.heads} heads × {args.head_dim}, fp32, {args.device})\n")
    print('| context | pattern | backend | ms | ms / dense sdpa | peak MiB | MiB / dense sdpa |')
    print('|---|---|---|---|---|---|---|')
    for n in args.lengths:
        ref = None
        for impl in impls:
            for pattern in PATTERNS:
                if (impl == 'math' and n > args.math_max) or (impl == 'sdpa, one masked call' and pattern != 'local_global'):
                    continue
                r = run_one(args, pattern, impl, n, train)
                if 'error' in r:
                    print(f"| {n} | {pattern} | {impl} | failed: {r['error']} | | | |"); continue
                if ref is None: ref = r   # dense sdpa comes first
                mib_ratio = f"{r['mib'] / ref['mib']:.2f}" if ref['mib'] > 0 else '—'
                print(f"| {n} | {pattern} | {impl} | {r['ms']:.1f} | {r['ms'] / ref['ms']:.2f} | {r['mib']:.1f} | {mib_ratio} |",
                      flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help="tiny sizes (a smoke test, not a measurement)")
    ap.add_argument('--lengths', type=int, nargs='+', default=[2048, 4096, 8192])
    ap.add_argument('--math-max', type=int, default=4096, help="longest context for the math backend (it holds n² scores)")
    ap.add_argument('--repeat', type=int, default=2); ap.add_argument('--heads', type=int, default=4)
    ap.add_argument('--head-dim', type=int, default=64)
    ap.add_argument('--compile', action='store_true', help="compile flex_attention on the CPU too (forward only)")
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--one', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        pattern, impl, n, train = json.loads(args.one)
        print(json.dumps(measure(pattern, impl, n, train, args.repeat, args.heads, args.head_dim, args.compile, args.device)))
        return
    if args.quick: args.lengths, args.repeat, args.heads, args.head_dim, args.math_max = [384], 1, 2, 16, 512
    import torch
    print(f"# sparse vs dense attention — torch {torch.__version__}, {os.cpu_count()} CPUs visible, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    density = {name: __import__('bytropix.layers.attention', fromlist=['x']).AttentionPattern(**kw).density(max(args.lengths))
               for name, kw in PATTERNS.items()}
    print('causal pairs kept at', max(args.lengths), 'tokens:', ', '.join(f"{k} {v:.3f}" for k, v in density.items()))
    table(args, train=True)
    table(args, train=False)


if __name__ == '__main__':
    main()

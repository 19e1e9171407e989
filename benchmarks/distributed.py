"""Scale-out evidence for `bytropix.training.distributed`, with real processes on torch.distributed (gloo on the CPU,
nccl on CUDA), the same wrappers the trainer uses (`wrap_model`: DDP, FSDP2 `fully_shard`).

1. Scaling: tokens/s of 2 ranks vs 1 at equal per-rank batch (the default GPT, 4 × 128), and the communication share of
   a 2-rank step: 1 − (step time without the gradient all-reduce, `no_sync`) / (step time with it).
2. Memory: peak memory per rank of DDP vs FSDP2 (and FSDP2 with CPU offload) for an 8-layer, 512-wide GPT, after a
   few AdamW steps: on the CPU the peak resident set size from the first step on (the high-water mark is reset after
   the model is built and wrapped; it includes the ~0.4 GB of the Python process and torch), on CUDA the peak
   allocated memory.

    OMP_NUM_THREADS=1 python benchmarks/distributed.py              # a few minutes on 2 CPU cores
    python benchmarks/distributed.py --quick                        # tiny sizes, seconds (the CI smoke test)
    python benchmarks/distributed.py --device cuda                  # on GPUs (one per rank)
"""
import argparse
import os
import resource
import sys
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bytropix.models.gpt  # noqa: E402,F401  (imported once: --quick's forked workers inherit it)


def _tc(parallel: str, offload: bool = False) -> SimpleNamespace:
    return SimpleNamespace(parallel=parallel, fsdp_reshard_after_forward=True, fsdp_param_dtype=None, fsdp_reduce_dtype=None,
                           fsdp_cpu_offload=offload, ddp_find_unused=False)


def _reset_peak(device: torch.device) -> None:
    "Start the peak-memory count now (after the full model was built and sharded): VmHWM on Linux, CUDA's peak stats."
    import gc
    gc.collect()
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device); return
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
    except OSError: pass


def _peak_mb(device: torch.device) -> float:
    if device.type == 'cuda': return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024
    except OSError: pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(rank: int, world: int, store: str, job: dict, results) -> None:
    import torch.distributed as dist
    import bytropix.models.gpt  # noqa: F401
    from bytropix.models.base import build_model
    from bytropix.training.distributed import Distributed, wrap_model
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    device = torch.device(job['device'])
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    dist.init_process_group(backend, init_method=f'file://{store}', rank=rank, world_size=world)
    d = Distributed(job['parallel'], device)
    torch.manual_seed(0)
    model = build_model('gpt', dict(n_layer=job['n_layer'], n_head=max(2, job['n_embd'] // 64), n_embd=job['n_embd'],
                                    vocab_size=256, block_size=job['T'])).to(d.device)
    wrapped = wrap_model(model, d, _tc(job['parallel'], job.get('offload', False))) if world > 1 or job['parallel'] == 'fsdp' else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    b, T = job['b'], job['T']
    x = torch.randint(0, 256, (b, T), device=d.device)

    def step(sync: bool = True) -> None:
        ctx = d.grad_sync(wrapped, sync) if wrapped is not model else torch.enable_grad()
        with ctx: wrapped(x, x).loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)

    _reset_peak(d.device)
    for _ in range(2): step()
    modes = ['sync', 'nosync'] if job.get('comm') and world > 1 else ['sync']
    times: dict = {m: [] for m in modes}
    for _ in range(job.get('rounds', 1)):   # the modes alternate: a busy shared CPU affects both alike
        for mode in modes:
            if world > 1: dist.barrier()
            t0 = time.perf_counter()
            for _ in range(job['steps']): step(mode == 'sync')
            if device.type == 'cuda': torch.cuda.synchronize()
            times[mode].append((time.perf_counter() - t0) / job['steps'])
    out = {m: sorted(v)[len(v) // 2] for m, v in times.items()}
    out['peak_mb'] = _peak_mb(d.device)
    local = lambda t: t.to_local() if hasattr(t, 'to_local') else t   # a DTensor's own shard
    held = [local(p) for p in model.parameters()] + [local(v) for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
    out['state_mb'] = sum(t.numel() * t.element_size() for t in held) / 2**20
    results[rank] = out
    dist.destroy_process_group()


def run(world: int, **job) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        results = mp.Manager().dict()
        # --quick forks (no re-import per worker: seconds); measurements spawn fresh interpreters, as torchrun does
        method = 'fork' if job.get('fork') and sys.platform == 'linux' else 'spawn'
        mp.start_processes(_worker, args=(world, f'{tmp}/store', job, results), nprocs=world, join=True, start_method=method)
        return [results[r] for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='tiny sizes, a few steps (smoke test)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--only', choices=['scaling', 'memory'], default=None, help='run one of the two parts')
    ap.add_argument('--steps', type=int, default=10, help='steps per timed round (5 rounds)')
    a = ap.parse_args()
    q = a.quick
    steps = 3 if q else a.steps
    scale = dict(n_layer=2 if q else 4, n_embd=32 if q else 128, T=32 if q else 128, b=2 if q else 8, steps=steps, device=a.device, rounds=1 if q else 5, fork=q)
    print(f"# distributed benchmark: device {a.device}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    if a.only != 'memory': scaling(scale)
    if a.only != 'scaling': memory(q, a.device)



def scaling(scale: dict) -> None:
    one = run(1, parallel='ddp', **scale)[0]
    two = run(2, parallel='ddp', comm=True, **scale)
    t2 = max(r['sync'] for r in two)
    tok1, tok2 = scale['b'] * scale['T'] / one['sync'], 2 * scale['b'] * scale['T'] / t2
    comm = 1 - max(r['nosync'] for r in two) / t2
    print(f"\n## Scaling: GPT {scale['n_layer']} × {scale['n_embd']}, per-rank batch {scale['b']} × {scale['T']} tokens, DDP\n")
    print('| ranks | step ms | tokens/s | speed-up vs 1 rank | communication share |')
    print('|---|---|---|---|---|')
    print(f"| 1 | {one['sync'] * 1e3:.1f} | {tok1:,.0f} | 1.00 | – |")
    print(f"| 2 | {t2 * 1e3:.1f} | {tok2:,.0f} | {tok2 / tok1:.2f} | {comm:.0%} |")


def memory(q: bool, device: str) -> None:
    mem = dict(n_layer=2 if q else 8, n_embd=64 if q else 512, T=32 if q else 128, b=2 if q else 4, steps=2, device=device, fork=q)
    n = 12 * mem['n_layer'] * mem['n_embd'] ** 2
    print(f"\n## Peak memory per rank: GPT {mem['n_layer']} × {mem['n_embd']} (≈{n / 1e6:.1f}M parameters in blocks), 2 ranks, AdamW\n")
    print('| mode | weights + AdamW state per rank, MB | vs DDP | peak memory MB rank 0 | rank 1 | vs DDP |')
    print('|---|---|---|---|---|---|')
    rows = [('DDP', dict(parallel='ddp')), ('FSDP2', dict(parallel='fsdp'))] + ([] if q or device == 'cpu' else [('FSDP2 + CPU offload', dict(parallel='fsdp', offload=True))])
    ref = None
    for name, kw in rows:
        try: r = run(2, **kw, **mem)
        except Exception as e:
            why = [l for l in str(e).splitlines() if l.strip()][-1:] or [type(e).__name__]
            print(f"| {name} | – | – | – | – | not run: {why[0][:160]} |"); continue
        peak, state = max(x['peak_mb'] for x in r), max(x['state_mb'] for x in r)
        ref = ref or (state, peak)
        print(f"| {name} | {state:.0f} | {state / ref[0]:.2f} | {r[0]['peak_mb']:.0f} | {r[1]['peak_mb']:.0f} | {peak / ref[1]:.2f} |")
    if device == 'cpu': print("| FSDP2 + CPU offload | – | – | – | – | not run: offload moves accelerator memory to the CPU (--device cuda) |")


if __name__ == '__main__':
    main()

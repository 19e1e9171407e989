"""StackWise evidence: progressive training (4 stages, a stack of k blocks each) against end-to-end training of the same
final depth on the same data — final bits per byte (the masked-diffusion ELBO), wall time and peak memory — with and
without the frozen-trunk cache, and with LoRA/QLoRA on the trunk instead of a frozen one.

Budgets are matched in training FLOPs, counted with the 6N rule over the weight matrices a token passes through:
a trained matrix costs 6 FLOPs per weight per token (forward 2, input gradient 2, weight gradient 2), a frozen matrix
below every trained one 2 (forward only: no gradient has to pass through it), a frozen matrix with trained parts below
it or adapters on it 4 (forward and input gradient), a cache hit 0. The end-to-end run gets the step count that spends the
progressive schedule's FLOPs (and, as a second reference, the same number of steps). Every run has its own process, so
its peak resident memory is its own (CPU: Python and torch included). Training data is cut to `tokens` so that each stage
sees its examples several times — the regime in which a trunk cache can pay off.

    python benchmarks/stackwise.py --quick     # tiny: seconds (the smoke test)
    python benchmarks/stackwise.py             # 8 blocks × 96 wide, k = 2, 4 stages of 60 steps (~10 min on 2 busy cores)
    python benchmarks/stackwise.py --only cache  # the trunk cache's step time alone (uncached, cold, warm; a minute)
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

def sizes(quick: bool) -> dict:
    if quick: return dict(n_layer=4, k=1, n_embd=32, n_head=2, stage_steps=3, batch=4, block=16, tokens=2000, eval_batches=2, eval_points=2)
    return dict(n_layer=8, k=2, n_embd=96, n_head=4, stage_steps=60, batch=8, block=64, tokens=12000, eval_batches=16, eval_points=4)

FROZEN = {'embeddings': 'frozen'}
RUNS = {   # name: stages 2-4 (None: end to end), cache
    'progressive, frozen trunk': ({}, 'off'),
    'progressive, frozen trunk + embeddings': (FROZEN, 'off'),
    'progressive, frozen + trunk cache': (FROZEN, 'memory'),
    'progressive, LoRA trunk': ({'trunk': 'lora'}, 'off'),
    'progressive, QLoRA trunk (NF4)': ({'trunk': 'qlora'}, 'off'),
}


def block_and_head_weights(s: dict) -> tuple[int, int]:
    "Weights of one block's matrices and of the head matrix (the 6N rule's N)."
    import bytropix.models.gpt  # noqa: F401
    from bytropix.models.base import build_model
    m = build_model('gpt', dict(vocab_size=257, block_size=s['block'], n_layer=1, n_embd=s['n_embd'], n_head=s['n_head'],
                                causal=False, tie_embeddings=False))
    nb = sum(p.numel() for n, p in m.named_parameters() if n.startswith('blocks.0.') and p.ndim == 2)
    return nb, m.lm_head.weight.numel()


def flops(s: dict, stages: dict | None) -> float:
    "Training FLOPs of a run (see the module docstring); `stages` None: end to end for `s['e2e_steps']` steps."
    nb, nh = block_and_head_weights(s)
    tok = s['batch'] * s['block']
    if stages is None: return s['e2e_steps'] * tok * 6 * (s['n_layer'] * nb + nh)
    total = 0.0
    for i in range(s['n_layer'] // s['k']):
        trunk = i * s['k'] * nb
        through = stages.get('trunk', 'frozen') != 'frozen' or stages.get('embeddings', 'train') != 'frozen'
        total += s['stage_steps'] * tok * (6 * s['k'] * nb + 6 * nh + (4 if through else 2) * trunk if i else 6 * (s['k'] * nb + nh))
    return total


def config(s: dict, out: Path, stages: dict | None, cache: str, steps: int | None = None) -> dict:
    n = s['n_layer'] // s['k']
    total = steps if stages is None else n * s['stage_steps']
    d = {'arch': 'gpt', 'task': 'mdlm', 'out_dir': str(out),
         'model': {'n_layer': s['n_layer'], 'n_embd': s['n_embd'], 'n_head': s['n_head'], 'causal': False, 'tie_embeddings': False},
         'task_options': {'eval_points': s['eval_points']},
         'data': {'max_train_tokens': s['tokens'], 'max_val_tokens': 20000},
         'train': {'steps': total, 'batch_size': s['batch'], 'block_size': s['block'], 'lr': 2e-3, 'min_lr': 2e-4,
                   'warmup_steps': max(1, total // 20), 'eval_interval': 0, 'save_interval': 0, 'sample_interval': 0,
                   'eval_batches': s['eval_batches'], 'tensorboard': False, 'log_interval': 1000, 'keep_last': 1, 'seed': 1}}
    if stages is not None:
        d['train']['stackwise'] = {'stack_size': s['k'], 'cache': cache, 'cache_variants': 2,
                                   'stages': [{'steps': s['stage_steps']}] + [{'steps': s['stage_steps'], **stages}] * (n - 1)}
    return d


def child(spec: str) -> None:
    "One run in this process: print its figures as JSON."
    import bytropix.models.gpt  # noqa: F401
    from bytropix.config import RunConfig
    from bytropix.training.trainer import Trainer
    d = json.loads(spec)
    hits = []
    cb = lambda t, step, rec: hits.append(rec['stackwise/cache_hit_rate']) if 'stackwise/cache_hit_rate' in rec else None
    t0 = time.perf_counter()
    tr = Trainer(RunConfig.from_dict(d), log=None, progress=False, overwrite=True, callbacks=[cb])
    m = tr.fit()
    wall = time.perf_counter() - t0
    train = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
    print(json.dumps({'bpb': m['val/bpb'], 'wall_s': wall, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      'hit_rate': sum(hits) / len(hits) if hits else None, 'trainable_last': train}))


def cache_step_times(s: dict, reps: int) -> dict:
    "Seconds per training step of the last stage (median of `reps`, interleaved): uncached, cache cold (all misses), warm (all hits)."
    import torch
    import bytropix.models.gpt  # noqa: F401
    from bytropix.config import RunConfig
    from bytropix.training.diffusion import setup_mdlm
    from bytropix.training.stackwise import CachedTrunkObjective, StackRack, TrunkCache
    torch.manual_seed(0)
    run = RunConfig.from_dict(config(s, Path('/nonexistent'), FROZEN, 'memory')).resolved(257)
    rack, m = StackRack(run), None
    for i in range(s['n_layer'] // s['k']): m = rack.build(i, m)
    setup_mdlm(m, None, run)
    L, k = s['n_layer'], s['k']
    obj = CachedTrunkObjective(m, range(0, L - k), range(L - k, L), TrunkCache('memory'), variants=1)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    xs = [torch.randint(0, 256, (s['batch'], s['block'])) for _ in range(4)]
    m.train()
    for x in xs: m(x, x)   # fill the cache
    def step(kind: str, x) -> float:
        if kind == 'cold': obj.cache = TrunkCache('memory')
        t0 = time.perf_counter()
        out = obj._forward(x, x) if kind == 'uncached' else m(x, x)
        out.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0
    times = {'uncached': [], 'cold': [], 'warm': []}
    for r in range(reps):
        for kind in times: times[kind].append(step(kind, xs[r % 4]))
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def run_one(d: dict, quick: bool = False) -> dict:
    if quick:   # the smoke test: in this process (peak memory is then the process's so far)
        import contextlib, io
        with contextlib.redirect_stdout(io.StringIO()) as f: child(json.dumps(d))
        return json.loads(f.getvalue().strip().splitlines()[-1])
    env = {**os.environ, 'PYTHONPATH': os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')}
    r = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', json.dumps(d)], capture_output=True, text=True, env=env)
    if r.returncode: raise SystemExit(f"run {d['out_dir']} failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='tiny sizes: seconds (the smoke test)')
    ap.add_argument('--only', choices=('runs', 'cache'), help='only the runs table, or only the trunk-cache step timing')
    ap.add_argument('--child', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child: return child(args.child)
    s = sizes(args.quick)
    if args.only != 'cache': table(s, args)
    if args.only != 'runs': cache_table(s, args)


def table(s: dict, args) -> None:
    "Progressive schedules against end-to-end training (each run in its own process)."
    n = s['n_layer'] // s['k']
    nb, nh = block_and_head_weights(s)
    ref = flops(s, {})   # the progressive frozen-trunk schedule's FLOPs: the end-to-end budget
    s['e2e_steps'] = max(1, round(ref / (s['batch'] * s['block'] * 6 * (s['n_layer'] * nb + nh))))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plan = [('end to end, same FLOPs', None, 'off', s['e2e_steps']), ('end to end, same steps', None, 'off', n * s['stage_steps']),
                *[(k, st, c, None) for k, (st, c) in RUNS.items()]]
        if args.quick: plan = [plan[0], plan[4], plan[6]]   # seconds: one end-to-end, the cached and the QLoRA schedules
        for name, stages, cache, steps in plan:
            r = run_one(config(s, Path(tmp)/str(len(rows)), stages, cache, steps), args.quick)
            f = flops({**s, 'e2e_steps': steps}, stages)
            rows.append((name, steps or n * s['stage_steps'], f, r))
            print(f"{name}: {r}", file=sys.stderr, flush=True)
    base = rows[0][3]
    print(f"\nStackWise{' (--quick: tiny, not a measurement)' if args.quick else ''}: {s['n_layer']} blocks × {s['n_embd']} wide, k = {s['k']} ({n} stages of {s['stage_steps']} steps), batch "
          f"{s['batch']} × {s['block']} tokens, {s['tokens']:,} training tokens, task mdlm; end to end gets {s['e2e_steps']} steps "
          "for the same FLOPs.\n")
    print('| run | steps | train FLOPs / e2e | val bpb (ELBO) | bpb / e2e | wall s | wall / e2e | peak MB | trunk cache hits |')
    print('|---|---|---|---|---|---|---|---|---|')
    for name, steps, f, r in rows:
        hit = f"{r['hit_rate']:.0%}" if r['hit_rate'] is not None else '–'
        print(f"| {name} | {steps} | {f / rows[0][2]:.2f} | {r['bpb']:.4f} | {r['bpb'] / base['bpb']:.3f} | {r['wall_s']:.1f} | "
              f"{r['wall_s'] / base['wall_s']:.2f} | {r['peak_mb']:.0f} | {hit} |")


def cache_table(s: dict, args) -> None:
    "The trunk cache's effect on one training step of the last stage."
    c = cache_step_times(s, 3 if args.quick else 15)
    print(f"\nTrunk cache, one training step of the last stage ({s['n_layer'] - s['k']} frozen blocks below {s['k']} new ones, "
          f"median of {3 if args.quick else 15}, interleaved):\n")
    print('| trunk | ms / step | speed-up vs uncached |')
    print('|---|---|---|')
    for kind, what in (('uncached', 'recomputed (no cache)'), ('cold', 'cache cold: every example a miss'), ('warm', 'cache warm: every example a hit')):
        print(f"| {what} | {c[kind] * 1e3:.1f} | {c['uncached'] / c[kind]:.2f}× |")


if __name__ == '__main__':
    main()

"""Every language-model architecture of the registry at three sizes, trained on the default corpus at equal training
compute and at equal wall time: validation bits per byte, training tokens/s, peak memory and generation time per token
at a short and a long context, as a markdown table, a JSON file and a PNG.

Which architectures: every entry of `bytropix.models.base.MODELS` that is a causal language model. Puzzle solvers
(config a `PuzzleModelConfig`: they map puzzle grids to answers, not text to the next byte) and bidirectional
encoders (`is_encoder` with `causal: false`) are skipped, with the reason printed. An architecture registered later
is picked up by itself.

Sizes. Each size is a reference GPT shape (n_layer, n_embd, 4 heads); every other architecture gets the same depth
and the width (a multiple of 8) that brings its parameter count closest to the reference's; its other fields keep
their defaults, except dropout, off for every model (the runs are far too short to overfit). Architectures whose
config has no `n_embd` keep their defaults (said in the table).

Training: the embedded default corpus, byte tokenizer, the same batches (same seed) for every run,
`build_optimizer` (AdamW; Riemannian Adam for manifold parameters), the platform's `LRScheduler` (warmup 10 % of the
run's steps, cosine to lr/10), clipping at 1.0, fp32. Each run is a fresh subprocess, so its peak memory is its own
(CPU: the peak resident set above the process's size once the data is loaded; CUDA: max allocated).
- equal compute: the FLOPs of one training step are measured per architecture (`training_step_flops`, a forward and
  backward pass under `FlopCounterMode`), and each gets `budget / FLOPs-per-step` steps. Default budget of a size:
  `--steps` steps of the reference architecture (gpt).
- equal wall time: each architecture trains for about `--budget-seconds` (default: the time the reference needed for
  its equal-compute run); the schedule's steps are the budget times the steps/s each one reached in its
  equal-compute run, and a run that is slower than that stops at the budget. The seconds each run took are printed:
  on a loaded machine they differ, and so does what "equal time" means.
- equal data (the BDH paper's setting, "rivals GPT-2 at the same number of parameters ... for the same training
  data"): the `--equal-data` architectures (default bdh) also train as many steps as the reference.
Generation: the trained equal-compute model, its weights copied into one with a `block_size` holding the context,
consumes a context of 32 and of 4096 tokens through its incremental state (KV cache, recurrent state) and then the
median time of `--gen-tokens` single-token steps is reported. A model without incremental decoding recomputes the
whole sequence for each token (marked `recompute`).

    python benchmarks/compare.py                                 # small, medium, large; 200 reference steps each
    python benchmarks/compare.py --sizes small medium --steps 100 --out-dir nbs/images/compare
    python benchmarks/compare.py --quick                         # tiny sizes, seconds (the smoke test)
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shlex
import statistics
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

SIZES = {'small': dict(n_layer=2, n_embd=64), 'medium': dict(n_layer=4, n_embd=128), 'large': dict(n_layer=6, n_embd=192)}
QUICK_SIZES = {'small': dict(n_layer=1, n_embd=32), 'medium': dict(n_layer=1, n_embd=48), 'large': dict(n_layer=2, n_embd=48)}
REFERENCE = 'gpt'


def language_models() -> tuple[list[str], dict[str, str]]:
    "Registered causal-LM architectures, and the skipped ones with the reason."
    from bytropix.models.base import MODELS
    from bytropix.models.reasoning import PuzzleModelConfig
    keep, skipped = [], {}
    for name in MODELS.names():
        cls = MODELS.get(name)
        if issubclass(cls.config_class, PuzzleModelConfig):
            skipped[name] = 'puzzle solver (maps puzzle grids to answers, not text to the next byte)'
        elif getattr(cls, 'is_encoder', False) and not getattr(cls.config_class(), 'causal', True):
            skipped[name] = 'bidirectional encoder (masked-LM; its causal form is the gpt trunk)'
        else: keep.append(name)
    return sorted(keep, key=lambda n: (n != REFERENCE, n)), skipped


def _build(arch: str, fields: dict, meta: bool = False):
    import torch
    from bytropix.models.base import build_model
    if not meta: return build_model(arch, fields)
    with torch.device('meta'): return build_model(arch, fields)


def _count(arch: str, fields: dict) -> int | None:
    from bytropix.core import ConfigError
    try: return _build(arch, fields, meta=True).num_parameters()
    except (ConfigError, ValueError, AssertionError, RuntimeError): return None


def model_fields(arch: str, shape: dict, block_size: int) -> tuple[dict, str]:
    "Fields of `arch` at the size of reference shape `shape` (parameter-matched by width), and a note."
    from bytropix.models.base import get_config_class
    names = {f for f in get_config_class(arch).__dataclass_fields__}
    base = {'vocab_size': 256, 'block_size': block_size, **({'dropout': 0.0} if 'dropout' in names else {})}
    ref = {**base, **shape, 'n_head': 4}
    if arch == REFERENCE: return {**ref, **({'multiple_of': 16} if 'multiple_of' in names else {})}, ''
    target = _count(REFERENCE, {**ref, 'multiple_of': 16})
    if 'n_embd' not in names: return base, 'default config (no n_embd to match)'
    fields = {**base, **{k: v for k, v in shape.items() if k in names}, **({'n_head': 4} if 'n_head' in names else {})}
    best, best_n = None, None
    def consider(widths):
        nonlocal best, best_n
        for w in widths:
            n = _count(arch, {**fields, 'n_embd': w})
            if n is not None and (best_n is None or abs(n - target) < abs(best_n - target)): best, best_n = w, n
    consider(range(32, 4 * shape['n_embd'] + 1, 32))     # coarse, then every multiple of 8 around the best
    consider(range(8, 64, 8) if best is None else range(max(8, best - 24), best + 32, 8))
    if best is None: return base, 'default config (no width fits)'
    return {**fields, 'n_embd': best}, ''


def _copy_weights(src, dst) -> None:
    "Copy every tensor of `src`'s state into `dst` where names and shapes agree (buffers sized by block_size differ)."
    import torch
    sd, dd = src.state_dict(), dst.state_dict()
    with torch.no_grad():
        for k, v in dd.items():
            if k in sd and sd[k].shape == v.shape: v.copy_(sd[k])


def generation_ms(model, arch: str, fields: dict, contexts: list[int], n: int, seed: int) -> tuple[list[float], str]:
    "Median ms of one generated token after each context length, and how ('cache' or 'recompute')."
    import torch
    out = []
    mode = 'cache' if getattr(model, 'supports_incremental', False) else 'recompute'
    for ctx in contexts:
        m = _build(arch, {**fields, 'block_size': max(fields['block_size'], ctx + n + 1)})
        _copy_weights(model, m); m.eval()
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, 256, (1, ctx), generator=g)
        times = []
        with torch.no_grad():
            if mode == 'cache':
                state = m.init_state(1, 'cpu')
                for i in range(0, ctx, 512): logits, state = m.step(ids[:, i:i + 512], state)
                tok = logits[:, -1:].argmax(-1)
                for _ in range(n):
                    t0 = time.perf_counter(); logits, state = m.step(tok, state); times.append(time.perf_counter() - t0)
                    tok = logits[:, -1:].argmax(-1)
            else:
                for _ in range(max(1, min(n, 3 if ctx > 512 else n))):
                    t0 = time.perf_counter(); logits = m(ids).logits; times.append(time.perf_counter() - t0)
                    ids = torch.cat([ids, logits[:, -1:].argmax(-1)], 1)
        out.append(1000 * statistics.median(times))
    return out, mode


def train_run(spec: dict) -> dict:
    "Train one architecture for `spec['steps']` steps (in a fresh process); return its measurements."
    import torch
    torch.set_num_threads(spec['threads'])
    from bytropix.config import TrainConfig
    from bytropix.core import seed_everything
    from bytropix.data.datasets import DataConfig, prepare_data
    from bytropix.data.tokenizers import byte_tokenizer
    from bytropix.training.evaluation import evaluate
    from bytropix.training.memory import peak_memory, reset_peak_memory
    from bytropix.training.optim import LRScheduler, build_optimizer, clip_gradients
    seed_everything(spec['seed'])
    data = prepare_data(DataConfig(), byte_tokenizer(), spec['block_size'], spec['batch_size'], spec['seed'])
    it = iter(data.train)                      # the same seed: every run sees the same batches
    reset_peak_memory('cpu')
    base = peak_memory('cpu')
    seed_everything(spec['seed'])
    model = _build(spec['arch'], spec['fields'])
    steps = max(1, spec['steps'])
    tc = TrainConfig(steps=steps, lr=spec['lr'], min_lr=spec['lr'] / 10, warmup_steps=max(1, steps // 10),
                     weight_decay=0.1, clip_grad=1.0, batch_size=spec['batch_size'], block_size=spec['block_size'])
    opt = build_optimizer(model, tc, 'cpu')
    sched = LRScheduler(opt, tc)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    train_time = 0.0
    for s in range(steps):
        x, y = next(it)
        t0 = time.perf_counter()
        loss = model(x, y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(params, tc.clip_grad)
        opt.step(); sched.step()
        train_time += time.perf_counter() - t0
        if spec.get('max_seconds') and train_time >= spec['max_seconds']: steps = s + 1; break   # equal time: a slower machine stops here
    ev = evaluate(model, data.val_batches(spec['val_batches']), data.bytes_per_token)
    out = {'bpb': ev['bpb'], 'steps': steps, 'train_s': train_time,
           'tokens_per_s': steps * spec['batch_size'] * spec['block_size'] / train_time,
           'peak_mib': max(0, peak_memory('cpu') - base) / 2**20}
    if spec.get('contexts'):
        out['gen_ms'], out['gen_mode'] = generation_ms(model, spec['arch'], spec['fields'], spec['contexts'],
                                                       spec['gen_tokens'], spec['seed'])
    return out


def run_fresh(spec: dict, inline: bool) -> dict:
    if inline: return train_run(spec)
    with mp.get_context('spawn').Pool(1) as pool: return pool.apply(train_run, (spec,))


def _fail(message: str) -> None:
    print(f"compare.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _per_size(values: list[float] | None, sizes: list[str], what: str) -> dict[str, float | None]:
    if not values: return {s: None for s in sizes}
    if len(values) == 1: return {s: values[0] for s in sizes}
    if len(values) != len(sizes): _fail(f"give {what} once, or once per size in the order of --sizes ({' '.join(sizes)}).")
    return dict(zip(sizes, values))


def plan(a) -> tuple[list[str], dict]:
    "The architectures and, per size, each one's fields, parameters and FLOPs per step."
    from bytropix.training.memory import training_step_flops
    archs, skipped = language_models()
    for name, why in skipped.items(): print(f"skipped {name}: {why}")
    if a.archs:
        bad = [n for n in a.archs if n not in archs]
        if bad:
            why = '; '.join(f"{n}: {skipped.get(n, 'not a registered architecture')}" for n in bad)
            _fail(f"cannot compare {why}. Choose among {', '.join(archs)}.")
        archs = [n for n in archs if n in a.archs or n == REFERENCE]   # the reference sets the sizes and budgets
    sizes = {}
    for size in a.sizes:
        sizes[size] = {}
        for arch in archs:
            fields, note = model_fields(arch, a.size_shapes[size], a.block_size)
            try:     # shapes only: fast at any size; some models make CPU tensors in forward, then count on the CPU
                m = _build(arch, fields, meta=True)
                flops = training_step_flops(m, 1, a.block_size, device='meta')
            except RuntimeError:
                m = _build(arch, fields)
                flops = training_step_flops(m, 1, a.block_size)
            sizes[size][arch] = {'fields': fields, 'note': note, 'params': m.num_parameters(),
                                 'flops_per_step': a.batch_size * flops}
            del m
    return archs, sizes


def measure(a, archs: list[str], sizes: dict) -> list[dict]:
    "Run every training run of the comparison; one row per (size, architecture)."
    budget_f = _per_size(a.budget_flops, a.sizes, '--budget-flops')
    budget_s = _per_size(a.budget_seconds, a.sizes, '--budget-seconds')
    common = dict(batch_size=a.batch_size, block_size=a.block_size, lr=a.lr, seed=a.seed, val_batches=a.val_batches,
                  threads=a.threads, gen_tokens=a.gen_tokens)
    rows = []
    for size in a.sizes:
        ref = sizes[size][REFERENCE]
        flops = budget_f[size] or ref['flops_per_step'] * a.steps
        by_arch = {}
        for arch in archs:
            p = sizes[size][arch]
            steps = max(1, round(flops / p['flops_per_step']))
            r = run_fresh({**common, 'arch': arch, 'fields': p['fields'], 'steps': steps, 'contexts': a.contexts}, a.inline)
            by_arch[arch] = row = {'size': size, 'arch': arch, **p, 'budget_flops': flops,
                                   'flops': steps * p['flops_per_step'], 'flops_run': r}
            print(f"[{size}] {arch}: equal compute {steps} steps, {row['flops_run']}", flush=True)
        seconds = budget_s[size] or by_arch[REFERENCE]['flops_run']['train_s']
        for arch in archs:
            row = by_arch[arch]
            fr = row['flops_run']
            steps = max(1, round(seconds * fr['steps'] / fr['train_s']))
            r = run_fresh({**common, 'arch': arch, 'fields': row['fields'], 'steps': steps, 'max_seconds': seconds}, a.inline)
            row.update(time_run=r, budget_seconds=seconds)
            print(f"[{size}] {arch}: equal time {steps} steps, {r}", flush=True)
            if arch in a.equal_data and arch != REFERENCE:
                steps = by_arch[REFERENCE]['flops_run']['steps']
                row['data_run'] = run_fresh({**common, 'arch': arch, 'fields': row['fields'], 'steps': steps}, a.inline)
                print(f"[{size}] {arch}: equal data {steps} steps, {row['data_run']}", flush=True)
            rows.append(row)
    return rows


def _f(x: float | None, fmt: str) -> str: return '–' if x is None else format(x, fmt)


def table(result: dict) -> str:
    "The markdown table of a comparison (from the JSON this script writes)."
    s = result['settings']
    S, L = s['contexts']
    lines = [f"| size | arch | params | layers × width | GFLOP/step | equal compute: steps | bpb | equal time: steps (s) | bpb | "
             f"train tok/s | peak MiB | ms/token @ {S} | ms/token @ {L} |",
             '|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in result['rows']:
        fr, tr, fl = r['flops_run'], r['time_run'], r['fields']
        shape = f"{fl.get('n_layer', '?')} × {fl.get('n_embd', '?')}" + (f" ({r['note']})" if r['note'] else '')
        gen = fr.get('gen_ms') or [None, None]
        mark = ' (recompute)' if fr.get('gen_mode') == 'recompute' else ''
        lines.append(f"| {r['size']} | {r['arch']} | {r['params']:,} | {shape} | {r['flops_per_step'] / 1e9:.2f} | "
                     f"{fr['steps']} | {fr['bpb']:.3f} | {tr['steps']} ({tr['train_s']:.0f} s) | {tr['bpb']:.3f} | {fr['tokens_per_s']:,.0f} | "
                     f"{fr['peak_mib']:.0f} | {_f(gen[0], '.2f')}{mark} | {_f(gen[1], '.2f')}{mark} |")
    return '\n'.join(lines)


def claim(result: dict, arch: str = 'bdh') -> list[str]:
    "One line per size: `arch`'s bpb against the reference's at equal parameters and data, compute, and time."
    out = []
    for size in result['settings']['sizes']:
        rows = {r['arch']: r for r in result['rows'] if r['size'] == size}
        if arch not in rows or REFERENCE not in rows: continue
        b, g = rows[arch], rows[REFERENCE]
        parts = []
        for what, key in (('equal data', 'data_run'), ('equal compute', 'flops_run'), ('equal time', 'time_run')):
            if key in b or key == 'data_run' and arch == REFERENCE:
                gb = g['flops_run'] if key == 'data_run' else g[key]
                parts.append(f"{what} {b[key]['bpb']:.3f} vs {gb['bpb']:.3f} ({100 * (b[key]['bpb'] / gb['bpb'] - 1):+.1f} %)")
        out.append(f"{size}: {arch} {b['params']:,} params vs {REFERENCE} {g['params']:,}: bpb " + '; '.join(parts))
    return out


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    S, L = result['settings']['contexts']
    panels = [('validation bpb, equal compute', lambda r: r['flops_run']['bpb']),
              ('validation bpb, equal wall time', lambda r: r['time_run']['bpb']),
              ('training tokens/s', lambda r: r['flops_run']['tokens_per_s']),
              ('peak memory of training, MiB', lambda r: r['flops_run']['peak_mib']),
              (f'ms per generated token @ {S}', lambda r: (r['flops_run'].get('gen_ms') or [math.nan])[0]),
              (f'ms per generated token @ {L}', lambda r: (r['flops_run'].get('gen_ms') or [math.nan, math.nan])[1])]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    archs = list(dict.fromkeys(r['arch'] for r in result['rows']))
    sizes = list(dict.fromkeys(r['size'] for r in result['rows']))
    width = 0.8 / len(archs)
    for ax, (title, get) in zip(axes.flat, panels):   # one group of bars per size, one bar per architecture
        for k, arch in enumerate(archs):
            rows = {r['size']: r for r in result['rows'] if r['arch'] == arch}
            ax.bar([i + (k - (len(archs) - 1) / 2) * width for i in range(len(sizes))],
                   [get(rows[s]) if s in rows else math.nan for s in sizes], width, label=arch)
        ax.set_xticks(range(len(sizes)), [f"{s}\n({next(r['params'] for r in result['rows'] if r['size'] == s and r['arch'] == archs[0]):,} params)"
                                          for s in sizes])
        ax.set_title(title, fontsize=10); ax.grid(alpha=0.3, axis='y')
        if 'ms per' in title or 'tokens/s' in title or 'memory' in title: ax.set_yscale('log')
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(result['caption'], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=70); plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', nargs='+', choices=list(SIZES), default=list(SIZES))
    ap.add_argument('--archs', nargs='+', help='architectures to compare (default: every causal LM registered; gpt always)')
    ap.add_argument('--steps', type=int, default=200, help="reference (gpt) steps that set each size's equal-compute budget")
    ap.add_argument('--budget-flops', type=float, nargs='+', help='training FLOPs per run: once, or once per size')
    ap.add_argument('--budget-seconds', type=float, nargs='+', help='training seconds per run: once, or once per size')
    ap.add_argument('--equal-data', nargs='*', default=['bdh'], help='also train these for the reference\'s steps')
    ap.add_argument('--batch-size', type=int, default=8)
    ap.add_argument('--block-size', type=int, default=128)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--val-batches', type=int, default=16)
    ap.add_argument('--contexts', type=int, nargs=2, default=[32, 4096], metavar=('SHORT', 'LONG'))
    ap.add_argument('--gen-tokens', type=int, default=16)
    ap.add_argument('--threads', type=int, default=int(os.environ.get('BENCH_THREADS', 1)))
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out-dir', default='compare-results', help='where compare.json, compare.md and compare.png go')
    ap.add_argument('--machine', default='', help='a note on the machine for the caption (e.g. "2-core CPU, shared")')
    ap.add_argument('--inline', action='store_true', help='train in this process (peak memory then is not per run)')
    ap.add_argument('--quick', action='store_true', help='tiny sizes (seconds): checks the script runs')
    a = ap.parse_args(argv)
    a.size_shapes = SIZES
    if a.quick:
        a.size_shapes, a.sizes = QUICK_SIZES, a.sizes if argv and '--sizes' in argv else ['small']
        a.steps, a.batch_size, a.block_size, a.val_batches, a.contexts, a.gen_tokens = 2, 2, 16, 1, [8, 64], 2
        a.inline = True
    import torch
    torch.set_num_threads(a.threads)
    archs, sizes = plan(a)
    t0 = time.time()
    rows = measure(a, archs, sizes)
    S, L = a.contexts
    caption = (f"{time.strftime('%Y-%m-%d')}, {a.machine or 'CPU'}, {a.threads} thread(s); byte-level default corpus, "
               f"batch {a.batch_size}×{a.block_size}, lr {a.lr}; equal compute = {a.steps} gpt steps per size")
    result = {'caption': caption, 'command': shlex.join(['python', 'benchmarks/compare.py', *(argv if argv is not None else sys.argv[1:])]),
              'settings': {k: getattr(a, k) for k in ('sizes', 'steps', 'batch_size', 'block_size', 'lr', 'val_batches',
                                                      'contexts', 'gen_tokens', 'threads', 'seed', 'equal_data')},
              'size_shapes': {s: a.size_shapes[s] for s in a.sizes}, 'wall_s': time.time() - t0, 'rows': rows}
    print(f"\n{caption}\n")
    print(table(result))
    print('\nBDH vs GPT ("rivals GPT-2 at the same number of parameters"):')
    for line in claim(result): print('  ' + line)
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, 'compare.json'), 'w') as f: json.dump(result, f, indent=1)
    with open(os.path.join(a.out_dir, 'compare.md'), 'w') as f: f.write(caption + '\n\n' + table(result) + '\n')
    plot(result, os.path.join(a.out_dir, 'compare.png'))
    print(f"\nwrote {a.out_dir}/compare.json, compare.md, compare.png ({time.time() - t0:.0f} s)")
    return result


if __name__ == '__main__':
    main()

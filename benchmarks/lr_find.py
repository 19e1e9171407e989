"""LR finder: its suggested learning rate against a small grid search, on a reduced default config (final val bpb of each).

The reduced default config (the default GPT at width 64 and 2 layers, batch 16 × 64 tokens of the embedded corpus,
cosine schedule with warm-up) is first swept by `lr_find` (one sweep: `--sweep-steps` steps from 1e-5 to 1); then
the same run is trained for `--steps` steps at each lr of the grid and at the suggested lr, same seed and data
order, and evaluated on `--eval-batches` validation batches. The table gives the final val bpb of each and its ratio
to the best grid point, plus the cost of the sweep relative to one training run.

    python benchmarks/lr_find.py                # ~10 minutes on 2 CPU cores
    python benchmarks/lr_find.py --quick        # tiny sizes, seconds (the smoke test)
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
from bytropix.config import load_config
from bytropix.training.recipes import lr_find
from bytropix.training.trainer import Trainer


def run_config(a, out_dir, lr=None):
    over = {'out_dir': out_dir, 'model.n_layer': a.n_layer, 'model.n_embd': a.n_embd, 'model.n_head': a.n_head,
            'train.batch_size': a.batch_size, 'train.block_size': a.block_size, 'train.steps': a.steps,
            'train.warmup_steps': max(1, a.steps // 15), 'train.eval_interval': 0, 'train.save_interval': 0,
            'train.sample_interval': 0, 'train.tensorboard': False, 'train.eval_batches': a.eval_batches,
            'train.log_interval': 10 ** 9, 'data.max_train_tokens': a.max_train_tokens}
    if lr is not None: over.update({'train.lr': lr, 'train.min_lr': lr / 10})
    return load_config(None, over)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help="tiny sizes: checks the script runs (seconds)")
    p.add_argument('--steps', type=int, default=400)
    p.add_argument('--sweep-steps', type=int, default=100)
    p.add_argument('--grid', type=float, nargs='+', default=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
    p.add_argument('--n-layer', type=int, default=2)
    p.add_argument('--n-embd', type=int, default=64)
    p.add_argument('--n-head', type=int, default=2)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--block-size', type=int, default=64)
    p.add_argument('--eval-batches', type=int, default=40)
    p.add_argument('--max-train-tokens', type=int, default=None)
    p.add_argument('--threads', type=int, default=None)
    a = p.parse_args()
    if a.quick:
        a.steps, a.sweep_steps, a.grid, a.n_layer, a.n_embd, a.batch_size, a.block_size, a.eval_batches = 8, 10, [1e-3, 1e-2], 1, 32, 4, 32, 2
        a.max_train_tokens = 50_000
    if a.threads: torch.set_num_threads(a.threads)
    tmp = tempfile.mkdtemp(prefix='lr-find-bench-')
    print(f"# LR finder vs grid: GPT {a.n_layer}×{a.n_embd}, batch {a.batch_size}×{a.block_size}, {a.steps} steps, "
          f"cosine schedule; torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    def train(lr, src):
        t0 = time.perf_counter()
        m = Trainer(run_config(a, f'{tmp}/{src}-{lr:g}', lr), log=None, progress=False).fit()
        rows.append((lr, src, m['val/bpb'], time.perf_counter() - t0))
    for lr in a.grid: train(lr, 'grid')          # first: the data cache is warm for the sweep's timing
    t0 = time.perf_counter()
    res = lr_find(run_config(a, f'{tmp}/sweep'), 1e-5, 1.0, a.sweep_steps)
    sweep_s = time.perf_counter() - t0
    print(f"lr-find: {res} ({sweep_s:.1f} s)")
    train(res.suggested, 'lr-find')
    rows.sort()
    best = min(b for _, s, b, _ in rows if s == 'grid')
    train_s = sum(t for *_, t in rows) / len(rows)
    print('\n| lr | from | final val bpb | / best grid bpb |')
    print('|---|---|---|---|')
    for lr, src, bpb, _ in rows: print(f"| {lr:.3g} | {src} | {bpb:.4f} | {bpb / best:.3f} |")
    print(f"\nsweep cost: {sweep_s:.1f} s = {sweep_s / train_s:.2f} × one {a.steps}-step training run ({train_s:.1f} s)")


if __name__ == '__main__':
    main()

"""Recursive reasoning vs a non-recurrent transformer on held-out puzzles, at equal parameters and equal compute.

    python benchmarks/reasoning.py                    # small CPU run: 9×9 Sudoku (medium), ~5-15 min per model
    python benchmarks/reasoning.py --task maze        # small run on 9×9 perfect mazes (the baseline wins there: see the reasoning chapter)
    python benchmarks/reasoning.py --full             # Sudoku-Extreme-like 9×9 at paper scale (GPU)
    python benchmarks/reasoning.py --full --task maze # 30×30 Maze-Hard-like at paper scale (GPU)

Three models see the same puzzles:

- `hrm`  — HRM (two modules of `layers/2` blocks, N·T low-level steps per segment, Q-learned halting);
- `trm`  — TRM (one network of 2 blocks, widened until its parameter count matches, BCE halting);
- `base` — `puzzle_transformer` with `layers` blocks: the same blocks as HRM stacked once, no recurrence.

**Equal parameters.** HRM and the baseline have the same blocks (the baseline lacks only HRM's 2-output Q-head);
TRM's width is chosen so that its 2-block network has the closest parameter count. Counts are printed.

**Equal compute.** Compute is counted in *forward block applications per puzzle* (`compute/layer_passes`, reported
by every model: block applications in the segments actually run, including those without gradients and HRM's extra
target segment). Every model trains until it has spent the same budget: budget = steps × batch × passes per puzzle.
The recursive models spend ~10-50 passes per puzzle per step, the baseline `layers`, so the baseline gets
proportionally more optimizer steps (and more backward passes: recursive models backpropagate through the last
step(s) only). This is generous to the baseline; wall-clock times are reported too.

Published anchors at full scale: Sudoku-Extreme HRM 55.0%, TRM 87.4%; Maze-Hard (30×30) HRM 74.5%, TRM 85.3%.

`--full` generates Sudoku-Extreme-like data (1000 + 1000 minimal 9×9 puzzles needing ≥ 30 solver guesses; ~20 s
on 16 cores) or Maze-Hard-like data (30×30, unique shortest path ≥ 110 steps), builds paper-size models (HRM
27M; baseline 8 blocks of width 512; TRM's 2 blocks widened to the same count — pass `--trm-width 512` for the
paper's 7M TRM), trains in bf16 with batch 768 (mazes: 256, with per-segment activation checkpointing) and
AdamW lr 1e-4, weight decay 1.0. Measured on one H100 at the start of training (16 segments, no halting yet):
~4 s per HRM step on Sudoku, ~13 s on mazes; steps get cheaper once the models learn to halt. The default
budget (2e9 block applications × puzzles per model) is roughly a day for the three models; the papers train
longer (raise `--budget`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from bytropix.data.puzzles import (MazeTaskConfig, PuzzleLoader, SudokuTaskConfig, augment_maze, augment_sudoku,
                                   load_puzzles, puzzle_batches)
from bytropix.models.reasoning import HRM, TRM, HRMConfig, PuzzleTransformer, PuzzleTransformerConfig, TRMConfig

ANCHORS = {'sudoku': {'hrm': 55.0, 'trm': 87.4}, 'maze': {'hrm': 74.5, 'trm': 85.3}}

def task_setup(args) -> tuple[dict, object, str]:
    "The puzzle sets, the augmentation and a description."
    if args.task == 'sudoku':
        cfg = SudokuTaskConfig(box=args.box, difficulty=args.difficulty, min_guesses=args.min_guesses,
                               min_givens=args.min_givens, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                               workers=args.workers)
        aug = (lambda x, y, g: augment_sudoku(x, y, g, box=cfg.box)) if args.augment else None
        n = cfg.box ** 2
        desc = f"{n}×{n} Sudoku, {cfg.difficulty}" + (f", ≥{cfg.min_guesses} guesses" if cfg.min_guesses else '')
    else:
        cfg = MazeTaskConfig(size=args.size, loops=args.loops, min_path_len=args.min_path_len, n_train=args.n_train,
                             n_test=args.n_test, seed=args.seed, workers=args.workers)
        aug = augment_maze if args.augment else None
        desc = f"{cfg.size}×{cfg.size} mazes, loops {cfg.loops}" + (f", path ≥ {cfg.min_path_len}" if cfg.min_path_len else '')
    t = time.perf_counter()
    sets = load_puzzles(args.task, cfg)
    print(f"data: {desc}: {len(sets['train'])} train / {len(sets['test'])} test puzzles "
          f"(mean difficulty {sets['train'].difficulty.mean():.1f}) in {time.perf_counter() - t:.1f}s", flush=True)
    return sets, aug, desc

def build_models(args, vocab: int, length: int) -> dict[str, torch.nn.Module]:
    "HRM, TRM and the baseline at (nearly) equal parameter counts."
    common = dict(vocab_size=vocab, block_size=length, n_head=args.heads, multiple_of=args.multiple_of,
                  halt_max_steps=args.segments, halt_exploration_prob=0.1)
    half = args.layers // 2
    hrm = HRM(HRMConfig(**common, mixer=args.mixer, n_embd=args.width, H_layers=half, L_layers=args.layers - half,
                        H_cycles=args.N, L_cycles=args.T))
    base_kw = {k: v for k, v in common.items() if not k.startswith('halt')}
    base = PuzzleTransformer(PuzzleTransformerConfig(**base_kw, n_embd=args.width, n_layer=args.layers, mixer=args.mixer))
    target = base.num_parameters()
    trm_kw = dict(**common, n_layers=2, H_cycles=args.trm_T, L_cycles=args.trm_n, mixer=args.trm_mixer)
    step = 2 * args.heads
    best = args.trm_width or min(range(args.width, 2 * args.width + 1, step),
                                 key=lambda w: abs(TRM(TRMConfig(**trm_kw, n_embd=w)).num_parameters() - target))
    trm = TRM(TRMConfig(**trm_kw, n_embd=best))
    return {'hrm': hrm, 'trm': trm, 'base': base}

@torch.no_grad()
def evaluate(model, sets, device, batch: int) -> dict[str, float]:
    model.eval()
    tot = {'metric/exact_accuracy': 0.0, 'metric/token_accuracy': 0.0, 'steps': 0.0}
    n = 0
    for x, y in puzzle_batches(sets['test'].inputs, sets['test'].targets, batch):
        out = model(x.to(device), y.to(device))
        for k in tot: tot[k] += float(out.aux[k]) * len(x)
        n += len(x)
    model.train()
    return {k: v / n for k, v in tot.items()}

def train(name, model, sets, aug, args, device) -> dict:
    "Train until the compute budget (forward block applications × puzzles) is spent; evaluate on the test split."
    torch.manual_seed(args.seed)
    model.to(device).train()
    model.gradient_checkpointing = bool(args.ckpt)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': args.wd}, {'params': other, 'weight_decay': 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    loader = PuzzleLoader(sets['train'].inputs, sets['train'].targets, args.batch, seed=args.seed, augment=aug)
    spent, step, t0 = 0.0, 0, time.perf_counter()
    log_every = max(1, args.log_every)
    curve = []
    while spent < args.budget:
        x, y = next(loader)
        x, y = x.to(device), y.to(device)
        for g in opt.param_groups: g['lr'] = args.lr * min(1.0, (step + 1) / args.warmup)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(args.amp) and device.type == 'cuda'):
            out = model(x, y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        spent += float(out.aux['compute/layer_passes']) * len(x)
        step += 1
        if step % log_every == 0:
            print(f"  {name:5s} step {step:6d}  loss {out.loss.item():.3f}  train exact "
                  f"{float(out.aux['metric/exact_accuracy']):.3f}  steps {float(out.aux['steps']):.2f}  "
                  f"budget {100 * spent / args.budget:5.1f}%  {time.perf_counter() - t0:6.0f}s", flush=True)
        if args.eval_every and step % args.eval_every == 0:
            ev = evaluate(model, sets, device, args.eval_batch)
            curve.append((step, spent, ev['metric/exact_accuracy']))
            print(f"  {name:5s} step {step:6d}  test exact {ev['metric/exact_accuracy']:.3f}", flush=True)
    wall = time.perf_counter() - t0
    ev = evaluate(model, sets, device, args.eval_batch)
    ev_max = None
    if hasattr(model.config, 'halt_at_eval'):
        model.config.halt_at_eval = False
        ev_max = evaluate(model, sets, device, args.eval_batch)
        model.config.halt_at_eval = True
    return {'model': name, 'params': model.num_parameters(), 'steps': step, 'passes_per_puzzle_step': spent / step / args.batch,
            'budget': spent, 'wall_s': wall, 'exact': ev['metric/exact_accuracy'], 'token': ev['metric/token_accuracy'],
            'eval_segments': ev['steps'], 'exact_at_max': None if ev_max is None else ev_max['metric/exact_accuracy'],
            'curve': curve}

def table(rows, desc, args) -> str:
    lines = [f"**{desc}** — {args.n_train} train / {args.n_test} test puzzles, budget {args.budget:.3g} forward block "
             f"applications × puzzles per model, batch {args.batch}, device {args.device}", '',
             '| model | params | optimizer steps | fwd blocks / puzzle / step | wall (s) | exact (halting) | exact (all segments) | token acc | segments at eval |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        at_max = '—' if r['exact_at_max'] is None else f"{100 * r['exact_at_max']:.1f}%"
        lines.append(f"| {r['label']} | {r['params']:,} | {r['steps']:,} | {r['passes_per_puzzle_step']:.1f} | {r['wall_s']:.0f} | "
                     f"{100 * r['exact']:.1f}% | {at_max} | {100 * r['token']:.1f}% | {r['eval_segments']:.2f} |")
    return '\n'.join(lines)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--task', choices=['sudoku', 'maze'], default='sudoku')
    p.add_argument('--full', action='store_true', help='paper-scale data and models (run on a GPU)')
    p.add_argument('--models', default='hrm,trm,base')
    p.add_argument('--device', default='auto')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default=None, help='also write the results as JSON here')
    # data
    p.add_argument('--box', type=int); p.add_argument('--difficulty'); p.add_argument('--min-guesses', type=int)
    p.add_argument('--min-givens', type=int); p.add_argument('--size', type=int); p.add_argument('--loops', type=float)
    p.add_argument('--min-path-len', type=int); p.add_argument('--n-train', type=int); p.add_argument('--n-test', type=int)
    p.add_argument('--augment', type=int); p.add_argument('--workers', type=int)
    # models
    p.add_argument('--width', type=int); p.add_argument('--heads', type=int); p.add_argument('--layers', type=int)
    p.add_argument('--multiple-of', type=int); p.add_argument('--N', type=int); p.add_argument('--T', type=int)
    p.add_argument('--trm-width', type=int, help="TRM width (default: matched to the baseline's parameter count)")
    p.add_argument('--trm-T', type=int); p.add_argument('--trm-n', type=int); p.add_argument('--trm-mixer')
    p.add_argument('--mixer', help='token mixer of HRM and the baseline: attention or mlp')
    p.add_argument('--amp', type=int, help='bf16 autocast on CUDA (1/0)')
    p.add_argument('--ckpt', type=int, help='activation checkpointing of each segment (1/0)')
    p.add_argument('--segments', type=int)
    # training
    p.add_argument('--budget', type=float); p.add_argument('--batch', type=int); p.add_argument('--lr', type=float)
    p.add_argument('--wd', type=float); p.add_argument('--warmup', type=int); p.add_argument('--eval-batch', type=int)
    p.add_argument('--log-every', type=int); p.add_argument('--eval-every', type=int)
    p.add_argument('--quick', action='store_true', help='tiny sizes (seconds): checks that the script runs and prints its tables')
    args = p.parse_args(argv)
    if args.quick:   # explicit flags still win over the quick sizes
        p.set_defaults(**dict(n_train=32, n_test=16, width=32, heads=2, segments=2, budget=2e3, batch=16, warmup=5, eval_batch=32, log_every=1000)); args = p.parse_args(argv)

    small = dict(box=3, difficulty='medium', min_guesses=0, min_givens=0, size=9, loops=0.0, min_path_len=0,
                 n_train=1000, n_test=500, augment=1, workers=1, width=64, heads=4, layers=2, multiple_of=16, N=2, T=2,
                 trm_T=2, trm_n=2, trm_mixer='mlp', mixer='mlp', amp=0, ckpt=0, segments=4, budget=1e6, batch=64,
                 lr=1e-3, wd=0.1, warmup=50, eval_batch=500, log_every=250, eval_every=0)
    if args.task == 'maze': small.update(budget=2e6)
    full = dict(box=3, difficulty='hard', min_guesses=30, min_givens=0, size=30, loops=0.1, min_path_len=110,
                n_train=1000, n_test=1000, augment=1, workers=os.cpu_count() or 1, width=512, heads=8, layers=8,
                multiple_of=256, N=2, T=2, trm_T=3, trm_n=6, trm_mixer='mlp' if args.task == 'sudoku' else 'attention',
                mixer='attention', amp=1, ckpt=1,
                segments=16, budget=2e9, batch=768, lr=1e-4, wd=1.0, warmup=2000, eval_batch=1000, log_every=100,
                eval_every=0)
    if args.task == 'maze': full.update(augment=0, batch=256)  # 901 tokens: 256 puzzles × 16 segments fit in 80 GB
    for k, v in (full if args.full else small).items():
        if getattr(args, k) is None: setattr(args, k, v)
    args.augment = bool(args.augment)
    device = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available() else
                          ('cpu' if args.device == 'auto' else args.device))
    args.device = str(device)
    torch.set_float32_matmul_precision('high')

    sets, aug, desc = task_setup(args)
    vocab, length = sets['train'].vocab_size, sets['train'].seq_len
    models = build_models(args, vocab, length)
    labels = {'hrm': f"HRM ({args.layers // 2}+{args.layers - args.layers // 2} layers, {args.mixer}, N={args.N}, T={args.T}, ≤{args.segments} segments)",
              'trm': f"TRM (2 layers, width {models['trm'].config.n_embd}, T={args.trm_T}, n={args.trm_n}, {args.trm_mixer}, ≤{args.segments} segments)",
              'base': f"Transformer ({args.layers} layers, {args.mixer}, no recurrence)"}
    for k, m in models.items(): print(f"{k}: {m.num_parameters():,} parameters, {m.layers_per_segment} blocks per segment")
    rows = []
    for name in args.models.split(','):
        print(f"training {name} ...", flush=True)
        r = train(name, models[name], sets, aug, args, device)
        r['label'] = labels[name]
        print(f"  {name}: exact {100 * r['exact']:.1f}% in {r['steps']} steps, {r['wall_s']:.0f}s", flush=True)
        rows.append(r)
        if args.json:
            with open(args.json, 'w') as f: json.dump({'args': vars(args), 'rows': rows}, f, indent=1)
    print()
    print(table(rows, desc, args))
    if args.full:
        a = ANCHORS[args.task]
        print(f"\nPublished at full scale: HRM {a['hrm']}%, TRM {a['trm']}% exact.")
    return rows

if __name__ == '__main__':
    main()

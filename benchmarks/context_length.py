"""Bits per byte against evaluation context length, beyond the training length, with and without RoPE scaling.

A Llama-style GPT (configs/default.yaml's trunk: 4 layers, n_embd 128, byte tokenizer, embedded corpus) trains at
`--block-size` tokens (128), then is evaluated on the same validation tokens cut into windows of 128, 256, 512 and
1024 tokens, with plain RoPE, position interpolation (pi) and NTK-aware base scaling (ntk) at the factor
s = length / training length (`bytropix.layers.rope.scale_rope`; the weights are not touched). The loss is the mean
over every position of every window, so a longer window gives later tokens more context: a model that uses it gains,
a model whose attention breaks beyond its training positions loses.

    python benchmarks/context_length.py                 # 600 training steps at 128, eval up to 1024
    python benchmarks/context_length.py --quick         # tiny sizes: checks that the script runs
"""
import argparse
import math
import os
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)  # run from a checkout too

import torch  # noqa: E402


def train(args, out: str):
    "A Trainer for the causal GPT at `--block-size` (with `--curriculum`: 1/4 → 1/2 → full length)."
    from bytropix.config import load_config
    from bytropix.training.trainer import Trainer
    T = args.block_size
    sched = [[0, T // 4], [args.steps // 4, T // 2], [args.steps // 2, T]] if args.curriculum else None
    d = {'arch': 'gpt', 'out_dir': out, 'model': dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head),
         'data': dict(max_train_tokens=args.max_train_tokens),
         'train': dict(steps=args.steps, batch_size=args.batch_size, block_size=T, block_size_schedule=sched, lr=args.lr,
                       warmup_steps=min(100, args.steps // 10), eval_interval=0, eval_batches=1, save_interval=0,
                       sample_interval=0, tensorboard=False, seed=1337)}
    tr = Trainer(load_config(None, d), log=None, progress=False)
    t0 = time.perf_counter(); tr.fit()
    return tr, time.perf_counter() - t0


@torch.no_grad()
def bpb(model, tokens, length: int, batch: int, bytes_per_token: float) -> float:
    "Mean bits per byte over non-overlapping windows of `length` tokens of `tokens` (every position counted)."
    from bytropix.data.datasets import val_blocks
    nll, n = 0.0, 0
    for x, y in val_blocks(tokens, length, batch):
        logits = model(x).logits.float()
        nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction='sum'))
        n += y.numel()
    return nll / n / math.log(2) / bytes_per_token


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help="tiny sizes and few steps (a smoke test, not a measurement)")
    ap.add_argument('--steps', type=int, default=600)
    ap.add_argument('--n-layer', type=int, default=4); ap.add_argument('--n-embd', type=int, default=128)
    ap.add_argument('--n-head', type=int, default=4)
    ap.add_argument('--batch-size', type=int, default=16); ap.add_argument('--block-size', type=int, default=128)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--max-train-tokens', type=int, default=None)
    ap.add_argument('--lengths', default='128,256,512,1024', help="evaluation window lengths (tokens)")
    ap.add_argument('--eval-tokens', type=int, default=32768, help="validation tokens evaluated at every length")
    ap.add_argument('--curriculum', action='store_true', help="train with train.block_size_schedule (T/4 → T/2 → T)")
    ap.add_argument('--threads', type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.n_layer, args.n_embd, args.n_head, args.batch_size, args.block_size = 4, 1, 32, 2, 4, 16
        args.max_train_tokens, args.lengths, args.eval_tokens = 50_000, '16,32,64', 512
    if args.threads: torch.set_num_threads(args.threads)
    from bytropix.layers.rope import scale_rope

    tr, dt = train(args, tempfile.mkdtemp(prefix='bytropix-ctx-'))
    model, bpt = tr.model.eval(), tr.data.bytes_per_token
    lengths = [int(v) for v in args.lengths.split(',')]
    tokens = tr.data.val_packed.tokens[:args.eval_tokens + 1]
    if len(tokens) < max(lengths) + 1: sys.exit(f"context_length: only {len(tokens)} validation tokens; lower --lengths.")
    T = args.block_size
    print(f"\n## bpb vs evaluation context: GPT ({model.num_parameters():,} parameters) trained {args.steps} steps at "
          f"{T} tokens{' (curriculum T/4 → T/2 → T)' if args.curriculum else ''} in {dt:.0f} s; {len(tokens) - 1:,} "
          "validation tokens per length\n")
    print("| eval length | × training length | RoPE (none) | PI (factor s) | NTK-aware (factor s) |")
    print("|---|---|---|---|---|")
    for L in lengths:
        s = max(1.0, L / T)
        row = []
        for spec in (None, f'pi:{s:g}', f'ntk:{s:g}'):
            scale_rope(model, spec)
            row.append(bpb(model, tokens, L, max(1, 4096 // L), bpt))
        scale_rope(model, None)
        print(f"| {L} | {L / T:g} | {row[0]:.4f} | {row[1]:.4f} | {row[2]:.4f} |")
    print(f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == '__main__':
    main()

"""Bits per byte against evaluation context length: a fixed-length run vs a sequence-length curriculum, RoPE scaling
beyond the training length, and a short position-interpolation fine-tune at the long length.

Two Llama-style GPTs (configs/default.yaml's trunk: 4 layers, n_embd 128, byte tokenizer, embedded corpus) train the
same number of steps on the same tokens per step: one at `--block-size` tokens (128) throughout, one with the
curriculum `train.block_size_schedule` T/4 → T/2 → T (the loader's windows cut shorter early on). Both are evaluated on
the same validation tokens cut into windows of 128, 256, 512 and 1024 tokens; the fixed-length model also with
position interpolation (pi) and NTK-aware base scaling (ntk) at the factor s = length / training length
(`bytropix.layers.rope.scale_rope`; the weights are not touched). The loss is the mean over every position of every
window, so a longer window gives later tokens more context: a model that uses it gains, a model whose attention breaks
beyond its training positions loses.

Then the fixed-length model is fine-tuned `--ft-steps` steps at 2× and 4× its training length (the same tokens per
step, `--ft-lr`): once with PI at that factor (the recipe of Chen et al. 2023) and once with plain RoPE (the control:
the same extra training without interpolation), each evaluated at the long length and at the training length.

    python benchmarks/context_length.py                 # 300 training steps at 128, eval up to 1024, 60-step fine-tunes
    python benchmarks/context_length.py --quick         # tiny sizes: checks that the script runs
"""
import argparse
import copy
import math
import os
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

import torch  # noqa: E402


def train(args, out: str, curriculum: bool = False, model=None, steps: int | None = None, block_size: int | None = None,
          lr: float | None = None, rope: str | None = None):
    """A fitted Trainer for the causal GPT at `block_size` (default `--block-size`; `curriculum`: 1/4 → 1/2 → full
    length); with `model`: fine-tune (a copy of) it, its RoPE scaled by `rope` first. The tokens per step stay
    `--batch-size` × `--block-size`."""
    from bytropix.config import load_config
    from bytropix.layers.rope import scale_rope
    from bytropix.training.trainer import Trainer
    T, L, steps, lr = args.block_size, block_size or args.block_size, steps or args.steps, lr or args.lr
    sched = [[0, T // 4], [steps // 4, T // 2], [steps // 2, T]] if curriculum else None
    d = {'arch': 'gpt', 'out_dir': out, 'model': dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head),
         'data': dict(max_train_tokens=args.max_train_tokens),
         'train': dict(steps=steps, batch_size=max(1, args.batch_size * T // L), block_size=L, block_size_schedule=sched,
                       lr=lr, min_lr=lr / 10, warmup_steps=min(100, steps // 10), eval_interval=0, eval_batches=1,
                       save_interval=0, sample_interval=0, tensorboard=False, seed=1337)}
    if model is not None:
        model = copy.deepcopy(model)
        model.config.block_size = max(model.config.block_size, L)   # the longest context it is trained at (RoPE extends)
        scale_rope(model, rope)
    tr = Trainer(load_config(None, d), model=model, log=None, progress=False)
    t0 = time.perf_counter(); tr.fit()
    return tr, time.perf_counter() - t0


@torch.no_grad()
def bpb(model, tokens, length: int, batch: int, bytes_per_token: float) -> float:
    "Mean bits per byte over non-overlapping windows of `length` tokens of `tokens` (every position counted)."
    from bytropix.data.datasets import val_blocks
    was = model.training; model.eval()
    nll, n = 0.0, 0
    for x, y in val_blocks(tokens, length, batch):
        logits = model(x).logits.float()
        nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction='sum'))
        n += y.numel()
    model.train(was)
    return nll / n / math.log(2) / bytes_per_token


def at(model, spec, tokens, L, bpt) -> float:
    "bpb at window length L with RoPE scaling `spec` (then plain RoPE again)."
    from bytropix.layers.rope import scale_rope
    scale_rope(model, spec)
    try: return bpb(model, tokens, L, max(1, 4096 // L), bpt)
    finally: scale_rope(model, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help="tiny sizes and few steps (a smoke test, not a measurement)")
    ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--n-layer', type=int, default=4); ap.add_argument('--n-embd', type=int, default=128)
    ap.add_argument('--n-head', type=int, default=4)
    ap.add_argument('--batch-size', type=int, default=16); ap.add_argument('--block-size', type=int, default=128)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--max-train-tokens', type=int, default=None)
    ap.add_argument('--lengths', default='128,256,512,1024', help="evaluation window lengths (tokens)")
    ap.add_argument('--eval-tokens', type=int, default=16384, help="validation tokens evaluated at every length")
    ap.add_argument('--ft-steps', type=int, default=60, help="fine-tuning steps at 2× and 4× the training length")
    ap.add_argument('--ft-lr', type=float, default=5e-4)
    ap.add_argument('--threads', type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.n_layer, args.n_embd, args.n_head, args.batch_size, args.block_size = 4, 1, 32, 2, 4, 16
        args.max_train_tokens, args.lengths, args.eval_tokens, args.ft_steps = 50_000, '16,32,64', 512, 2
    if args.threads: torch.set_num_threads(args.threads)

    tmp = tempfile.mkdtemp(prefix='bytropix-ctx-')
    fixed, dt_f = train(args, os.path.join(tmp, 'fixed'))
    cur, dt_c = train(args, os.path.join(tmp, 'curriculum'), curriculum=True)
    model, bpt = fixed.model.eval(), fixed.data.bytes_per_token
    lengths = [int(v) for v in args.lengths.split(',')]
    tokens = fixed.data.val_packed.tokens[:args.eval_tokens + 1]
    if len(tokens) < max(lengths) + 1: sys.exit(f"context_length: only {len(tokens)} validation tokens; lower --lengths.")
    T = args.block_size
    print(f"\n## bpb vs evaluation context: GPT ({model.num_parameters():,} parameters) trained {args.steps} steps of "
          f"{args.batch_size * T:,} tokens, at {T} tokens throughout ({dt_f:.0f} s) or with the curriculum "
          f"{T // 4} → {T // 2} → {T} ({dt_c:.0f} s); {len(tokens) - 1:,} validation tokens per length\n")
    print("| eval length | × training length | fixed: RoPE | fixed: PI (factor s) | fixed: NTK-aware (factor s) | "
          "curriculum: RoPE | curriculum: NTK-aware |")
    print("|---|---|---|---|---|---|---|")
    for L in lengths:
        s = max(1.0, L / T)
        row = [at(model, spec, tokens, L, bpt) for spec in (None, f'pi:{s:g}', f'ntk:{s:g}')]
        row += [at(cur.model, spec, tokens, L, bpt) for spec in (None, f'ntk:{s:g}')]
        print(f"| {L} | {L / T:g} | " + " | ".join(f"{v:.4f}" for v in row) + " |")

    print(f"\n## Fine-tuning {args.ft_steps} steps at the long length (lr {args.ft_lr:g}, {args.batch_size * T:,} tokens per "
          "step), from the fixed-length model\n")
    print(f"| length L | × | no fine-tune, PI | fine-tuned with PI: at L | … at {T} (with PI) | fine-tuned, plain RoPE "
          f"(control): at L | … at {T} | fine-tune time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for k in (2, 4):
        L = k * T
        if L > len(tokens) - 1: continue
        pi, _ = train(args, os.path.join(tmp, f'pi{k}'), model=model, steps=args.ft_steps, block_size=L, lr=args.ft_lr, rope=f'pi:{k}')
        plain, dt = train(args, os.path.join(tmp, f'plain{k}'), model=model, steps=args.ft_steps, block_size=L, lr=args.ft_lr)
        print(f"| {L} | {k} | {at(model, f'pi:{k}', tokens, L, bpt):.4f} | "
              f"{bpb(pi.model, tokens, L, max(1, 4096 // L), bpt):.4f} | {bpb(pi.model, tokens, T, max(1, 4096 // T), bpt):.4f} | "
              f"{at(plain.model, None, tokens, L, bpt):.4f} | {at(plain.model, None, tokens, T, bpt):.4f} | {dt:.0f} |")
    print(f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == '__main__':
    main()

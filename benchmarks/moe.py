"""Mixture of experts vs dense GPT blocks: bits per byte at equal steps and training tokens/s, at equal active and at
equal total parameters.

Four Llama-style GPTs train on the embedded default corpus (byte tokenizer) with the same batches, optimizer
(`build_optimizer`: AdamW), schedule and number of steps, one after the other in this process:

- `dense`: the reference, SwiGLU MLP of ratio 4;
- `moe top-2`: 8 SwiGLU experts of ratio 2, 2 per token — the same active MLP parameters per token as `dense`,
  4× the total; Switch balance loss 0.01, z-loss 0.001, capacity factor 1.25 in training;
- `moe top-1`: 8 experts of ratio 4, 1 per token (Switch) — equal active parameters again;
- `dense wide`: one SwiGLU MLP of ratio 16 — the total parameters of `moe top-2`, all active.

Reported per model: total and active parameters, validation bits per byte (fixed validation batches, dropless
routing), training tokens/s and both as ratios against `dense` measured in the same run. Expert loads at the end
(max load · E: 1 is perfectly balanced) show whether the balance loss works.

    python benchmarks/moe.py                    # 120 steps each, ~7 minutes on 2 shared CPU cores
    python benchmarks/moe.py --steps 2000 --batch-size 16   # a longer comparison for a quiet machine
    python benchmarks/moe.py --quick            # tiny sizes, seconds (the smoke test)
"""
import argparse
import math
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)


def variants(n_embd: int) -> list[tuple[str, dict]]:
    moe = dict(mlp='moe', n_experts=8, moe_capacity_factor=1.25, moe_balance_coef=0.01, moe_z_coef=1e-3)
    return [('dense', dict(mlp_ratio=4.0)),
            ('moe top-2', dict(moe, moe_top_k=2, moe_mlp_ratio=2.0)),
            ('moe top-1', dict(moe, moe_top_k=1, moe_mlp_ratio=4.0)),
            ('dense wide', dict(mlp_ratio=16.0))]


def active_parameters(model) -> int:
    "Parameters a token uses: all, minus the experts it is not routed to."
    from bytropix.layers.moe import MoE
    n = model.num_parameters()
    for m in model.modules():
        if isinstance(m, MoE):
            per = sum(p.numel() for p in m.experts[0].parameters())
            n -= (m.n_experts - m.top_k) * per
    return n


def train(name: str, fields: dict, a, data, batches: list) -> dict:
    import torch
    from bytropix.config import TrainConfig
    from bytropix.core import seed_everything
    from bytropix.models.base import build_model
    from bytropix.training.evaluation import evaluate
    from bytropix.training.optim import LRScheduler, build_optimizer, clip_gradients
    from bytropix.layers.moe import MoE
    seed_everything(a.seed)
    tc = TrainConfig(steps=a.steps, lr=a.lr, min_lr=a.lr / 10, warmup_steps=max(1, a.steps // 10), weight_decay=0.1,
                     clip_grad=1.0, batch_size=a.batch_size, block_size=a.block_size)
    model = build_model('gpt', dict(vocab_size=256, block_size=a.block_size, n_layer=a.n_layer, n_head=4,
                                    n_embd=a.n_embd, multiple_of=16, **fields))
    opt = build_optimizer(model, tc, 'cpu')
    sched = LRScheduler(opt, tc)
    params = [p for p in model.parameters() if p.requires_grad]
    train_time, ntok, last = 0.0, 0, {}
    for x, y in batches:
        t0 = time.perf_counter()
        model.train()
        out = model(x, y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        clip_gradients(params, tc.clip_grad)
        opt.step(); sched.step()
        train_time += time.perf_counter() - t0; ntok += x.numel()
        last = out.aux
    ev = evaluate(model, data.val_batches(a.val_batches), data.bytes_per_token)
    imbalance = [float(v) for k, v in last.items() if k.endswith('/imbalance')]
    return {'name': name, 'params': model.num_parameters(), 'active': active_parameters(model), 'bpb': ev['bpb'],
            'tok_s': ntok / train_time, 'imbalance': max(imbalance) if imbalance else None,
            'moe': any(isinstance(m, MoE) for m in model.modules())}


def table(rows: list[dict]) -> str:
    ref = rows[0]
    out = ['| model | total params | active params | val bpb | bpb / dense | train tok/s | tok/s / dense | max expert load·E |',
           '|---|---|---|---|---|---|---|---|']
    for r in rows:
        imb = f"{r['imbalance']:.2f}" if r['imbalance'] is not None else '—'
        out.append(f"| {r['name']} | {r['params']:,} | {r['active']:,} | {r['bpb']:.3f} | {r['bpb'] / ref['bpb']:.3f} | "
                   f"{r['tok_s']:,.0f} | {r['tok_s'] / ref['tok_s']:.2f} | {imb} |")
    return '\n'.join(out)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=120)
    ap.add_argument('--batch-size', type=int, default=8)
    ap.add_argument('--block-size', type=int, default=128)
    ap.add_argument('--n-layer', type=int, default=4)
    ap.add_argument('--n-embd', type=int, default=128)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--val-batches', type=int, default=16)
    ap.add_argument('--threads', type=int, default=int(os.environ.get('BENCH_THREADS', 1)))
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--quick', action='store_true', help='tiny sizes (seconds): checks the script runs')
    a = ap.parse_args(argv)
    if a.quick: a.steps, a.batch_size, a.block_size, a.n_layer, a.n_embd, a.val_batches = 3, 2, 32, 1, 32, 1
    import torch
    torch.set_num_threads(a.threads)
    from bytropix.data.datasets import DataConfig, prepare_data
    from bytropix.data.tokenizers import byte_tokenizer
    data = prepare_data(DataConfig(), byte_tokenizer(), a.block_size, a.batch_size, a.seed)
    it = iter(data.train)
    batches = [next(it) for _ in range(a.steps)]          # every model sees the same batches
    rows = []
    for name, fields in variants(a.n_embd):
        rows.append(train(name, fields, a, data, batches))
        print(f"{name}: {rows[-1]['bpb']:.3f} bpb, {rows[-1]['tok_s']:,.0f} tok/s", flush=True)
    print(f"\n{a.steps} steps × {a.batch_size}×{a.block_size} tokens, n_layer {a.n_layer}, n_embd {a.n_embd}, "
          f"{a.threads} thread(s)\n")
    print(table(rows))
    return rows


if __name__ == '__main__':
    main()

"""Mamba vs GPT at about equal parameters: bits per byte at equal steps, training tokens/s, and per-token generation
time at a short and a long context (Mamba's must stay flat).

Both models train on the embedded default corpus (byte tokenizer) with the same batches, optimizer, schedule and
number of steps. The GPT is the default Llama-style model (n_layer 4, n_embd 128); the Mamba model has the same
width and as many layers as brings its parameter count closest to the GPT's.

Generation: for each context length (32 and 4096 tokens by default) a fresh, untrained model of each architecture
(the timing does not depend on the weights; the GPT's `block_size` is raised to hold the context) consumes the
context through its incremental state (KV cache / recurrent state), then the script times single-token `step`
calls: the median over `--gen-tokens` steps, in milliseconds, and the long/short ratio. Attention reads the whole
KV cache at every step; the selective scan's state has a fixed size.

    python benchmarks/mamba.py                   # 120 training steps each, ~6 minutes on 2 shared CPU cores
    python benchmarks/mamba.py --quick           # tiny sizes, seconds (the smoke test)
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)


def model_fields(a) -> dict:
    "GPT and Mamba settings of about equal parameter counts."
    from bytropix.models.base import build_model
    gpt = dict(n_layer=a.n_layer, n_head=4, n_embd=a.n_embd, multiple_of=16)
    target = build_model('gpt', dict(vocab_size=256, block_size=a.block_size, **gpt)).num_parameters()
    count = lambda L: build_model('mamba', dict(vocab_size=256, n_layer=L, n_embd=a.n_embd)).num_parameters()
    best = min(range(1, 4 * a.n_layer + 1), key=lambda L: abs(count(L) - target))
    return {'gpt': gpt, 'mamba': dict(n_layer=best, n_embd=a.n_embd)}


def train(arch: str, fields: dict, a, data, batches: list) -> dict:
    from bytropix.config import TrainConfig
    from bytropix.core import seed_everything
    from bytropix.models.base import build_model
    from bytropix.training.evaluation import evaluate
    from bytropix.training.optim import LRScheduler, build_optimizer, clip_gradients
    seed_everything(a.seed)
    tc = TrainConfig(steps=a.steps, lr=a.lr, min_lr=a.lr / 10, warmup_steps=max(1, a.steps // 10), weight_decay=0.1,
                     clip_grad=1.0, batch_size=a.batch_size, block_size=a.block_size)
    model = build_model(arch, dict(vocab_size=256, block_size=a.block_size, **fields))
    opt = build_optimizer(model, tc, 'cpu')
    sched = LRScheduler(opt, tc)
    params = [p for p in model.parameters() if p.requires_grad]
    train_time, ntok = 0.0, 0
    for x, y in batches:
        t0 = time.perf_counter()
        model.train()
        out = model(x, y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        clip_gradients(params, tc.clip_grad)
        opt.step(); sched.step()
        train_time += time.perf_counter() - t0; ntok += x.numel()
    ev = evaluate(model, data.val_batches(a.val_batches), data.bytes_per_token)
    return {'arch': arch, 'params': model.num_parameters(), 'bpb': ev['bpb'], 'tok_s': ntok / train_time,
            'layers': fields['n_layer']}


def step_ms(arch: str, fields: dict, context: int, n: int, seed: int) -> float:
    "Median milliseconds of one single-token `step` after `context` tokens (fresh model, incremental state)."
    import torch
    from bytropix.models.base import build_model
    torch.manual_seed(seed)
    model = build_model(arch, dict(vocab_size=256, block_size=context + n + 1, **fields)).eval()
    ids = torch.randint(0, 256, (1, context))
    times = []
    with torch.no_grad():
        state = model.init_state(1, 'cpu')
        chunk = 512                                    # prefill in pieces (bounded memory for either model)
        for i in range(0, context, chunk): model.step(ids[:, i:i + chunk], state)
        tok = torch.randint(0, 256, (1, 1))
        for _ in range(n):
            t0 = time.perf_counter(); logits, state = model.step(tok, state); times.append(time.perf_counter() - t0)
            tok = logits[:, -1:].argmax(-1)
    return 1000 * statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=120)
    ap.add_argument('--batch-size', type=int, default=8)
    ap.add_argument('--block-size', type=int, default=128)
    ap.add_argument('--n-layer', type=int, default=4)
    ap.add_argument('--n-embd', type=int, default=128)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--val-batches', type=int, default=16)
    ap.add_argument('--contexts', type=int, nargs=2, default=[32, 4096], metavar=('SHORT', 'LONG'))
    ap.add_argument('--gen-tokens', type=int, default=32)
    ap.add_argument('--threads', type=int, default=int(os.environ.get('BENCH_THREADS', 1)))
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--quick', action='store_true', help='tiny sizes (seconds): checks the script runs')
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.batch_size, a.block_size, a.n_layer, a.n_embd, a.val_batches = 3, 2, 32, 1, 32, 1
        a.contexts, a.gen_tokens = [8, 64], 4
    import torch
    torch.set_num_threads(a.threads)
    from bytropix.data.datasets import DataConfig, prepare_data
    from bytropix.data.tokenizers import byte_tokenizer
    fields = model_fields(a)
    data = prepare_data(DataConfig(), byte_tokenizer(), a.block_size, a.batch_size, a.seed)
    it = iter(data.train)
    batches = [next(it) for _ in range(a.steps)]          # both models see the same batches
    rows = {arch: train(arch, fields[arch], a, data, batches) for arch in ('gpt', 'mamba')}
    for arch in rows:
        rows[arch]['gen'] = [step_ms(arch, fields[arch], c, a.gen_tokens, a.seed) for c in a.contexts]
        print(f"{arch}: {rows[arch]['bpb']:.3f} bpb, {rows[arch]['tok_s']:,.0f} tok/s, step ms {rows[arch]['gen']}", flush=True)
    S, L = a.contexts
    print(f"\n{a.steps} steps × {a.batch_size}×{a.block_size} tokens, n_embd {a.n_embd}, {a.threads} thread(s); "
          f"generation: median of {a.gen_tokens} single-token steps\n")
    ref = rows['gpt']
    print(f"| model | layers | params | val bpb | bpb / gpt | train tok/s | tok/s / gpt | ms/token @ {S} | ms/token @ {L} | {L}/{S} |")
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in rows.values():
        g = r['gen']
        print(f"| {r['arch']} | {r['layers']} | {r['params']:,} | {r['bpb']:.3f} | {r['bpb'] / ref['bpb']:.3f} | "
              f"{r['tok_s']:,.0f} | {r['tok_s'] / ref['tok_s']:.2f} | {g[0]:.2f} | {g[1]:.2f} | {g[1] / g[0]:.2f} |")
    return rows


if __name__ == '__main__':
    main()

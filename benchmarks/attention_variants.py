"""Multi-head latent attention (MLA) vs grouped-query (GQA) vs multi-head attention (MHA) in the GPT, at equal
parameter count: KV-cache bytes per token, decode tokens/s at a long context, and validation bpb at equal steps.

The three models share configs/default.yaml's trunk (4 layers, n_embd 128, 4 heads, byte tokenizer); GQA uses one
key/value head, MLA a 32-wide latent with a 16-wide decoupled RoPE part. The SwiGLU width (`mlp_ratio`, in steps of
8 channels) is adjusted so every model has the MHA model's parameter count within 1 %. Decode speed: a prompt
filling the context to `--context` tokens is prefilled through the KV cache, then `--decode` tokens are decoded one
at a time (greedy, batch 1; MLA decodes in the absorbed form, attending over the cached latents). Training: the same
batches, optimizer and number of steps for all three (`bytropix.training.trainer.Trainer`).

    python benchmarks/attention_variants.py                 # 4096-token context, 300 training steps each
    python benchmarks/attention_variants.py --variants mla  # one variant (the bpb column is deterministic: runs can be split)
    python benchmarks/attention_variants.py --quick         # tiny sizes: checks that the script runs
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

import torch  # noqa: E402

VARIANTS = {'MHA': {}, 'GQA (1 kv head)': {'n_kv_head': 1},
            'MLA (d_c 32, d_R 16)': {'attention': 'mla', 'kv_lora_rank': 32, 'rope_head_dim': 16}}
KEYS = dict(zip(('mha', 'gqa', 'mla'), VARIANTS))


def model_dict(args, over: dict, mlp_ratio: float) -> dict:
    return dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, multiple_of=8, mlp_ratio=mlp_ratio, **over)


def matched_ratio(args, over: dict, target: int) -> tuple[float, int]:
    "The mlp_ratio (in 8-channel steps) whose model has the parameter count closest to `target`."
    from bytropix.models.base import build_model
    best = None
    for k in range(8, 120):
        r = k * 8 * 1.5 / args.n_embd   # SwiGLU hidden = ⅔ · ratio · d = 8k channels
        with torch.device('meta'): n = build_model('gpt', model_dict(args, over, r), vocab_size=256, block_size=64).num_parameters()
        if best is None or abs(n - target) < abs(best[1] - target): best = (r, n)
    return best


def kv_bytes_per_token(model) -> int:
    "Bytes the decoding state adds per token over all layers (element size × values per token of each cache)."
    st = model.init_state(1, max_len=1)
    return sum((c.k.shape[1] * c.k.shape[3] + c.v.shape[1] * c.v.shape[3]) * c.k.element_size() for c in st.caches)


@torch.no_grad()
def decode_speed(model, context: int, n: int) -> float:
    "Decode tokens/s for `n` greedy tokens after a prompt that fills the context to `context` tokens (batch 1, cached)."
    model.eval()
    ids = torch.randint(0, 256, (1, context - n))
    st = model.init_state(1, max_len=context)
    logits, st = model.step(ids, st)
    nxt = logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(n):
        logits, st = model.step(nxt, st)
        nxt = logits[:, -1:].argmax(-1)
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help="tiny sizes and few steps (a smoke test, not a measurement)")
    ap.add_argument('--n-layer', type=int, default=4); ap.add_argument('--n-embd', type=int, default=128)
    ap.add_argument('--n-head', type=int, default=4)
    ap.add_argument('--context', type=int, default=4096); ap.add_argument('--decode', type=int, default=32)
    ap.add_argument('--steps', type=int, default=300); ap.add_argument('--batch-size', type=int, default=16)
    ap.add_argument('--block-size', type=int, default=128); ap.add_argument('--eval-batches', type=int, default=20)
    ap.add_argument('--max-train-tokens', type=int, default=None)
    ap.add_argument('--variants', default='mha,gqa,mla', help="which of mha, gqa, mla to run (comma-separated)")
    args = ap.parse_args()
    chosen = [v.strip() for v in args.variants.split(',')]
    if not chosen or any(v not in KEYS for v in chosen):
        sys.exit(f"attention_variants: --variants takes a comma-separated subset of {', '.join(KEYS)}, got {args.variants!r}.")
    if args.quick:
        args.n_layer, args.n_embd, args.context, args.decode, args.steps = 1, 64, 128, 4, 3
        args.batch_size, args.block_size, args.eval_batches, args.max_train_tokens = 4, 32, 2, 50_000
    from bytropix.config import load_config
    from bytropix.models.base import build_model
    from bytropix.training.evaluation import evaluate
    from bytropix.training.trainer import Trainer

    torch.manual_seed(0)
    with torch.device('meta'): target = build_model('gpt', model_dict(args, {}, 4.0), vocab_size=256, block_size=64).num_parameters()
    rows, tmp = [], tempfile.mkdtemp(prefix='bytropix-attn-')
    for name, over in ((KEYS[v], VARIANTS[KEYS[v]]) for v in chosen):
        ratio, n = (4.0, target) if not over else matched_ratio(args, over, target)
        m = build_model('gpt', model_dict(args, over, ratio), vocab_size=256, block_size=args.context)
        kv, speed = kv_bytes_per_token(m), decode_speed(m, args.context, args.decode)
        run = load_config(None, {'arch': 'gpt', 'out_dir': os.path.join(tmp, str(len(rows))), 'model': model_dict(args, over, ratio),
                                 'data': dict(max_train_tokens=args.max_train_tokens),
                                 'train': dict(steps=args.steps, batch_size=args.batch_size, block_size=args.block_size,
                                               warmup_steps=min(100, args.steps // 10), eval_interval=0, save_interval=0,
                                               sample_interval=0, tensorboard=False, eval_batches=args.eval_batches)})
        tr = Trainer(run, log=None, progress=False)
        t0 = time.perf_counter(); tr.fit(); dt = time.perf_counter() - t0
        ev = evaluate(tr.model, tr.data.val_batches, bytes_per_token=tr.data.bytes_per_token, max_batches=args.eval_batches)
        rows.append((name, tr.model.num_parameters(), ratio, kv, speed, ev['bpb'], dt))
    base = next((r for r in rows if r[0] == 'MHA'), None)   # the "vs MHA" columns need MHA in the same run
    print(f"\n## Attention variants: {args.n_layer} layers, n_embd {args.n_embd}, {args.n_head} heads; decode at "
          f"{args.context} tokens of context (batch 1, fp32); bpb after {args.steps} steps of {args.batch_size} × "
          f"{args.block_size} tokens\n")
    print("| attention | parameters | mlp_ratio | KV cache bytes/token | vs MHA | decode tokens/s | vs MHA | validation bpb | training time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, r, kv, sp, bpb, dt in rows:
        vs_kv, vs_sp = (f"{kv / base[3]:.3f}×", f"{sp / base[4]:.2f}×") if base else ('–', '–')
        print(f"| {name} | {n:,} | {r:.3f} | {kv:,} | {vs_kv} | {sp:.1f} | {vs_sp} | {bpb:.4f} | {dt:.0f} |")
    print(f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == '__main__':
    main()

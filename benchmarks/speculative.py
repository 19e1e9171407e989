"""Speculative decoding: greedy tokens/s of a target GPT with a small draft model vs the target alone (same run).

The target is at least 8 layers × 256 wide and the draft costs at most 1/8 of its compute per token (matmul FLOPs,
printed); both are GPTs trained on the default corpus (byte level, same tokenizer). For each number of draft tokens
k the script decodes the same validation-text prompts greedily with the target alone and with the draft, checks that
the tokens are identical (speculative decoding is exact), and prints tokens/s, the speed-up, the acceptance rate and
the tokens per target call (target: ≥ 1.5× at temperature 0), then how much the greedy output loops (distinct
4-grams) and how often the draft's argmax equals the target's on validation text (the acceptance to expect on text
that does not loop).

    python benchmarks/speculative.py --quick                 # tiny models, a few training steps: seconds (smoke test)
    python benchmarks/speculative.py                         # trains target and draft briefly (runs/bench-speculative)
    python benchmarks/speculative.py --target-run runs/big --draft-run runs/small     # reuse trained runs or exports

Timings are wall-clock at batch 1 on `--threads` CPU threads (default 1); on a shared machine they are noisy.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
from bytropix.config import load_config
from bytropix.decoding import SpeculativeStats
from bytropix.generation import generate
from bytropix.training.run import load_trained
from bytropix.training.trainer import Trainer


def train(out: Path, layers: int, width: int, heads: int, steps: int, batch: int, block: int, log, **over) -> Path:
    "Train a default-corpus GPT run into `out`, unless a finished run is already there."
    if (out/'export'/'config.json').is_file():
        log(f"  reusing {out}"); return out
    cfg = {'out_dir': str(out), 'model.n_layer': layers, 'model.n_embd': width, 'model.n_head': heads,
           'train.steps': steps, 'train.batch_size': batch, 'train.block_size': block, 'train.eval_interval': 0,
           'train.save_interval': 0, 'train.sample_interval': 0, 'train.tensorboard': False,
           'train.warmup_steps': max(1, steps // 10), 'train.log_interval': max(1, steps // 4), **over}
    t0 = time.perf_counter()
    Trainer(load_config(None, cfg), log=None, progress=False, overwrite=True).fit()
    log(f"  trained {out.name} ({layers}×{width}): {steps} steps of {batch}×{block} tokens in {time.perf_counter() - t0:.0f} s")
    return out


def flops_per_token(model) -> int:
    "Matmul FLOPs per generated token: 2 × (weights used per token: blocks + output head; embedding lookups are free)."
    c = model.config
    return 2 * (model.num_parameters(exclude_embeddings=True) + c.vocab_size * c.n_embd * bool(c.tie_embeddings))


def prompts(tok, n: int, length: int) -> list[torch.Tensor]:
    "`n` prompts of `length` tokens from the validation split of the default corpus."
    from bytropix.data.corpus import load_default_corpus
    texts = [t for t in load_default_corpus()['validation']['text'] if len(t) > 4 * length]
    step = max(1, len(texts) // n)
    return [torch.tensor([tok.encode(texts[i * step])[:length]]) for i in range(n)]


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='tiny models and sizes: a smoke test that runs in seconds')
    ap.add_argument('--target-run', default=None, help='a trained run or export to use as the target')
    ap.add_argument('--draft-run', default=None, help='a trained run or export to use as the draft')
    ap.add_argument('--out-dir', default='runs/bench-speculative', help='where to train the runs that are not given')
    ap.add_argument('--target-shape', default='8x256x8', help='layers x width x heads of the target to train')
    ap.add_argument('--draft-shape', default='1x128x4', help='layers x width x heads of the draft to train')
    ap.add_argument('--steps', type=int, default=250, help='training steps of each model')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--block', type=int, default=128)
    ap.add_argument('--k', default='2,3,4,6', help='numbers of draft tokens per round to measure')
    ap.add_argument('--prompts', type=int, default=4)
    ap.add_argument('--prompt-len', type=int, default=32)
    ap.add_argument('--new-tokens', type=int, default=96)
    ap.add_argument('--repeats', type=int, default=1)
    ap.add_argument('--threads', type=int, default=int(os.environ.get('BENCH_THREADS', 1)))
    ap.add_argument('--target', type=float, default=1.5, help='the speed-up to reach')
    a = ap.parse_args(argv)
    if a.quick:
        a.target_shape, a.draft_shape, a.steps, a.batch, a.block = '2x32x2', '1x16x2', 3, 2, 32
        a.k, a.prompts, a.prompt_len, a.new_tokens = '2,4', 1, 8, 12  # within block 32
        if a.out_dir == ap.get_default('out_dir'):
            import tempfile; a.out_dir = tempfile.mkdtemp(prefix='bench-speculative-')
    log = lambda s: print(s, flush=True)
    out = Path(a.out_dir)
    shape = lambda s: tuple(int(v) for v in s.lower().split('x'))
    over = {'data.max_train_tokens': 20000, 'data.max_val_tokens': 4000} if a.quick else {}
    tpath = Path(a.target_run) if a.target_run else train(out/'target', *shape(a.target_shape), a.steps, a.batch, a.block, log, **over)
    dpath = Path(a.draft_run) if a.draft_run else train(out/'draft', *shape(a.draft_shape), a.steps, a.batch, a.block, log, **over)
    torch.set_num_threads(a.threads)                         # training above used every core; decoding is timed on these
    target, tok, _ = load_trained(tpath, 'best', 'cpu')
    draft, dtok, _ = load_trained(dpath, 'best', 'cpu')
    if dtok != tok: print('ERROR: target and draft use different tokenizers', file=sys.stderr); return 2
    if a.prompt_len + a.new_tokens > min(target.config.block_size, draft.config.block_size):
        # past block_size each position is recomputed over its own window (exactness): speculation cannot help there
        ap.error(f"prompt-len + new-tokens = {a.prompt_len + a.new_tokens} exceeds the models' block_size "
                 f"({target.config.block_size}, {draft.config.block_size}): decode within the context the KV cache serves")
    ft, fd = flops_per_token(target), flops_per_token(draft)
    tc, dc = target.config, draft.config
    log(f"target: {tc.n_layer}×{tc.n_embd} GPT, {target.num_parameters() / 1e6:.2f}M parameters, {ft / 1e6:.1f} MFLOP/token; "
        f"draft: {dc.n_layer}×{dc.n_embd}, {draft.num_parameters() / 1e6:.2f}M parameters, {fd / 1e6:.2f} MFLOP/token "
        f"= 1/{ft / fd:.1f} of the target")
    log(f"{a.prompts} validation prompts of {a.prompt_len} tokens, {a.new_tokens} new tokens each, greedy, batch 1, "
        f"threads={a.threads}, torch {torch.__version__}")
    ps = prompts(tok, a.prompts, a.prompt_len)
    for p in ps: generate(target, p, 2, temperature=0); generate(draft, p, 2, temperature=0)   # warm-up
    t_base, base = timed(lambda: [generate(target, p, a.new_tokens, temperature=0) for p in ps], a.repeats)
    n_tok = sum(o.shape[1] - p.shape[1] for o, p in zip(base, ps))
    log(f"\n| decoding | tokens/s | speed-up | acceptance | tokens per target call | identical to target |")
    log(f"|---|---|---|---|---|---|")
    log(f"| target alone | {n_tok / t_base:.1f} | 1.00× | | 1.00 | yes |")
    best = 0.0
    for k in [int(v) for v in a.k.split(',')]:
        st = SpeculativeStats()
        t, outs = timed(lambda: [generate(target, p, a.new_tokens, temperature=0, draft=draft, num_draft_tokens=k,
                                          draft_stats=st) for p in ps], a.repeats)
        same = all(torch.equal(o, b) for o, b in zip(outs, base))
        speed = t_base / t
        best = max(best, speed if same else 0.0)
        log(f"| draft, k = {k} | {n_tok / t:.1f} | {speed:.2f}× | {st.acceptance_rate:.1%} | {st.tokens_per_round:.2f} | "
            f"{'yes' if same else 'NO'} |")
        if not same: print(f'ERROR: speculative decoding with k={k} changed the greedy output', file=sys.stderr); return 1
    log(f"\nbest speed-up {best:.2f}× (target ≥ {a.target:g}×: {'PASS' if best >= a.target else 'FAIL'}); "
        f"draft compute 1/{ft / fd:.1f} of the target's (required ≤ 1/8: {'yes' if fd * 8 <= ft else 'NO'})")
    # how far to trust the table: greedy output that loops is easy to draft; agreement on real text is the honest rate
    grams = [tuple(o[0, i:i + 4].tolist()) for o, p in zip(base, ps) for i in range(p.shape[1], o.shape[1] - 3)]
    text = prompts(tok, a.prompts, min(target.config.block_size, draft.config.block_size))
    with torch.no_grad():
        agree = torch.cat([(target(x).logits.argmax(-1) == draft(x).logits.argmax(-1)).flatten() for x in text]).float()
    log(f"distinct 4-grams in the target's greedy output: {len(set(grams)) / max(1, len(grams)):.0%} (low: it loops); "
        f"draft argmax = target argmax on validation text (teacher-forced, {agree.numel()} positions): {agree.mean():.1%}")
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Generation speed: KV-cached decoding vs recomputing the prefix at every step, at ~1k tokens of context.

Both paths run the same GPT (Llama style) on the same ~1000-token prompt and decode the same number of tokens
greedily; the script checks that they produce identical tokens, then prints tokens/s for each and the ratio
(target: cached ≥ 5× faster). Timings cover the whole `generate` call, the prompt's prefill included.

    python benchmarks/generation.py                     # defaults: 1 thread, prompt 1000, 64 new tokens
    python benchmarks/generation.py --threads 2 --device cuda
    python benchmarks/generation.py --retrieval 1000000     # the GPT with n-gram retrieval over 1M tokens (the prompt among them)
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
from bytropix.generation import generate
from bytropix.models.gpt import GPT, GPTConfig


def _time(fn, device, repeats):
    times = []
    for _ in range(repeats):
        if device.type == 'cuda': torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == 'cuda': torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--prompt-len', type=int, default=1000)
    ap.add_argument('--new-tokens', type=int, default=64)
    ap.add_argument('--n-layer', type=int, default=4)
    ap.add_argument('--n-embd', type=int, default=256)
    ap.add_argument('--n-head', type=int, default=8)
    ap.add_argument('--block-size', type=int, default=1152)
    ap.add_argument('--vocab-size', type=int, default=256)
    ap.add_argument('--threads', type=int, default=int(os.environ.get('BENCH_THREADS', 1)),
                    help='CPU threads (default 1: the benchmark machine is shared)')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--target', type=float, default=5.0)
    ap.add_argument('--retrieval', type=int, default=0, metavar='TOKENS',
                    help='wrap the model with n-gram retrieval (DEFAULT_ORDERS, λ = 0.5) over an index of this many random '
                         'tokens that starts with the prompt, so its contexts match')
    ap.add_argument('--quick', action='store_true', help='tiny sizes (seconds): checks that the script runs and prints its tables')
    a = ap.parse_args(argv)
    if a.quick:   # explicit flags still win over the quick sizes
        ap.set_defaults(**dict(prompt_len=24, new_tokens=8, n_layer=2, n_embd=32, n_head=2, block_size=64, repeats=1, target=0.0)); a = ap.parse_args(argv)
    if a.prompt_len + a.new_tokens > a.block_size:
        ap.error(f'prompt-len + new-tokens = {a.prompt_len + a.new_tokens} exceeds block-size {a.block_size}')

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=a.vocab_size, block_size=a.block_size, n_layer=a.n_layer, n_head=a.n_head,
                    n_embd=a.n_embd)
    model = GPT(cfg).to(device).eval()
    prompt = torch.randint(0, a.vocab_size, (1, a.prompt_len), device=device)
    if a.retrieval:
        from bytropix.training.retrieval import DEFAULT_ORDERS, Interpolation, NgramIndex, RetrievalLM
        text = torch.randint(0, a.vocab_size, (max(a.retrieval, a.prompt_len + 2),)).numpy()
        text[:a.prompt_len] = prompt[0].cpu().numpy()
        t0 = time.perf_counter()
        index = NgramIndex(text, a.vocab_size)
        print(f'n-gram retrieval: {index} built in {time.perf_counter() - t0:.1f} s')
        model = RetrievalLM(model, index, Interpolation(DEFAULT_ORDERS, [[0.5] * 4 for _ in DEFAULT_ORDERS]))
    print(f'GPT llama-style{" + n-gram retrieval" if a.retrieval else ""}: {model.num_parameters() / 1e6:.2f}M parameters, n_layer={a.n_layer}, n_embd={a.n_embd}, '
          f'block_size={a.block_size}; prompt {a.prompt_len} tokens, {a.new_tokens} new tokens, greedy; '
          f'device={device}, threads={a.threads}, torch {torch.__version__}')

    run = lambda use_cache: generate(model, prompt, a.new_tokens, temperature=0, use_cache=use_cache)
    run(True); generate(model, prompt, 2, temperature=0, use_cache=False)  # warm-up
    t_cache, out_cache = _time(lambda: run(True), device, a.repeats)
    t_re, out_re = _time(lambda: run(False), device, max(1, a.repeats - 1))
    if not torch.equal(out_cache, out_re):
        print('ERROR: cached and recomputed decoding produced different tokens', file=sys.stderr)
        return 1
    tps_cache, tps_re = a.new_tokens / t_cache, a.new_tokens / t_re
    ratio = tps_cache / tps_re
    print(f'KV cache  : {t_cache:7.3f} s  {tps_cache:8.1f} tokens/s')
    print(f'recompute : {t_re:7.3f} s  {tps_re:8.1f} tokens/s')
    print(f'speed-up (KV cache / recompute): {ratio:.1f}x  (target >= {a.target:g}x: {"PASS" if ratio >= a.target else "FAIL"})')
    return 0 if ratio >= a.target else 2


if __name__ == '__main__':
    sys.exit(main())

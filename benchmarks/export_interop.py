"""Interop speed: onnxruntime vs PyTorch eager on the exported graphs, bytropix vs transformers `generate`.

1. Full-sequence latency: each generative architecture's ONNX `model` graph in onnxruntime vs the model's eager
   forward pass (no_grad), on the same batch; ratio = eager time / onnxruntime time (> 1: onnxruntime is faster).
2. Decode tokens/s: `OnnxGenerator` (the exported step graph: KV cache or recurrent state) vs bytropix `generate`
   (the model's own step), greedy from the same prompt, tokens checked equal; ratio = onnxruntime / eager tokens/s.
3. bytropix `generate` vs transformers `generate` on the `--format hf` export of the same GPT (LlamaForCausalLM),
   greedy, KV cache on both sides, tokens checked equal; ratio = bytropix / transformers tokens/s (aim ≥ 1.0).

Models have random weights (speed does not depend on training); shapes are the shipped configs' (default.yaml's
GPT, bdh.yaml, wubu.yaml) and an 8-layer × 256-wide GPT. Both runtimes get the same number of threads.

    python benchmarks/export_interop.py                 # full sizes (a few minutes on 2 CPU cores)
    python benchmarks/export_interop.py --quick         # tiny sizes, GPT only (the smoke test)
    python benchmarks/export_interop.py --threads 2 --archs gpt,bdh
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
from bytropix.export.core import export_model
from bytropix.export.hf import load_hf_model, quiet_transformers
from bytropix.export.onnx import OnnxGenerator, onnx_runner
from bytropix.models.base import build_model

SHAPES = {  # (label, arch, config) per size
    'full': [('gpt 4×128 (default.yaml)', 'gpt', dict(vocab_size=256, block_size=256, n_layer=4, n_head=4, n_embd=128)),
             ('gpt 8×256', 'gpt', dict(vocab_size=256, block_size=256, n_layer=8, n_head=8, n_kv_head=2, n_embd=256)),
             ('bdh 4×64 (bdh.yaml)', 'bdh', dict(vocab_size=256, block_size=256, n_layer=4, n_embd=64, n_head=4,
                                                mlp_internal_dim_multiplier=16, dropout=0.0)),
             ('wubu 4×128 (wubu.yaml)', 'wubu', dict(vocab_size=256, block_size=256, n_layer=4, n_head=4, n_embd=128,
                                                    level_dims=[96, 64, 32]))],
    'quick': [('gpt 1×32', 'gpt', dict(vocab_size=256, block_size=64, n_layer=1, n_head=2, n_embd=32))],
}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (lazy initialisation, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times)


def onnx_rows(label, arch, model, tmp: Path, a) -> list[tuple]:
    d = tmp/f'onnx-{arch}-{abs(hash(label))}'
    export_model(model, 'onnx', d, verify=False)
    run = onnx_runner(d, threads=a.threads)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq_len), generator=g)
    with torch.no_grad():
        t_eager = median_time(lambda: model(ids), a.repeats)
        t_ort = median_time(lambda: run('model', [ids]), a.repeats)
        assert (run('model', [ids])[0] - model(ids).logits).abs().max() <= 1e-4
    rows = [(label, f'full sequence {a.batch}×{a.seq_len}, ms', t_eager * 1e3, t_ort * 1e3, t_eager / t_ort)]
    prompt = torch.randint(0, model.config.vocab_size, (1, a.prompt_len), generator=g)
    gen = OnnxGenerator(d, threads=a.threads)
    ours = model.generate(prompt, a.new_tokens, temperature=0)
    theirs = gen.generate(prompt, a.new_tokens, temperature=0)
    assert torch.equal(ours, theirs), 'onnxruntime and bytropix greedy tokens differ'
    t_eager = median_time(lambda: model.generate(prompt, a.new_tokens, temperature=0), a.repeats)
    t_ort = median_time(lambda: gen.generate(prompt, a.new_tokens, temperature=0), a.repeats)
    rows.append((label, f'decode {a.new_tokens} tokens, tokens/s', a.new_tokens / t_eager, a.new_tokens / t_ort,
                 t_eager / t_ort))
    return rows


def hf_row(label, model, tmp: Path, a) -> tuple:
    d = tmp/f'hf-{abs(hash(label))}'
    export_model(model, 'hf', d, verify=False)
    hf = load_hf_model(d)
    prompt = torch.randint(0, model.config.vocab_size, (1, a.prompt_len), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False, use_cache=True,
              eos_token_id=None, pad_token_id=0)
    with torch.no_grad(), quiet_transformers():
        theirs = lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), **kw)
        ours = lambda: model.generate(prompt, a.new_tokens, temperature=0)
        assert torch.equal(ours(), theirs()), 'transformers and bytropix greedy tokens differ'
        t_ours, t_theirs = median_time(ours, a.repeats), median_time(theirs, a.repeats)
    return (label, a.new_tokens / t_ours, a.new_tokens / t_theirs, t_theirs / t_ours)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='tiny sizes, GPT only, one repeat (seconds)')
    ap.add_argument('--archs', default='gpt,bdh,wubu', help='comma-separated architectures to time')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--seq-len', type=int, default=128)
    ap.add_argument('--prompt-len', type=int, default=16)
    ap.add_argument('--new-tokens', type=int, default=128)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--threads', type=int, default=int(os.environ.get('BENCH_THREADS', 1)),
                    help='threads for both runtimes (default 1: the benchmark machine is shared)')
    a = ap.parse_args(argv)
    if a.quick: a.batch, a.seq_len, a.prompt_len, a.new_tokens, a.repeats = 2, 16, 4, 8, 1
    torch.set_num_threads(a.threads)
    archs = set(a.archs.split(','))
    shapes = [s for s in SHAPES['quick' if a.quick else 'full'] if s[1] in archs]
    onnx, hf = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for label, arch, cfg in shapes:
            torch.manual_seed(0)
            model = build_model(arch, cfg).eval()
            t0 = time.time()
            onnx += onnx_rows(label, arch, model, Path(tmp), a)
            if arch == 'gpt': hf.append(hf_row(label, model, Path(tmp), a))
            print(f'# {label}: {model.num_parameters() / 1e6:.2f}M parameters, measured in {time.time() - t0:.0f} s',
                  file=sys.stderr)
    print(f'threads {a.threads}; torch {torch.__version__}; greedy tokens checked equal in every decode row\n')
    print('| model | measure | PyTorch eager | onnxruntime | onnxruntime speed-up |')
    print('|---|---|---:|---:|---:|')
    for label, what, e, o, r in onnx: print(f'| {label} | {what} | {e:.1f} | {o:.1f} | {r:.2f}× |')
    if hf:
        print('\n| model | bytropix generate, tokens/s | transformers generate, tokens/s | bytropix / transformers |')
        print('|---|---:|---:|---:|')
        for label, o, t, r in hf: print(f'| {label} | {o:.0f} | {t:.0f} | {r:.2f}× |')
    return 0


if __name__ == '__main__':
    sys.exit(main())

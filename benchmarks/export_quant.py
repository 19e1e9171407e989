"""Quantization evidence: bits per byte, export size and decode speed of every quantization method against float32.

For each model — the default run (the main job's GPT, 4 layers × 128) and an 8-layer × 256-wide GPT, both trained on
the default corpus — the script quantizes with every method of `bytropix.quantization` (and casts to bf16 / fp16),
then measures in the same run:

- validation bits per byte vs float32 (targets: int8 ≤ +0.5 %, int4 ≤ +3 %; NVFP4 / MXFP4 / NF4 reported);
- the bytes of the quantized weight matrices (targets: int8 ≤ 0.3×, int4 ≤ 0.2× of float32) and of the export file;
- greedy decode tokens/s with the KV cache at batch 1 and 16, as a ratio to float32;
- where a method decodes slower than float32, a short operator profile of one decode step explains where the time goes.

    python benchmarks/export_quant.py --quick             # tiny models, a few training steps: seconds (the smoke test)
    python benchmarks/export_quant.py                     # runs/default if present (else trains it, ~6 min) + 8×256 model
    python benchmarks/export_quant.py --run runs/default --big-steps 0     # only the default run
"""
import argparse
import contextlib
import copy
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
from bytropix.config import load_config, prepare_task
from bytropix.quantization import METHODS, cast_for_inference, import_torchao, quantize_model, save_quantized
from bytropix.training.evaluation import evaluate
from bytropix.training.run import RunDir
from bytropix.training.trainer import Trainer

TARGETS = {'int8': (0.5, 0.3), 'int8-dyn': (0.5, 0.3), 'int4': (3.0, 0.2)}   # method: (max bpb increase %, max size ratio)


def train_run(out: Path, steps: int, overrides: dict, log) -> Path:
    "Train a default-corpus GPT run into `out` (resuming nothing: a fresh run)."
    cfg = {'out_dir': str(out), 'train.steps': steps, 'train.eval_interval': 0, 'train.save_interval': 0,
           'train.sample_interval': 0, 'train.tensorboard': False, 'train.log_interval': max(1, steps // 4), **overrides}
    t0 = time.perf_counter()
    Trainer(load_config(None, cfg), log=None, progress=False, overwrite=True).fit()
    log(f"  trained {out.name}: {steps} steps in {time.perf_counter() - t0:.0f} s")
    return out


def decode_tps(model, batch: int, prompt_len: int, new_tokens: int, vocab: int, repeats: int) -> float:
    "Greedy decode tokens/s (KV cache, prefill included) at `batch` sequences: the median of `repeats`."
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=g)
    with torch.no_grad():
        model.generate(ids, 2, temperature=0)   # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter(); model.generate(ids, new_tokens, temperature=0); times.append(time.perf_counter() - t0)
    return batch * new_tokens / statistics.median(times)


def profile_step(model, vocab: int, rows: int = 8) -> str:
    "The top operators (self CPU time) of 8 decode steps at batch 1."
    from torch.profiler import ProfilerActivity, profile
    ids = torch.randint(0, vocab, (1, 16))
    with torch.no_grad():
        model.generate(ids, 2, temperature=0)
        with profile(activities=[ProfilerActivity.CPU]) as prof: model.generate(ids, 8, temperature=0)
    return prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows, max_name_column_width=48)


def file_bytes(model, method, tmp: Path) -> int:
    d = tmp / f"export-{method}"
    if method == 'fp32': model.save_pretrained(d)
    else: save_quantized(model, d)
    return (d / 'model.safetensors').stat().st_size


def bench_model(name: str, run_dir: Path, a, tmp: Path, log) -> list[dict]:
    run, base, _ = RunDir(run_dir).load_model('latest', device='cpu')
    tok = RunDir(run_dir).load_tokenizer()
    data = prepare_task(run, tok)
    vocab = base.config.vocab_size
    bpb = lambda m: evaluate(m, data.val_batches, data.bytes_per_token, max_batches=a.eval_batches)['bpb']
    log(f"\n== {name}: {run.arch} {base.config.n_layer}×{base.config.n_embd}, {base.num_parameters() / 1e6:.2f}M parameters "
        f"({run_dir}); {a.eval_batches} validation batches of {run.train.batch_size}×{run.train.block_size} tokens; decode: "
        f"prompt {a.prompt_len}, {a.new_tokens} new tokens, median of {a.repeats}")
    rows = []
    fp32 = {'method': 'fp32', 'bpb': bpb(base), 'linear': None, 'file': file_bytes(base, 'fp32', tmp),
            'tps1': decode_tps(base, 1, a.prompt_len, a.new_tokens, vocab, a.repeats),
            'tps16': decode_tps(base, 16, a.prompt_len, a.new_tokens, vocab, a.repeats)}
    rows.append(fp32)
    for dt in ('bf16', 'fp16'):
        m = cast_for_inference(copy.deepcopy(base), dt)
        rows.append({'method': dt, 'bpb': bpb(m), 'linear': 0.5, 'file': None,
                     'tps1': decode_tps(m, 1, a.prompt_len, a.new_tokens, vocab, a.repeats),
                     'tps16': decode_tps(m, 16, a.prompt_len, a.new_tokens, vocab, a.repeats)})
    slow = {}
    for method in a.methods:
        m = copy.deepcopy(base)
        rep = quantize_model(m, method)
        r = {'method': method, 'bpb': bpb(m), 'linear': rep.ratio, 'file': file_bytes(m, method, tmp),
             'tps1': decode_tps(m, 1, a.prompt_len, a.new_tokens, vocab, a.repeats),
             'tps16': decode_tps(m, 16, a.prompt_len, a.new_tokens, vocab, a.repeats)}
        rows.append(r)
        if r['tps1'] < fp32['tps1'] and method in ('int8', 'int4') and a.profile: slow[method] = m
    log(f"{'method':<11}{'bpb':>8}{'Δ bpb':>9}{'matrices':>10}{'file':>8}{'tok/s b1':>10}{'× fp32':>8}{'tok/s b16':>11}{'× fp32':>8}  target")
    ok = True
    for r in rows:
        d = (r['bpb'] - fp32['bpb']) / fp32['bpb'] * 100
        lin = '' if r['linear'] is None else f"{r['linear']:.3f}×"
        fil = '' if r['file'] is None else f"{r['file'] / fp32['file']:.3f}×"
        verdict = ''
        if r['method'] in TARGETS:
            tb, ts = TARGETS[r['method']]
            good = d <= tb and r['linear'] <= ts
            ok &= good
            verdict = f"Δ ≤ +{tb}%, ≤ {ts}×: {'PASS' if good else 'FAIL'}"
        log(f"{r['method']:<11}{r['bpb']:>8.4f}{d:>+8.2f}%{lin:>10}{fil:>8}{r['tps1']:>10.1f}{r['tps1'] / fp32['tps1']:>7.2f}×"
            f"{r['tps16']:>11.1f}{r['tps16'] / fp32['tps16']:>7.2f}×  {verdict}")
    for method, m in slow.items():
        log(f"\n-- why {method} decodes slower than float32 at batch 1: top operators of 8 decode steps, {method} then float32")
        log(profile_step(m, vocab)); log(profile_step(base, vocab))
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='tiny models and a few steps (seconds): checks the script runs')
    ap.add_argument('--run', default=None, help='an existing default run (default: runs/default if present, else train one)')
    ap.add_argument('--steps', type=int, default=1500, help='training steps of the default run when it is trained here')
    ap.add_argument('--big-steps', type=int, default=1500, help='training steps of the 8×256 model (0: skip it)')
    ap.add_argument('--eval-batches', type=int, default=40)
    ap.add_argument('--prompt-len', type=int, default=32)
    ap.add_argument('--new-tokens', type=int, default=64)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    ap.add_argument('--no-profile', dest='profile', action='store_false')
    ap.add_argument('--threads', type=int, default=int(os.environ.get('BENCH_THREADS', 1)),
                    help='CPU threads (default 1: the benchmark machine is shared)')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.getLogger('torch.utils._pytree').setLevel(logging.ERROR)
    import_torchao()
    log = lambda s: print(s, flush=True)
    log(f"export_quant: torch {torch.__version__}, threads={a.threads}, {'quick' if a.quick else 'full'} mode")
    tmp = Path(tempfile.mkdtemp(prefix='bytropix-export-quant-'))
    models = []
    if a.quick:
        a.eval_batches, a.new_tokens, a.repeats, a.prompt_len = 4, 8, 1, 8
        a.profile = False
        small = {'model.n_layer': 2, 'model.n_embd': 64, 'train.batch_size': 8, 'train.block_size': 64,
                 'train.warmup_steps': 5, 'data.max_train_tokens': 200_000}
        models.append(('default-shaped (quick)', train_run(tmp / 'default', 30, small, log)))
    else:
        default = Path(a.run) if a.run else Path('runs/default')
        if not (default / 'config.yaml').is_file():
            log(f"{default} has no run: training the default config for {a.steps} steps")
            default = train_run(tmp / 'default', a.steps, {}, log)
        models.append(('default run', default))
        if a.big_steps:
            models.append(('8×256', train_run(tmp / 'big', a.big_steps, {'model.n_layer': 8, 'model.n_embd': 256, 'model.n_head': 8}, log)))
    ok = True
    for name, d in models: ok &= bench_model(name, d, a, tmp, log)
    log(f"\ntargets (int8 ≤ +0.5 % bpb and ≤ 0.3× size, int4 ≤ +3 % and ≤ 0.2×): {'all met' if ok else 'NOT all met'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())

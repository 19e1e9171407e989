"""BDH: per-token generation cost (recurrent state vs recomputing the prefix) and peak memory (chunked vs naive attention).

1. Generation cost at several context lengths T. *Recurrent*: the prompt is consumed once into the state, then each new
   token is one `BDH.step` — constant cost. *Recompute*: every new token runs the parallel form over the whole
   sequence, as the reference `generate` does — cost growing like T² (the T×T score matrix). Both produce the same
   next-token logits (checked). For long contexts only a few recomputed tokens are timed.
2. Peak memory of a forward pass at a long T, the reference's T×T attention vs the chunked form (`attn_chunk_size`),
   for inference (no grad) and for a training step (forward + backward). On CPU each measurement runs in a fresh
   process and reports the rise of its peak resident memory (VmHWM, reset before the pass); on CUDA,
   `torch.cuda.max_memory_allocated`. Both forms give the same logits (checked).

    python benchmarks/bdh.py                          # defaults: 1 thread, contexts 32, 1024, 8192
    python benchmarks/bdh.py --contexts 32 1024 --mem-len 4096 --device cuda
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
from bytropix.models.bdh import BDH, BDHConfig


def _config(a, **over):
    return BDHConfig(n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_head, mlp_internal_dim_multiplier=a.mult,
                     dropout=0.0, block_size=max(a.contexts + [a.mem_len]), **over)


def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


@torch.no_grad()
def generation_cost(model, T, n_rec, n_recompute, device, seed=0):
    "Median seconds per new token at context T: (recurrent, recompute, max |logit difference|)."
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (1, T), generator=g).to(device)
    new = torch.randint(0, V, (1, max(n_rec, n_recompute)), generator=g).to(device)
    state = model.init_state(1, device)
    _, state = model.step(ids, state)                              # prefill: consume the context once
    model.step(ids[:, -1:], model.init_state(1, device)); model(ids[:, :8])   # warm up both paths' small kernels
    rec_times, rec_logits = [], []
    for i in range(n_rec):
        _sync(device); t0 = time.perf_counter()
        lg, state = model.step(new[:, i:i + 1], state)
        _sync(device); rec_times.append(time.perf_counter() - t0); rec_logits.append(lg[:, -1])
    par_times, diff = [], 0.0
    for i in range(n_recompute):
        seq = torch.cat([ids, new[:, :i + 1]], 1)
        _sync(device); t0 = time.perf_counter()
        lg = model(seq).logits[:, -1]                               # the reference generator's step
        _sync(device); par_times.append(time.perf_counter() - t0)
        if i < n_rec:
            diff = max(diff, ((lg - rec_logits[i]).abs().max() / lg.abs().max().clamp_min(1e-9)).item())
    return statistics.median(rec_times), statistics.median(par_times), diff


def _rss_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'): return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _worker(a):
    "Run one pass in this (fresh) process and print its peak memory rise in bytes as JSON."
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = BDH(_config(a, attn_chunk_size=a.chunk if a.mode == 'chunked' else None)).to(device)
    ids = torch.randint(0, model.config.vocab_size, (1, a.mem_len), device=device)
    model.train(a.train)
    if device.type == 'cuda':
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    else:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')     # reset the peak-RSS mark (VmHWM)
        base = _rss_kib('VmRSS') * 1024
    if a.train:
        out = model(ids, ids)
        out.loss.backward()
        check = out.loss.item()
    else:
        with torch.no_grad(): check = model(ids).logits[0, -1].sum().item()
    if device.type == 'cuda':
        torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_kib('VmHWM') * 1024 - base
    print(json.dumps({'peak': peak, 'check': check}))


def peak_memory(a, mode, train):
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', '--mode', mode, '--threads', str(a.threads),
           '--device', a.device, '--mem-len', str(a.mem_len), '--chunk', str(a.chunk), '--n-layer', str(a.n_layer),
           '--n-embd', str(a.n_embd), '--n-head', str(a.n_head), '--mult', str(a.mult),
           '--contexts', *map(str, a.contexts)] + (['--train'] if train else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0: raise RuntimeError(f"memory worker failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--contexts', type=int, nargs='+', default=[32, 1024, 8192])
    ap.add_argument('--rec-tokens', type=int, default=32, help='recurrent tokens timed per context')
    ap.add_argument('--recompute-tokens', type=int, nargs='+', default=[8, 4, 2],
                    help='recomputed tokens timed per context (the last value repeats for longer lists)')
    ap.add_argument('--mem-len', type=int, default=8192, help='sequence length of the memory comparison')
    ap.add_argument('--train-mem-len', type=int, default=4096, help='sequence length of the training-step memory comparison')
    ap.add_argument('--chunk', type=int, default=256)
    ap.add_argument('--n-layer', type=int, default=2)
    ap.add_argument('--n-embd', type=int, default=64)
    ap.add_argument('--n-head', type=int, default=2)
    ap.add_argument('--mult', type=int, default=8, help='mlp_internal_dim_multiplier (N = mult·n_embd/n_head)')
    ap.add_argument('--threads', type=int, default=1,
                    help='torch threads (1: stable timings on a shared machine, where OpenMP barriers inflate small ops)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--mode', choices=['naive', 'chunked'], help=argparse.SUPPRESS)
    ap.add_argument('--train', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--quick', action='store_true', help='tiny sizes (seconds): checks that the script runs and prints its tables')
    a = ap.parse_args(argv)
    if a.quick:   # explicit flags still win over the quick sizes
        ap.set_defaults(**dict(contexts=[16, 64], rec_tokens=4, recompute_tokens=[2], mem_len=128, train_mem_len=64, chunk=32, n_embd=32, mult=4)); a = ap.parse_args(argv)
    if a.worker: return _worker(a)

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = BDH(_config(a)).to(device).eval()
    c = model.config
    print(f"BDH n_layer={c.n_layer} n_embd={c.n_embd} n_head={c.n_head} N={c.n_neurons} per head "
          f"({c.n_head * c.n_neurons} neurons), {model.num_parameters() / 1e6:.2f}M parameters; device {device}, "
          f"{a.threads} thread(s); recurrent state {model.init_state(1).nbytes / 2**20:.2f} MiB per sequence\n")

    print("Per-token generation cost (median; recompute = parallel form over the whole prefix, as the reference generate):\n")
    print("| context | recurrent (ms/token) | recompute (ms/token) | recompute / recurrent | max rel. logit diff |")
    print("|---:|---:|---:|---:|---:|")
    rows = []
    for i, T in enumerate(a.contexts):
        n_par = a.recompute_tokens[min(i, len(a.recompute_tokens) - 1)]
        rec, par, diff = generation_cost(model, T, a.rec_tokens, n_par, device)
        rows.append((T, rec, par))
        print(f"| {T} | {1e3 * rec:.2f} | {1e3 * par:.1f} | {par / rec:.0f}× | {diff:.1e} |", flush=True)
        assert diff < 1e-3, f"recurrent and parallel logits disagree at T={T}: {diff}"
    print(f"\nRecurrent cost at {rows[-1][0]} vs {rows[0][0]} tokens of context: {rows[-1][1] / rows[0][1]:.2f}× "
          f"(recompute: {rows[-1][2] / rows[0][2]:.0f}×).\n")

    print(f"Peak memory of one pass, T×T attention vs chunks of {a.chunk} queries "
          f"({'fresh process, peak RSS rise' if device.type == 'cpu' else 'max_memory_allocated'}):\n")
    print("| pass | T | naive (MiB) | chunked (MiB) | naive / chunked | T×T scores alone (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for train, T in [(False, a.mem_len), (True, a.train_mem_len)]:
        a_T = argparse.Namespace(**{**vars(a), 'mem_len': T})
        nv, ch = peak_memory(a_T, 'naive', train), peak_memory(a_T, 'chunked', train)
        assert abs(nv['check'] - ch['check']) <= 1e-3 * max(1.0, abs(nv['check'])), (nv, ch)
        scores = c.n_head * T * T * 4 / 2**20
        print(f"| {'train step (fwd+bwd)' if train else 'inference forward'} | {T} | {nv['peak'] / 2**20:.0f} | "
              f"{ch['peak'] / 2**20:.0f} | {nv['peak'] / max(ch['peak'], 1):.1f}× | {scores:.0f} |", flush=True)


if __name__ == '__main__':
    main()

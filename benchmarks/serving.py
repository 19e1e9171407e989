"""Serving throughput: continuous batching vs one request at a time, through the real HTTP server.

`bytropix serve` runs in a subprocess on 127.0.0.1 with the default-size model (the Llama-style GPT of
configs/default.yaml: 4 layers × 128 wide, byte-level; random weights unless --model points at a trained run or
export, e.g. `bytropix train --train.block_size 256 --train.batch_size 8`; block_size 256 so that prompt + 128 new
tokens fit the cache). 16 concurrent streaming clients, each
with a different prompt length (8, 12, ... 68 bytes), ask for 128 greedy tokens with `logprobs: 0` (one SSE chunk
per token). The same is done against the same server at `--max-batch 1`. Printed: total tokens/s and the ratio
(target ≥ 4×), time to first token p50/p99 and inter-token latency p50/p99 for both, and the server's resident memory
while 500 more requests run through it (it must stay flat).

    python benchmarks/serving.py                 # the full measurement (a few minutes on 2 cores)
    python benchmarks/serving.py --quick         # tiny sizes, the server in this process, seconds (the smoke test)
    python benchmarks/serving.py --model runs/default
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
from bytropix.data.tokenizers import byte_tokenizer  # noqa: E402
from bytropix.models.base import build_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


class InProcess:
    "The server in a thread of this process (--quick: no second interpreter to start)."
    def __init__(self, model_dir: str, max_batch: int):
        from bytropix.serving.server import BackgroundServer, ServerSettings, create_app, load_served
        app = create_app([load_served('bench', model_dir, max_batch=max_batch, max_queue=1000)], ServerSettings())
        self.server = BackgroundServer(app).__enter__()
        self.pid = os.getpid()
    def terminate(self): self.server.__exit__(None, None, None)
    def wait(self, timeout=None): pass


def start_server(model_dir: str, max_batch: int, threads: int, in_process: bool = False):
    if in_process:
        p = InProcess(model_dir, max_batch)
        return p, p.server.url
    port = free_port()
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': str(threads), 'TOKENIZERS_PARALLELISM': 'false'}
    cmd = [sys.executable, '-c', 'import sys; from bytropix.cli import main; sys.exit(main())', 'serve', f'bench={model_dir}',
           '--port', str(port), '--max-batch', str(max_batch), '--max-queue', '1000', '--log-level', 'warning']
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f'http://127.0.0.1:{port}'
    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(url + '/health', timeout=1).status_code == 200: return proc, url
        except httpx.HTTPError: pass
        if proc.poll() is not None or time.monotonic() - t0 > 120:
            proc.kill(); raise RuntimeError('the server did not start:\n' + (proc.stdout.read() if proc.stdout else ''))
        time.sleep(0.1)


HTTP = None  # one client for all threads: creating an httpx.Client (its SSL context) takes ~0.1-0.5 s


def http() -> httpx.Client:
    global HTTP
    if HTTP is None: HTTP = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
    return HTTP


def one_client(url: str, prompt: str, new_tokens: int) -> dict:
    "Stream one completion; the arrival time of every token chunk."
    body = {'model': 'bench', 'prompt': prompt, 'max_tokens': new_tokens, 'temperature': 0, 'stream': True, 'logprobs': 0}
    t0, times = time.perf_counter(), []
    with http().stream('POST', url + '/v1/completions', json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith('data: {') and '"token_logprobs": [' in line: times.append(time.perf_counter())
    return {'ttft': times[0] - t0, 'gaps': [b - a for a, b in zip(times, times[1:])], 'tokens': len(times), 'end': times[-1]}


def round_of_clients(url: str, clients: int, new_tokens: int) -> dict:
    prompts = ['x' * (8 + 4 * i) for i in range(clients)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool: res = list(pool.map(lambda p: one_client(url, p, new_tokens), prompts))
    wall = max(r['end'] for r in res) - t0
    ttft = sorted(r['ttft'] for r in res); gaps = sorted(g for r in res for g in r['gaps'])
    q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float('nan')
    return {'tokens_per_s': sum(r['tokens'] for r in res) / wall, 'tokens': sum(r['tokens'] for r in res), 'wall': wall,
            'ttft_p50': q(ttft, .5), 'ttft_p99': q(ttft, .99), 'itl_p50': q(gaps, .5), 'itl_p99': q(gaps, .99)}


def rss_mib(pid: int) -> float:
    import psutil
    return psutil.Process(pid).memory_info().rss / 2**20


def memory_run(url: str, pid: int, total: int, clients: int, every: int) -> list[tuple[int, float]]:
    "Send `total` short requests, `clients` at a time; the server's RSS after every `every` requests."
    out, done = [(0, rss_mib(pid))], 0
    with ThreadPoolExecutor(clients) as pool:
        while done < total:
            n = min(every, total - done)
            list(pool.map(lambda i: http().post(url + '/v1/completions', json={
                'model': 'bench', 'prompt': 'y' * (5 + i % 40), 'max_tokens': 16, 'temperature': 0.8,
                'stream': i % 2 == 0}).status_code, range(n)))
            done += n; out.append((done, rss_mib(pid)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help="tiny model, 4 clients, 8 tokens (seconds)")
    ap.add_argument('--model', default=None, help="a trained run or export (default: a random default-size GPT)")
    ap.add_argument('--clients', type=int, default=16)
    ap.add_argument('--new-tokens', type=int, default=128)
    ap.add_argument('--threads', type=int, default=1, help="torch threads of the server")
    ap.add_argument('--memory-requests', type=int, default=500)
    a = ap.parse_args(argv)
    if a.quick: a.clients, a.new_tokens, a.memory_requests = 4, 8, 40
    tmp = tempfile.TemporaryDirectory()
    model_dir, what = a.model, a.model
    if a.model is not None:
        from bytropix.training.run import load_trained
        m, _, _ = load_trained(a.model, 'best', 'cpu'); c = m.config
        what = (f"{a.model}: trained {m.arch} {c.n_layer}×{c.n_embd}, block {c.block_size}, "
                f"{m.num_parameters() / 1e6:.2f}M parameters")
        if max(8 + 4 * (a.clients - 1), 1) + a.new_tokens > c.block_size:
            ap.error(f"the longest prompt + {a.new_tokens} new tokens exceed the model's block_size {c.block_size}")
        del m
    if model_dir is None:
        torch.manual_seed(0)
        size = dict(n_layer=1, n_embd=32, n_head=2) if a.quick else dict(n_layer=4, n_embd=128, n_head=4)
        m = build_model('gpt', vocab_size=256, block_size=256, **size)
        model_dir = str(Path(tmp.name)/'model'); m.save_pretrained(model_dir, tokenizer=byte_tokenizer())
        what = f"random-init GPT {size['n_layer']}×{size['n_embd']}{'' if a.quick else ' (default size)'}, block 256, {m.num_parameters() / 1e6:.2f}M parameters"
    print(f"# serving benchmark: {what}; {a.clients} streaming clients × {a.new_tokens} greedy tokens; server threads {a.threads}")
    rows, mem = {}, None
    for mb in (a.clients, 1):
        proc, url = start_server(model_dir, mb, a.threads, in_process=a.quick)
        try:
            round_of_clients(url, 2, 4)                          # warm up
            rows[mb] = round_of_clients(url, a.clients, a.new_tokens)
            if mb > 1: mem = memory_run(url, proc.pid, a.memory_requests, a.clients, max(1, a.memory_requests // 5))
        finally:
            proc.terminate(); proc.wait(timeout=30)
    print('\n| server | tokens/s | TTFT p50 (s) | TTFT p99 (s) | inter-token p50 (ms) | inter-token p99 (ms) |')
    print('|---|---|---|---|---|---|')
    for mb, r in rows.items():
        name = f"continuous batching (--max-batch {mb})" if mb > 1 else "one at a time (--max-batch 1)"
        print(f"| {name} | {r['tokens_per_s']:.1f} | {r['ttft_p50']:.3f} | {r['ttft_p99']:.3f} | "
              f"{r['itl_p50'] * 1e3:.1f} | {r['itl_p99'] * 1e3:.1f} |")
    ratio = rows[a.clients]['tokens_per_s'] / rows[1]['tokens_per_s']
    print(f"\nthroughput ratio, continuous batching / one at a time: {ratio:.2f}× (target ≥ 4×)")
    print('\n| requests served | server RSS (MiB) |\n|---|---|')
    for n, r in mem: print(f"| {n} | {r:.1f} |")
    print(f"\nRSS growth from the first to the last checkpoint after warm-up: {mem[-1][1] - mem[1][1]:+.1f} MiB")


if __name__ == '__main__':
    main()

"""WuBu Nesting token LM vs the GPT baseline at about equal parameter count and equal steps, plus a bf16 stability run.

Part 1 — comparison. Both models train on the embedded default corpus (byte tokenizer, `bytropix.data`), with the
same batches, optimizer (`bytropix.training.optim.build_optimizer`: AdamW, Riemannian Adam for manifold parameters),
schedule, clipping and number of steps; each in a fresh subprocess so its peak memory is its own. Reported: validation
bits per byte (fixed validation batches), training tokens/s, peak memory (on CPU the peak resident set size of the
training process, its peak mark reset through /proc/self/clear_refs once the data is loaded — both runs share that
baseline, printed too; on CUDA the max allocated), parameter counts, a markdown table and a learning-curve PNG (with the WuBu curvatures over
training in a second panel), and the trained WuBu model's levels drawn on Poincaré disks (`wubu_levels.png`).

Part 2 — stability. A deep WuBu stack (default 8 layers × 4 levels, hyperbolic attention) trains under bf16 autocast;
the script counts non-finite losses/gradients (the run must have none) and plots the gradient norm of every level
(summed over layers) per step.

    python benchmarks/wubu_vs_gpt.py                               # 300 steps each, CPU, ~10 minutes on 1 thread
    python benchmarks/wubu_vs_gpt.py --steps 100 --stability-steps 50 --out-dir /tmp/wubu
    python benchmarks/wubu_vs_gpt.py --speed                       # the training-step table: before/after the rewrites
    python benchmarks/wubu_vs_gpt.py --speed --device cuda --batch-size 64 --block-size 256   # the same on a GPU
    python benchmarks/wubu_vs_gpt.py --speed --profile             # + operator calls, kernels, syncs of one step

Part 3 (`--speed`) — the WuBu training step before and after the speed rewrites (chapter *WuBu block*): GPT, WuBu with
its levels computed literally and rotations by `torch.linalg.matrix_exp` (a reference implementation kept here), then
each rewrite added; all in one process, interleaved, medians (CPU time of the training thread; on CUDA wall time
between synchronisations).
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)


def _rss_mb() -> float:
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def _reset_peak_rss() -> bool:
    "Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0); False where that is impossible."
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        return True
    except OSError: return False


def _peak_rss_mb() -> float:
    "VmHWM (peak RSS since the last reset) in MiB; the lifetime peak from getrusage where /proc is missing."
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024
    except OSError: pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def level_grad_norms(model) -> list[float]:
    "Gradient norm of each WuBu level's parameters (geometry + weights), over all layers."
    import torch
    L = model.blocks[0].wubu.n_levels
    sq = [0.0] * L
    for b in model.blocks:
        w = b.wubu
        for i in range(L):
            mods = [w.geo[i]] + ([w.weights(i)] if w.shared is None else [])
            for m in mods:
                for p in m.parameters():
                    if p.grad is not None: sq[i] += float(p.grad.float().pow(2).sum())
    return [math.sqrt(s) for s in sq]


def run(spec: dict) -> dict:
    "Train one model as `spec` says (in a subprocess); return its curves and measurements."
    import torch
    torch.set_num_threads(spec['threads'])
    import bytropix.models.gpt, bytropix.models.wubu  # noqa: F401  (register the architectures)
    from bytropix.config import TrainConfig
    from bytropix.core import seed_everything
    from bytropix.data.datasets import DataConfig, prepare_data
    from bytropix.data.tokenizers import byte_tokenizer
    from bytropix.models.base import build_model
    from bytropix.training.evaluation import autocast_context, evaluate
    from bytropix.training.optim import LRScheduler, build_optimizer, clip_gradients

    device = torch.device(spec['device'])
    seed_everything(spec['seed'])
    data = prepare_data(DataConfig(), byte_tokenizer(), spec['block_size'], spec['batch_size'], spec['seed'])
    tc = TrainConfig(steps=spec['steps'], lr=spec['lr'], min_lr=spec['lr'] / 10, warmup_steps=spec['warmup'],
                     weight_decay=0.1, clip_grad=1.0, precision=spec['precision'], batch_size=spec['batch_size'],
                     block_size=spec['block_size'])
    out_reset = _reset_peak_rss()
    base_rss = _rss_mb()   # after the data is loaded (the same in both runs)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    model = build_model(spec['arch'], {**spec['model'], 'vocab_size': 256, 'block_size': spec['block_size']}).to(device)
    opt = build_optimizer(model, tc, device)
    sched = LRScheduler(opt, tc)
    params = [p for p in model.parameters() if p.requires_grad]
    out = {'name': spec['name'], 'arch': spec['arch'], 'params': model.num_parameters(), 'train': [], 'val': [],
           'nonfinite': 0, 'level_grad_norms': [], 'geometry': [], 'peak_reset': out_reset}
    train_time, ntok = 0.0, 0
    val = lambda: evaluate(model, data.val_batches(spec['val_batches']), data.bytes_per_token, precision=spec['precision'])
    for step in range(spec['steps']):
        if step % spec['eval_interval'] == 0:
            out['val'].append({'step': step, **{k: v for k, v in val().items() if k in ('loss', 'bpb')}})
        x, y = next(data.train)
        x, y = x.to(device), y.to(device)
        t0 = time.perf_counter()
        with autocast_context(device, spec['precision']): o = model(x, y)
        opt.zero_grad(set_to_none=True)
        o.loss.backward()
        clip = clip_gradients(params, tc.clip_grad)
        finite = bool(torch.isfinite(o.loss.detach())) and bool(torch.isfinite(clip['grad_norm']))
        if spec.get('level_norms'): out['level_grad_norms'].append(level_grad_norms(model))
        if finite: opt.step()
        else: out['nonfinite'] += 1
        sched.step()
        if device.type == 'cuda': torch.cuda.synchronize(device)
        train_time += time.perf_counter() - t0; ntok += x.numel()
        out['train'].append({'step': step, 'loss': o.loss.item(), 'grad_norm': clip['grad_norm'].item()})
        if spec['arch'] == 'wubu' and step % 10 == 0:
            out['geometry'].append({'step': step, **{k: float(v) for k, v in o.aux.items()
                                                     if k.count('/') == 2 and k.startswith('wubu/')}})
    out['val'].append({'step': spec['steps'], **{k: v for k, v in val().items() if k in ('loss', 'bpb')}})
    if spec.get('levels_png'):   # the trained model's levels on a validation text
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        from bytropix.viz import plot_wubu_levels
        xv, _ = next(iter(data.val_batches(1)))
        fig = plot_wubu_levels(model, xv[:1, :40].to(device), layer=0, tokenizer=byte_tokenizer(), annotate=40)
        fig.savefig(spec['levels_png'], dpi=110, bbox_inches='tight'); plt.close(fig)
    out['tokens_per_s'] = ntok / train_time
    out['base_mem_mb'] = 0.0 if device.type == 'cuda' else base_rss
    out['peak_mem_mb'] = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == 'cuda' else _peak_rss_mb())
    return out


def in_subprocess(spec: dict) -> dict:
    with mp.get_context('spawn').Pool(1) as pool: return pool.apply(run, (spec,))


def plot(results: list[dict], stab: dict | None, out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    for r in results:
        steps = [t['step'] for t in r['train']]
        bpb = [t['loss'] / math.log(2) for t in r['train']]  # byte tokenizer: 1 byte per token
        k = 10
        smooth = [sum(bpb[max(0, i - k + 1):i + 1]) / len(bpb[max(0, i - k + 1):i + 1]) for i in range(len(bpb))]
        line, = ax.plot(steps, smooth, lw=1, alpha=0.7, label=f"{r['name']} train")
        ax.plot([v['step'] for v in r['val']], [v['bpb'] for v in r['val']], 'o-', color=line.get_color(), ms=3,
                label=f"{r['name']} validation")
    ax.set_xlabel('step'); ax.set_ylabel('bits per byte'); ax.set_title('Learning curves (equal steps, ≈ equal parameters)')
    ax.legend(); ax.grid(alpha=0.3)
    ax = axes[1]
    wub = next((r for r in results if r['arch'] == 'wubu'), None)
    if wub and wub['geometry']:
        keys = sorted(k for k in wub['geometry'][0] if k.startswith('wubu/curvature/level'))
        for k in keys:
            ax.plot([g['step'] for g in wub['geometry']], [g[k] for g in wub['geometry']], label=k.replace('wubu/', ''))
        ax.set_xlabel('step'); ax.set_ylabel('c (mean over layers)'); ax.set_title('WuBu curvature adaptation')
        ax.legend(); ax.grid(alpha=0.3)
    p = os.path.join(out_dir, 'wubu_vs_gpt.png'); fig.savefig(p, dpi=110, bbox_inches='tight'); plt.close(fig); paths.append(p)
    if stab:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        g = stab['level_grad_norms']
        for i in range(len(g[0])):
            axes[0].semilogy(range(len(g)), [row[i] for row in g], lw=1, label=f'level {i}')
        axes[0].set_xlabel('step'); axes[0].set_ylabel('gradient norm (all layers)')
        axes[0].set_title(f"Deep WuBu in bf16: per-level gradient norms ({stab['nonfinite']} non-finite steps)")
        axes[0].legend(); axes[0].grid(alpha=0.3)
        axes[1].plot([t['step'] for t in stab['train']], [t['loss'] / math.log(2) for t in stab['train']], lw=1)
        axes[1].set_xlabel('step'); axes[1].set_ylabel('training bits per byte'); axes[1].set_title('bf16 training loss')
        axes[1].grid(alpha=0.3)
        p = os.path.join(out_dir, 'wubu_stability.png'); fig.savefig(p, dpi=110, bbox_inches='tight'); plt.close(fig)
        paths.append(p)
    return paths


# ---------------------------------------------------------------- --speed: the training step, before and after the rewrites
def literal_wubu_forward(blk, x, trace=None):
    """A WuBu block computed as its chapter's steps 1-4 are written (the code before the speed rewrites): exp/log round
    trips, rotation + transfer + a context map over relative-vector features, landmark distances by broadcasting."""
    import torch
    from bytropix.core import upcast
    from bytropix.geometry import dist, expmap0, logmap0, mobius_add
    u, ctx, outs = blk.in_proj(x), None, []
    for i in range(blk.n_levels):
        geo, W = blk.geo[i], blk.weights(i)
        c, s, sigma = geo.c, geo.s, geo.sigma
        if ctx is not None:
            rel, memb, desc, sig_prev = ctx
            u = u + W.ctx(torch.cat([rel.flatten(-2), memb.to(rel.dtype), desc.expand(*rel.shape[:-2], -1),
                                     sig_prev.to(rel.dtype).expand(*rel.shape[:-2], 1)], dim=-1))
        xb = expmap0(s * u, c)
        y = mobius_add(xb, W.intra.g(xb, c), c)
        t = logmap0(y, c) / s
        b = geo.boundary_points()
        memb = torch.exp(-upcast(dist(y.unsqueeze(-2), b.to(y.dtype), c)).square() / (2 * sigma * sigma))
        outs.append(torch.cat([t, memb.to(t.dtype)], dim=-1))
        if i + 1 < blk.n_levels:
            rt, rtb, rld = W.rotation(t, (logmap0(b, c) / s).to(t.dtype), geo.descriptor.to(t.dtype))
            nxt, tbn, descn = W.transfer(rt), W.transfer(rtb), W.transfer(rld)
            u, ctx = nxt, (nxt.unsqueeze(-2) - tbn, memb, descn, sigma)
    if blk.aggregation == 'concat': return blk.out_proj(torch.cat(outs, dim=-1))
    return sum(p(t) for p, t in zip(blk.out_proj, outs))


def _compose_step(model) -> None:
    "The residual step and its log_0 as separate expmap0, mobius_add and logmap0 kernels (before mobius_add_expmap0)."
    import types
    from bytropix.geometry import logmap0
    from bytropix.layers.wubu import IntraLevel
    def with_log(self, x, c, v=None):
        y = self(x, c, v)
        return y, logmap0(y, c)
    for m in model.modules():
        if isinstance(m, IntraLevel): m.with_log = types.MethodType(with_log, m)


def _use_matrix_exp(model) -> None:
    "Rotations by `torch.linalg.matrix_exp` (the library's choice before the Taylor exponential) on this model only."
    import torch
    from bytropix.layers.rotations import SORotation, skew_from_params
    for m in model.modules():
        if isinstance(m, SORotation):
            m.matrix = (lambda r: lambda: torch.linalg.matrix_exp(skew_from_params(r.params.float(), r.dim)).to(r.params.dtype))(m)


def speed(a) -> list[dict]:
    """Median time of one training step (forward, backward, clipping, AdamW) of GPT and of WuBu before/after the speed
    rewrites, all in this process on the same batch, interleaved (round r runs the contenders in order, round r+1 in
    reverse), timed in CPU time of the (single) training thread: ratios are meaningful on a shared CPU. With
    `--device cuda` the models and the batch live on the GPU and each step is timed in wall time between
    synchronisations (the GPU's time plus whatever launch overhead it does not hide)."""
    import types
    import torch
    torch.set_num_threads(a.threads)
    import bytropix.models.gpt, bytropix.models.wubu  # noqa: F401
    from bytropix.config import TrainConfig
    from bytropix.core import seed_everything
    from bytropix.models.base import build_model
    from bytropix.training.optim import build_optimizer, clip_gradients
    from bytropix.training.trainer import compile_for_training
    B, T, nh = a.batch_size, a.block_size, 4
    common = dict(n_layer=a.n_layer, n_head=nh, n_embd=a.n_embd, vocab_size=256, block_size=T)
    g = torch.Generator().manual_seed(a.seed)
    device = torch.device(a.device)
    x, y = torch.randint(0, 256, (B, T), generator=g).to(device), torch.randint(0, 256, (B, T), generator=g).to(device)
    cuda = device.type == 'cuda'
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    clock = time.perf_counter if cuda else time.thread_time
    def contender(name, arch, literal=False, matrix_exp=False, compose=False, compile_=False, **kw):
        seed_everything(a.seed)
        m = build_model(arch, {**common, **kw}).to(device)
        if literal:
            for blk in m.modules():
                if type(blk).__name__ == 'WuBuBlock': blk.forward = types.MethodType(literal_wubu_forward, blk)
        if matrix_exp: _use_matrix_exp(m)
        if compose: _compose_step(m)
        opt = build_optimizer(m, TrainConfig(lr=1e-4, weight_decay=0.1), device)
        params = [p for p in m.parameters() if p.requires_grad]
        f = compile_for_training(m, device, print) if compile_ else m   # what train.compile does
        if compile_ and f is m: raise SystemExit("wubu_vs_gpt.py --compile: torch.compile does not work here (above); "
                                                 "the compiled rows would be eager ones. Rerun without --compile.")
        def step():
            loss = f(x, y).loss
            opt.zero_grad(set_to_none=True); loss.backward(); clip_gradients(params, 1.0); opt.step()
        t0 = time.perf_counter(); step(); step(); sync()            # warm-up (and the compilation, if any)
        return dict(name=name, params=m.num_parameters(), step=step, warmup_s=time.perf_counter() - t0, times=[])
    wk = dict(level_dims=a.level_dims)
    cs = [contender('GPT', 'gpt'),
          contender('WuBu, before (literal levels, matrix_exp)', 'wubu', literal=True, matrix_exp=True, **wk),
          contender('WuBu, + Taylor exponential for the rotations', 'wubu', literal=True, **wk),
          contender('WuBu, + fused levels (no round trip, one affine map, cdist)', 'wubu', compose=True, **wk),
          contender('WuBu, + residual step and log0 from per-token scalars: now', 'wubu', **wk)]
    if a.compile:
        cs += [contender('GPT, train.compile (the whole model)', 'gpt', compile_=True),
               contender('WuBu now, train.compile (block by block)', 'wubu', compile_=True, **wk)]
    for r in range(a.speed_rounds):
        for c in (cs if r % 2 == 0 else cs[::-1]):
            for _ in range(a.speed_steps):
                sync(); t0 = clock(); c['step'](); sync(); c['times'].append(clock() - t0)
    import statistics
    for c in cs: c['ms'] = 1000 * statistics.median(c['times'])
    gpt = cs[0]['ms']
    where, unit = ((torch.cuda.get_device_name(device), 'wall') if cuda else (f'{a.threads} thread(s)', 'CPU'))
    print(f"\nTraining step, batch {B} × {T}, {where}, median of {a.speed_rounds} × {a.speed_steps} interleaved steps ({unit} time):")
    print(f'| model | parameters | {unit} ms / step | tokens/{unit}-s | ÷ GPT | gain over the row above (compiled: over eager) |')
    print('|---|---:|---:|---:|---:|---:|')
    prev, now = None, next(c for c in cs if c['name'].endswith(': now'))['ms']
    for c in cs:
        gain = '' if prev is None else f"{prev / c['ms']:.2f}×"
        if 'compile' in c['name']: gain = f"{(gpt if c['name'].startswith('GPT') else now) / c['ms']:.2f}×"
        print(f"| {c['name']} | {c['params']:,} | {c['ms']:.1f} | {B * T / c['ms'] * 1000:.0f} | {gpt / c['ms']:.2f} | {gain} |")
        prev = c['ms'] if c['name'].startswith('WuBu') and 'compile' not in c['name'] else prev
    if a.compile:
        print('compile + 2 warm-up steps: ' + ', '.join(f"{c['name']} {c['warmup_s']:.0f} s" for c in cs if 'compile' in c['name']))
        gc_, wc = cs[-2]['ms'], cs[-1]['ms']
        print(f"like for like, both compiled: WuBu ÷ GPT {gc_ / wc:.2f} (tokens/s; target ≥ 0.70: {'met' if gc_ / wc >= 0.7 else 'NOT met'})")
    if a.profile:
        print(f"\nWhat one training step launches (torch.profiler, one step after the timed ones):")
        print('| model | operator calls (aten, nested included) | CUDA kernels | host synchronisations | host time under the profiler (ms) |')
        print('|---|---:|---:|---:|---:|')
        for c in (cs[0], next(c for c in cs if c['name'].endswith(': now'))):   # the GPT and WuBu as shipped
            c['profile'] = p = profile_step(c['step'], cuda)
            na = lambda k: '—' if not cuda else f'{p[k]:,}'  # noqa: E731
            print(f"| {c['name']} | {p['operators']:,} | {na('kernels')} | {na('syncs')} | {p['host_ms']:.1f} |")
    return [{k: v for k, v in c.items() if k != 'step'} for c in cs]


def profile_step(step, cuda: bool) -> dict:
    "Counts of one call of `step` from `torch.profiler`: aten operator calls, CUDA kernels, host synchronisations."
    import torch
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        step()
        if cuda: torch.cuda.synchronize()
    host_ms = 1000 * (time.perf_counter() - t0)
    ev = prof.key_averages()
    n = lambda pred: sum(e.count for e in ev if pred(e))  # noqa: E731
    return {'operators': n(lambda e: e.key.startswith('aten::')), 'host_ms': host_ms,
            'kernels': n(lambda e: e.device_type == torch.autograd.DeviceType.CUDA),
            'syncs': n(lambda e: e.key in ('cudaStreamSynchronize', 'cudaDeviceSynchronize'))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--batch-size', type=int, default=8)
    ap.add_argument('--block-size', type=int, default=128)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--warmup', type=int, default=30)
    ap.add_argument('--eval-interval', type=int, default=50)
    ap.add_argument('--val-batches', type=int, default=16)
    ap.add_argument('--n-layer', type=int, default=4)
    ap.add_argument('--n-embd', type=int, default=128)
    ap.add_argument('--level-dims', type=int, nargs='+', default=[96, 64, 32])
    ap.add_argument('--stability-steps', type=int, default=150, help='0 skips the stability run')
    ap.add_argument('--stability-layers', type=int, default=8)
    ap.add_argument('--stability-level-dims', type=int, nargs='+', default=[64, 48, 32, 16])
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=int(os.environ.get('BENCH_THREADS', 1)))
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out-dir', default='.', help='where the PNGs (and results.json) go')
    ap.add_argument('--speed', action='store_true', help='only the training-step speed table (GPT, WuBu before/after the rewrites)')
    ap.add_argument('--speed-rounds', type=int, default=6)
    ap.add_argument('--speed-steps', type=int, default=3)
    ap.add_argument('--profile', action='store_true', help='--speed: also count what one step of the GPT and of WuBu launches')
    ap.add_argument('--compile', action='store_true', help='--speed: add torch.compile rows (slow to compile on a CPU)')
    ap.add_argument('--quick', action='store_true', help='tiny sizes (seconds): checks that the script runs and prints its tables')
    a = ap.parse_args(argv)
    if a.quick:   # explicit flags still win over the quick sizes
        ap.set_defaults(**dict(steps=4, batch_size=2, block_size=32, warmup=1, eval_interval=2, val_batches=1, n_layer=1, n_embd=32, level_dims=[16, 8], stability_steps=2, stability_layers=1, stability_level_dims=[16, 8], speed_rounds=2, speed_steps=1)); a = ap.parse_args(argv)
    os.makedirs(a.out_dir, exist_ok=True)
    if a.speed: return {'speed': speed(a)}
    common = dict(steps=a.steps, batch_size=a.batch_size, block_size=a.block_size, lr=a.lr, warmup=a.warmup,
                  eval_interval=a.eval_interval, val_batches=a.val_batches, device=a.device, threads=a.threads,
                  seed=a.seed, precision='fp32')
    nh = 4
    specs = [dict(common, name='GPT', arch='gpt', model=dict(n_layer=a.n_layer, n_head=nh, n_embd=a.n_embd)),
             dict(common, name='WuBu', arch='wubu', levels_png=os.path.join(a.out_dir, 'wubu_levels.png'),
                  model=dict(n_layer=a.n_layer, n_head=nh, n_embd=a.n_embd, level_dims=a.level_dims))]
    results = []
    for s in specs:
        t0 = time.time()
        r = in_subprocess(s); results.append(r)
        print(f"{r['name']:5s} {r['params']:,} parameters: validation bpb {r['val'][-1]['bpb']:.3f}, "
              f"{r['tokens_per_s']:.0f} tokens/s, peak memory {r['peak_mem_mb']:.0f} MB (process after data loading: "
              f"{r['base_mem_mb']:.0f} MB) ({time.time() - t0:.0f} s)", flush=True)
    stab = None
    if a.stability_steps > 0:
        t0 = time.time()
        stab = in_subprocess(dict(common, name='WuBu-deep-bf16', arch='wubu', steps=a.stability_steps, precision='bf16',
                                  eval_interval=max(1, a.stability_steps), level_norms=True,
                                  model=dict(n_layer=a.stability_layers, n_head=nh, n_embd=a.n_embd,
                                             level_dims=a.stability_level_dims, attention='hyperbolic')))
        print(f"stability: {a.stability_layers} layers × {len(a.stability_level_dims)} levels, bf16 autocast, "
              f"{a.stability_steps} steps: {stab['nonfinite']} non-finite steps, final validation bpb "
              f"{stab['val'][-1]['bpb']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    g, w = results
    print(f"\n| model | parameters | validation bpb ↓ (step {a.steps}) | tokens/s ↑ | peak {'RSS' if a.device == 'cpu' else 'memory'} (MB) ↓ |")
    print('|---|---:|---:|---:|---:|')
    for r in results:
        print(f"| {r['name']} | {r['params']:,} | {r['val'][-1]['bpb']:.3f} | {r['tokens_per_s']:.0f} | {r['peak_mem_mb']:.0f} |")
    print(f"\nWuBu / GPT: bpb {w['val'][-1]['bpb'] / g['val'][-1]['bpb']:.3f}×, speed {w['tokens_per_s'] / g['tokens_per_s']:.2f}×, "
          f"memory {w['peak_mem_mb'] / max(g['peak_mem_mb'], 1e-9):.2f}× — WuBu {'wins' if w['val'][-1]['bpb'] < g['val'][-1]['bpb'] else 'loses'} on bpb.")
    paths = plot(results, stab, a.out_dir) + [specs[1]['levels_png']]
    print('pictures: ' + ', '.join(paths))
    res = {'args': vars(a), 'results': results, 'stability': stab}
    with open(os.path.join(a.out_dir, 'wubu_vs_gpt.json'), 'w') as f: json.dump(res, f)
    if stab is not None and stab['nonfinite']:
        print(f"FAIL: the bf16 stability run had {stab['nonfinite']} non-finite steps.", file=sys.stderr)
    return res


if __name__ == '__main__':
    main()

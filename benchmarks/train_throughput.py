"""Training throughput of the bytropix GPT through the full `Trainer`, through a minimal plain-PyTorch loop, and of a
reference GPT-2 written from the formulas in this file, trained by the same plain loop.

All sides train the default GPT shape (4 layers, 4 heads, 128 wide, byte tokenizer, block 128, batch 16) of the
default run config (`--style llama`, the default, or `gpt2`, or `both`), from the same seed, on the same batches in
the same order (the task's `BlockLoader`, fresh each run), with the same AdamW hyper-parameters (decay on matrices
only), the same warm-up + cosine learning-rate schedule and the same global-norm gradient clipping, for the same
number of steps.

- trainer: `bytropix.training.trainer.Trainer(run).fit()` — the real platform: metrics log (fsync'd JSON lines every
  `log_interval` = 10 steps), non-finite checks, progress bookkeeping, scheduler, clipping helpers. Evaluation,
  checkpointing and export happen once, after the last step (`eval_interval=0`, `save_interval=0`), sampling and
  TensorBoard are off. Its time is the trainer's own: `time_s` of the `train/*` record of the last step in
  `RUN/metrics.jsonl`, measured by `fit()` from the start of its training loop (after setup) to the end of the last
  optimizer step — it includes every step's data loading and the periodic logging, and excludes setup and the final
  evaluation/checkpoint/export. tokens/s = tokens trained / that time.
- plain: `torch.optim.AdamW`, the schedule written inline, `torch.nn.utils.clip_grad_norm_`, the bytropix model;
  timed with `time.perf_counter()` from before the first batch is drawn to after the last optimizer step.
- reference: `RefGPT` below, the same plain loop: learned positions, pre-LayerNorm blocks with one fused qkv Linear,
  `F.scaled_dot_product_attention(is_causal=True)`, the exact-GELU MLP of width 4d, tied head, one
  `F.cross_entropy` on flattened logits; GPT-2 initialisation. Same widths as the bytropix model; in gpt2 style the
  same parameter count (and, from the same seed, the same initial weights: the two train to the same losses).

A warm-up run of each side comes first (untimed); then the sides alternate (trainer, plain, reference, reference,
plain, trainer, ...) for `--repeats` rounds and the medians are reported (the CPU may be shared). Printed: tokens/s
of each side, the ratios plain/reference (target >= 1.0), trainer/reference and trainer/plain (target >= 1.0), per
round and in process CPU time (less sensitive to other jobs), page faults per step, and the validation bits per byte
of all final models on the same batches (`bytropix.training.evaluation.evaluate`; target |trainer - plain| <= 2 %).

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py                    # llama style, ~5 minutes on 1 thread
    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --style both       # both styles, ~10 minutes
    python benchmarks/train_throughput.py --steps 50 --repeats 1               # quick
    python benchmarks/train_throughput.py --pin-malloc                         # without allocator page-fault noise
    python benchmarks/train_throughput.py --components                         # one layer's parts, forward + backward
    python benchmarks/train_throughput.py --optimizer-step                     # AdamW's implementations, one step
    python benchmarks/train_throughput.py --device cuda --steps 500 --threads 0
    python benchmarks/train_throughput.py --threads 2 --compile --mlp-act relu2   # compiled; the main job's MLP

`--compile` trains the bytropix sides compiled (`train.compile: true`; `torch.compile(model)` in the plain loop) and adds
the reference compiled as a fourth side, so both the eager reference (the target) and the like-for-like ratio print;
tokens/s then count from the end of step 1, the step that compiles (the warm-up run compiles first, untimed).
"""
import argparse
import gc
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

from bytropix.config import load_config, prepare_task  # noqa: E402
from bytropix.data.tokenizers import byte_tokenizer  # noqa: E402
from bytropix.models.base import build_model  # noqa: E402
from bytropix.training.evaluation import evaluate  # noqa: E402
from bytropix.training.trainer import Trainer  # noqa: E402


def make_run(steps: int, device: str, threads: int, eval_batches: int, out_dir: str, style: str = 'llama',
             mlp_act: str | None = None, compile_: bool = False):
    """The default run config (model `style`, `mlp_act`; `train.compile` if `compile_`), with evaluation/checkpoint only
    at the end and sampling/TensorBoard off."""
    ov = {'model.style': style, 'model.mlp_act': mlp_act, 'train.compile': compile_, 'train.steps': steps, 'train.warmup_steps': max(1, steps // 10), 'train.device': device,
          'train.eval_interval': 0, 'train.eval_batches': eval_batches, 'train.save_interval': 0, 'train.keep_last': 1,
          'train.sample_interval': 0, 'train.tensorboard': False, 'out_dir': out_dir}
    if threads: ov['train.num_threads'] = threads
    return load_config(overrides=ov)


def _faults() -> int:
    "Minor page faults of this process so far (0 where `resource` is missing)."
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except ImportError: return 0


def _sync(device: torch.device) -> None:
    if device.type == 'cuda': torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- trainer side
def run_trainer(run, check_init: dict | None = None) -> dict:
    "Train with the full Trainer; throughput from its own metrics.jsonl. Returns the trained model too."
    tr = Trainer(run, log=None, progress=False, overwrite=True).setup()
    if check_init is not None:   # compare the trainer's initial weights with the plain loop's
        sd = tr.model.state_dict()
        check_init['same_init'] = all(torch.equal(sd[k].cpu(), v) for k, v in check_init.pop('state').items())
    # secondary measurement: process CPU time from the end of setup to the end of the last train_step (a no-op
    # wrapper around the bound method notes the time; wall-clock figures come from the trainer's own metrics log)
    step_fn, cpu_end, cpu_first = tr.train_step, [0.0, 0], []
    def train_step():
        r = step_fn(); cpu_end[:] = time.process_time(), _faults()
        if not cpu_first: cpu_first.append(cpu_end[0])
        return r
    tr.train_step = train_step
    cpu0, f0 = time.process_time(), _faults()
    final = tr.fit()
    recs = [r for r in tr.metrics_log.read() if 'train/tokens' in r]
    last = recs[-1]
    assert last['step'] == run.train.steps, last
    first = recs[0]   # step 1: with train.compile, the step that compiles (a 1-step run: the whole run)
    assert first['step'] == 1, first
    n1 = last['train/tokens'] - first['train/tokens']
    return {'time_s': last['time_s'], 'tokens': last['train/tokens'], 'tok_s': last['train/tokens'] / last['time_s'],
            'tok_s_after1': n1 / (last['time_s'] - first['time_s']) if n1 else last['train/tokens'] / last['time_s'],
            'cpu_tok_s_after1': n1 / (cpu_end[0] - cpu_first[0]) if n1 else last['train/tokens'] / (cpu_end[0] - cpu0),
            'interval_tok_s': [r['train/tokens_per_s'] for r in recs if r['step'] > 1],   # its logged 10-step figures
            'cpu_tok_s': last['train/tokens'] / (cpu_end[0] - cpu0), 'faults': (cpu_end[1] - f0) / run.train.steps,
            'loss_at': {r['step']: r['train/loss'] for r in recs}, 'final_loss': last['train/loss'],
            'val_bpb_fit': final.get('val/bpb'), 'model': tr.model, 'data': tr.data}


# ------------------------------------------------------------------------------------------------------ plain side
def build_plain(run, device: torch.device):
    "Seed, model and data as a plain script would get them (same seed → same init and same batches as the trainer)."
    data = prepare_task(run, byte_tokenizer())
    torch.manual_seed(run.train.seed)
    model = build_model(run.arch, run.resolved(data.vocab_size).model_config).to(device)
    return model, data


def train_plain(model: nn.Module, batches, device: torch.device, tc, compile_: bool = False) -> dict:
    "A minimal plain-PyTorch training loop (`compile_`: through `torch.compile(model)`)."
    forward = torch.compile(model) if compile_ else model
    no_decay_mods = (nn.Embedding, nn.LayerNorm, nn.RMSNorm)
    no_decay = {id(p) for m in model.modules() if isinstance(m, no_decay_mods) for p in m.parameters(recurse=False)}
    params = list(model.parameters())
    decay = [p for p in params if p.ndim >= 2 and id(p) not in no_decay]
    other = [p for p in params if not (p.ndim >= 2 and id(p) not in no_decay)]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': tc.weight_decay}, {'params': other, 'weight_decay': 0.0}],
                            lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps)

    def lr_at(step):   # linear warm-up, then cosine from lr to min_lr
        if step < tc.warmup_steps: return tc.lr * (step + 1) / tc.warmup_steps
        p = min(1.0, (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps))
        return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * p))

    model.train()
    losses, marks = [], []   # marks: (step, time) at the steps where the trainer logs (1, every log_interval, last)
    _sync(device)
    t0, c0, f0 = time.perf_counter(), time.process_time(), _faults()
    for step in range(tc.steps):
        for g in opt.param_groups: g['lr'] = lr_at(step)
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        loss = forward(x, y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        s = step + 1
        if s == 1 or s % tc.log_interval == 0 or s == tc.steps:
            _sync(device); marks.append((s, time.perf_counter()))
            if s == 1: c1 = time.process_time()
    _sync(device)
    dt, dc, df = time.perf_counter() - t0, time.process_time() - c0, _faults() - f0
    ntok = tc.steps * tc.batch_size * tc.block_size
    losses = [float(v) for v in losses]
    per_step = tc.batch_size * tc.block_size
    intervals = [(s1 - s0) * per_step / (t1 - t0_) for (s0, t0_), (s1, t1) in zip(marks, marks[1:])]
    n1 = (tc.steps - 1) * per_step   # after step 1 (with `compile_`, the step that compiles)
    return {'time_s': dt, 'tokens': ntok, 'tok_s': ntok / dt, 'interval_tok_s': intervals, 'cpu_tok_s': ntok / dc,
            'tok_s_after1': n1 / (marks[-1][1] - marks[0][1]) if n1 else ntok / dt,
            'cpu_tok_s_after1': n1 / (c0 + dc - c1) if n1 else ntok / dc,
            'faults': df / tc.steps, 'losses': losses, 'final_loss': losses[-1]}


def run_plain(run, device: torch.device) -> dict:
    model, data = build_plain(run, device)
    r = train_plain(model, data.train, device, run.train, run.train.compile)
    return {**r, 'model': model, 'data': data}


# ---------------------------------------------------------------------------------------------- reference contender
class RefOutput(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor | None
    aux: dict | None = None


class RefBlock(nn.Module):
    """GPT-2 block: x + W_o·attn(LN(x)), x + W_2·gelu(W_1·LN(x)); one fused qkv projection, biases everywhere. The exact
    (erf) GELU, as nanoGPT: on this CPU it costs ~40 % of the tanh form's time (fwd+bwd), the stronger contender."""
    def __init__(self, d: int, n_head: int, hidden: int):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.attn_out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc_out = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def attn(self, h: torch.Tensor) -> torch.Tensor:
        "The attention sub-layer on the normalised input `h`."
        B, T, d = h.shape
        q, k, v = self.qkv(h).view(B, T, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # softmax(q·kᵀ/√d_h + causal mask)·v
        return self.attn_out(y.transpose(1, 2).reshape(B, T, d))

    def mlp(self, h: torch.Tensor) -> torch.Tensor: return self.fc_out(F.gelu(self.fc(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class RefGPT(nn.Module):
    """A minimal GPT-2 written from the formulas, the contender the bytropix model is measured against: learned
    positions, pre-LayerNorm blocks, GELU MLP of width 4d, tied output head, mean cross-entropy."""
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, d: int, std: float = 0.02):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, d), nn.Embedding(block_size, d)
        self.blocks = nn.ModuleList(RefBlock(d, n_head, 4 * d) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size, bias=False)
        for name, p in self.named_parameters():   # GPT-2 init: N(0, 0.02²), residual outputs / √(2L), zero biases
            if name.endswith('bias'): nn.init.zeros_(p)
            elif p.ndim == 2: nn.init.normal_(p, 0.0, std / math.sqrt(2 * n_layer) if name.endswith('_out.weight') else std)
        self.head.weight = self.wte.weight

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> RefOutput:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks: x = block(x)
        logits = self.head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        return RefOutput(logits, loss)


def run_reference(run, device: torch.device, compile_: bool = False) -> dict:
    "The reference model, same seed, same batches, same plain loop (`compile_`: through `torch.compile`)."
    data = prepare_task(run, byte_tokenizer())
    mc = run.resolved(data.vocab_size).model_config
    torch.manual_seed(run.train.seed)
    model = RefGPT(data.vocab_size, mc.block_size, mc.n_layer, mc.n_head, mc.n_embd).to(device)
    r = train_plain(model, data.train, device, run.train, compile_)
    return {**r, 'model': model, 'data': data}


# ------------------------------------------------------------------------------------------------------ components
def components(a, device: torch.device, tmp: str) -> list[dict]:
    """Forward + backward of one layer's parts on the benchmark's activations (batch × block × width), bytropix llama
    against the reference: fastest and median of `a.component_runs` interleaved runs (the fastest is the least disturbed
    by other jobs). Per step: × the layers (attention, MLP) or × the norms (2 per layer + the final one). The last row
    is the gpt2 style's activation on the MLP's hidden width: GPT-2's tanh form (`gelu_approximate: tanh`) against the
    exact GELU (its default, and the reference's)."""
    run = make_run(2, str(device), a.threads, 1, os.path.join(tmp, 'components'), 'llama')
    mc, tc = run.model_config, run.train
    torch.manual_seed(0)
    model = build_model(run.arch, run.resolved(256).model_config).to(device)
    ref = RefGPT(256, mc.block_size, mc.n_layer, mc.n_head, mc.n_embd).to(device)
    blk, rblk = model.blocks[0], ref.blocks[0]
    x = torch.randn(tc.batch_size, tc.block_size, mc.n_embd, device=device, requires_grad=True)
    g = torch.randn_like(x)
    h = torch.randn(tc.batch_size, tc.block_size, rblk.fc.out_features, device=device, requires_grad=True)
    gh = torch.randn_like(h)
    per_step = {'attention': mc.n_layer, 'MLP': mc.n_layer, 'norm': 2 * mc.n_layer + 1, 'GELU': mc.n_layer}
    parts = [('attention', 'fused qkv, RoPE, SDPA, out proj', blk.attn, 'fused qkv, SDPA, out proj', rblk.attn, x),
             ('MLP', f'SwiGLU (hidden {blk.mlp.hidden})', blk.mlp, f'GELU erf (hidden {rblk.fc.out_features})', rblk.mlp, x),
             ('norm', 'RMSNorm', blk.ln1, 'LayerNorm', rblk.ln1, x),
             # the gpt2 style's activation: GPT-2's tanh form (gelu_approximate: tanh) against the exact one (the default)
             ('GELU', f'tanh form (width {h.shape[-1]})', lambda t: F.gelu(t, approximate='tanh'), 'exact (erf)', F.gelu, h)]
    def once(f, inp) -> float:
        _sync(device); t0 = time.perf_counter(); f(inp).backward(gh if inp is h else g); _sync(device)
        return time.perf_counter() - t0
    rows = []
    for name, what, f, rwhat, rf, inp in parts:
        for _ in range(3): once(f, inp); once(rf, inp)                    # warm-up
        ts, rs = [], []
        for i in range(a.component_runs):
            for fn, acc in ((f, ts), (rf, rs)) if i % 2 == 0 else ((rf, rs), (f, ts)): acc.append(once(fn, inp))
        row = dict(component=name, bytropix=what, reference=rwhat, ms=1000 * min(ts), ref_ms=1000 * min(rs),
                   ms_median=1000 * statistics.median(ts), ref_ms_median=1000 * statistics.median(rs), per_step=per_step[name])
        rows.append(row)
    print(f"\n## One layer's parts, forward + backward on {tc.batch_size} × {tc.block_size} × {mc.n_embd} activations, "
          f"{torch.get_num_threads()} thread(s), fastest (median) of {a.component_runs} interleaved runs, ms")
    print('| component | bytropix llama | ms | reference GPT-2 | ms | difference per step |')
    print('|---|---|---:|---|---:|---:|')
    for r in rows:
        print(f"| {r['component']} | {r['bytropix']} | {r['ms']:.2f} ({r['ms_median']:.2f}) | {r['reference']} | "
              f"{r['ref_ms']:.2f} ({r['ref_ms_median']:.2f}) | {(r['ms'] - r['ref_ms']) * r['per_step']:+.1f} ms (× {r['per_step']}) |")
    return rows


# -------------------------------------------------------------------------------------------------- optimizer step
def optimizer_step(a, device: torch.device, tmp: str) -> list[dict]:
    """One AdamW step over the benchmark model's parameters (random gradients, decay on matrices only): PyTorch's three
    implementations and what the trainer builds (`bytropix.training.optim.build_optimizer`), interleaved, fastest and
    median of `a.component_runs` steps."""
    from bytropix.training.optim import build_optimizer
    run = make_run(2, str(device), a.threads, 1, os.path.join(tmp, 'optimizer'), 'llama')
    torch.manual_seed(0)
    model = build_model(run.arch, run.resolved(256).model_config).to(device)
    tc = run.train
    for p in model.parameters(): p.grad = torch.randn_like(p)
    groups = model.param_groups(tc.weight_decay)
    impls = {'per-tensor loop (torch default on CPU)': {'foreach': False}, 'foreach': {'foreach': True}, 'fused': {'fused': True}}
    opts = {k: torch.optim.AdamW([dict(g) for g in groups], lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps, **kw) for k, kw in impls.items()}
    trainer_opt = build_optimizer(model, tc, device)
    flags = {k: v for k, v in trainer_opt.optimizers['adamw'].param_groups[0].items() if k in ('fused', 'foreach') and v}
    opts[f"trainer's build_optimizer ({', '.join(flags) or 'default'})"] = trainer_opt
    times = {k: [] for k in opts}
    for i in range(a.component_runs + 3):
        for k in (list(opts) if i % 2 == 0 else list(opts)[::-1]):
            _sync(device); t0 = time.perf_counter(); opts[k].step(); _sync(device)
            if i >= 3: times[k].append(time.perf_counter() - t0)
    n, numel = sum(1 for _ in model.parameters()), sum(p.numel() for p in model.parameters())
    print(f"\n## One AdamW step over the model's {n} parameters ({numel:,} values), {torch.get_num_threads()} thread(s), "
          f"fastest (median) of {a.component_runs} interleaved steps, ms")
    print('| implementation | ms | per-tensor loop / this |')
    print('|---|---:|---:|')
    base = min(times['per-tensor loop (torch default on CPU)'])
    rows = []
    for k, ts in times.items():
        rows.append(dict(implementation=k, ms=1000 * min(ts), ms_median=1000 * statistics.median(ts)))
        print(f"| {k} | {1000 * min(ts):.2f} ({1000 * statistics.median(ts):.2f}) | {base / min(ts):.2f}× |")
    return rows


# ------------------------------------------------------------------------------------------------------------ main
SIDES = ('trainer', 'plain', 'reference')
WHAT = {'trainer': 'Trainer + bytropix gpt', 'plain': 'plain loop + bytropix gpt', 'reference': 'plain loop + reference GPT-2',
        'reference_c': 'plain loop + reference GPT-2, compiled'}


def measure(a, style: str, device: torch.device, tmp: str) -> dict:
    """Warm-up, `a.repeats` interleaved rounds of the sides, evaluation; prints the table of one model style. With
    `--compile` the bytropix sides train compiled, a fourth side is the reference compiled, and every side's tokens/s
    counts from the end of step 1 (the step that compiles) to the end of the last."""
    mk = lambda steps, name: make_run(steps, str(device), a.threads, a.eval_batches, os.path.join(tmp, name), style,
                                      a.mlp_act, a.compile)
    sides = SIDES + (('reference_c',) if a.compile else ())
    what = {**WHAT, **({'trainer': WHAT['trainer'] + ', compiled', 'plain': WHAT['plain'] + ', compiled'} if a.compile else {})}
    after1 = '_after1' if a.compile else ''
    def run_side(side, r):
        if side == 'trainer': return run_trainer(r)
        return run_plain(r, device) if side == 'plain' else run_reference(r, device, side == 'reference_c')
    run = mk(a.steps, f'run-{style}')
    tc, mc = run.train, run.model_config
    nparam = lambda m: sum(p.numel() for p in m.parameters())

    # warm-up (untimed) + checks: the same initial weights, the same step-1 loss (→ the same first batch)
    wr = mk(a.warmup_run_steps, f'warmup-{style}')
    pm, _ = build_plain(wr, device)
    chk = {'state': {k: v.detach().cpu().clone() for k, v in pm.state_dict().items()}}
    del pm
    tw, pw, rw = run_trainer(wr, check_init=chk), run_plain(wr, device), run_reference(wr, device)
    if a.compile: run_reference(wr, device, True)   # its compilation, untimed
    same_first = tw['loss_at'][1] == pw['losses'][0]
    from bytropix.training.memory import training_step_flops   # counted matmul/attention FLOPs of one step
    flops = {'bytropix': training_step_flops(pw['model'], tc.batch_size, tc.block_size, device),
             'reference': training_step_flops(rw['model'], tc.batch_size, tc.block_size, device)}
    print(f"\n## style {style}{', MLP ' + a.mlp_act if a.mlp_act else ''}{', torch.compile' if a.compile else ''}: "
          f"bytropix GPT {mc.n_layer}L/{mc.n_head}H/{mc.n_embd}d, {nparam(pw['model']):,} parameters; "
          f"reference GPT-2 {nparam(rw['model']):,} parameters")
    print(f"warm-up ({a.warmup_run_steps} steps each): same initial weights: {chk['same_init']}; "
          f"same step-1 loss: {same_first} ({tw['loss_at'][1]:.6f} vs {pw['losses'][0]:.6f})")
    print(f"FLOPs per training step (FlopCounterMode): bytropix {flops['bytropix'] / 1e9:.2f} G, reference "
          f"{flops['reference'] / 1e9:.2f} G ({flops['bytropix'] / flops['reference']:.3f}×)")
    del tw, pw, rw; gc.collect()

    res = {k: {side: [] for side in sides} for k in ('loop', 'interval', 'cpu', 'faults')}
    last = {}
    for i in range(a.repeats):
        for side in (sides if i % 2 == 0 else sides[::-1]):   # trainer, plain, reference, reference, plain, trainer, ...
            last.pop(side, None); gc.collect()
            if side == 'trainer': shutil.rmtree(run.out_dir, ignore_errors=True)
            r = run_side(side, run)
            res['loop'][side].append(r['tok_s' + after1]); res['cpu'][side].append(r['cpu_tok_s' + after1])
            res['faults'][side].append(r['faults'])
            res['interval'][side] += r['interval_tok_s']
            print(f"  round {i + 1} {side:<11} {r['time_s']:7.2f} s  {r['tok_s' + after1]:7,.0f} tok/s  "
                  f"(median of its {tc.log_interval}-step intervals {statistics.median(r['interval_tok_s']):,.0f}; "
                  f"{r['cpu_tok_s']:,.0f} tok/CPU-s; {r['faults']:,.0f} page faults/step)  final train loss {r['final_loss']:.4f}", flush=True)
            last[side] = r

    # evaluate the final models on the same validation batches
    vd = last['plain']['data']
    ev = {side: evaluate(last[side]['model'], vd.val_batches(a.eval_batches), bytes_per_token=vd.bytes_per_token)
          for side in sides}
    bpb_t, bpb_p = ev['trainer']['bpb'], ev['plain']['bpb']
    dbpb = (bpb_t - bpb_p) / bpb_p * 100
    lt, lp = last['trainer']['loss_at'], last['plain']['losses']
    max_dloss = max(abs(v - lp[s - 1]) for s, v in lt.items())

    med = {k: {side: statistics.median(v[side]) for side in sides} for k, v in res.items()}
    ratio = {k: m['trainer'] / m['plain'] for k, m in med.items() if k != 'faults'}
    vs_ref = {k: {side: m[side] / m['reference'] for side in ('trainer', 'plain')} for k, m in med.items() if k != 'faults'}
    paired = [t / p for t, p in zip(res['loop']['trainer'], res['loop']['plain'])]   # per round (adjacent runs)
    paired_ref = [p / r for p, r in zip(res['loop']['plain'], res['loop']['reference'])]
    spread = lambda v: (max(v) - min(v)) / statistics.median(v) * 100
    ok_speed, ok_bpb, ok_ref = ratio['loop'] >= 1.0, abs(dbpb) <= 2.0, vs_ref['loop']['plain'] >= 1.0
    within_noise = min(paired) <= 1.0 <= max(paired)
    yes = lambda ok: 'met' if ok else 'NOT met'

    n_int = len(res['interval']['trainer'])
    print()
    print(f"| style | side | tokens/s (median of {a.repeats} runs) | runs: tokens/s (spread) | tokens/s (median of {n_int} "
          f"{tc.log_interval}-step intervals) | tokens/CPU-s (median) | / reference (tokens/s) | / reference (tokens/CPU-s) "
          f"| page faults/step (median) | val bpb | final train loss |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for side in sides:
        runs = ', '.join(f"{v:,.0f}" for v in res['loop'][side])
        rel = lambda k: f"{med[k][side] / med[k]['reference']:.3f}"
        print(f"| {style} | {what[side]} | {med['loop'][side]:,.0f} | {runs} ({spread(res['loop'][side]):.0f} %) | "
              f"{med['interval'][side]:,.0f} | {med['cpu'][side]:,.0f} | {rel('loop')} | {rel('cpu')} | "
              f"{med['faults'][side]:,.0f} | {ev[side]['bpb']:.4f} | {last[side]['final_loss']:.4f} |")
    print()
    print(f"[{style}] tokens/s ratio plain loop + bytropix gpt / reference: {vs_ref['loop']['plain']:.3f}  (target >= 1.0: "
          f"{yes(ok_ref)}); per round: {', '.join(f'{r:.3f}' for r in paired_ref)}; CPU time: {vs_ref['cpu']['plain']:.3f}; "
          f"trainer / reference: {vs_ref['loop']['trainer']:.3f}")
    if a.compile:   # like for like: the reference compiled too
        print(f"[{style}] tokens/s ratio plain loop + bytropix gpt (compiled) / reference compiled: "
              f"{med['loop']['plain'] / med['loop']['reference_c']:.3f}; trainer / reference compiled: "
              f"{med['loop']['trainer'] / med['loop']['reference_c']:.3f}; reference compiled / reference: "
              f"{med['loop']['reference_c'] / med['loop']['reference']:.3f}")
    fr = flops['bytropix'] / flops['reference']
    print(f"[{style}] per FLOP (tokens/s × FLOPs per token, / reference): plain loop {vs_ref['loop']['plain'] * fr:.3f}, "
          f"trainer {vs_ref['loop']['trainer'] * fr:.3f} — the bytropix model does {fr:.3f}× the reference's arithmetic per token")
    print(f"[{style}] tokens/s ratio trainer/plain: {ratio['loop']:.3f}  (target >= 1.0: {yes(ok_speed)})")
    print(f"    per round: {', '.join(f'{r:.3f}' for r in paired)} (median {statistics.median(paired):.3f}); "
          f"{tc.log_interval}-step intervals: {ratio['interval']:.3f}; CPU time: {ratio['cpu']:.3f}"
          + ("; 1.0 lies within the per-round range: the difference is within this machine's run-to-run noise"
             if within_noise and not ok_speed else ''))
    print(f"[{style}] bpb difference (trainer - plain) / plain: {dbpb:+.3f} %  ({bpb_t:.4f} vs {bpb_p:.4f}; target |.| <= 2 %: "
          f"{yes(ok_bpb)}); reference {ev['reference']['bpb']:.4f}")
    print(f"    largest train-loss difference at the trainer's logged steps: {max_dloss:.2e}; the trainer's own final "
          f"val/bpb: {last['trainer']['val_bpb_fit']:.4f} (the same {a.eval_batches} validation batches)")
    return {'style': style, 'tokens_per_s': res, 'median_tokens_per_s': med, 'ratio': ratio, 'vs_reference': vs_ref,
            'paired_ratios': paired, 'paired_vs_reference': paired_ref,
            'bpb': {side: ev[side]['bpb'] for side in sides}, 'bpb_diff_pct': dbpb, 'compile': a.compile, 'mlp_act': a.mlp_act,
            'targets_met': {'speed': ok_speed, 'bpb': ok_bpb, 'vs_reference': ok_ref}, 'same_init': chk['same_init'],
            'same_step1_loss': same_first, 'max_train_loss_diff': max_dloss, 'flops_per_step': flops}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--steps', type=int, default=60, help='optimizer steps per run (default 60)')
    ap.add_argument('--repeats', type=int, default=4, help='timed runs of each side, alternating trainer-plain-reference, '
                    'reference-plain-trainer, ... (default 4)')
    ap.add_argument('--style', default='llama', choices=('llama', 'gpt2', 'both'), help="the bytropix model's style (default llama)")
    ap.add_argument('--mlp-act', default=None, choices=('relu2',), help="the bytropix model's MLP: relu2 (squared ReLU, "
                    "the main job's) instead of the style's (SwiGLU | GELU)")
    ap.add_argument('--compile', action='store_true', help='the bytropix sides train compiled (train.compile; torch.compile '
                    'in the plain loop), plus a side with the reference compiled; tokens/s from the end of step 1')
    ap.add_argument('--device', default='cpu', help="cpu, cuda, auto (default cpu)")
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads (0: torch default; default 1)')
    ap.add_argument('--warmup-run-steps', type=int, default=10, help='steps of the untimed warm-up run of each side')
    ap.add_argument('--eval-batches', type=int, default=20, help='validation batches for bits per byte (default 20)')
    ap.add_argument('--json', default=None, help='also write the results to this JSON file')
    ap.add_argument('--components', action='store_true', help="only the per-layer table: forward + backward of attention, "
                    "MLP and norm of the bytropix llama model and of the reference, on the benchmark's activations")
    ap.add_argument('--component-runs', type=int, default=40, help='--components, --optimizer-step: timed runs (default 40)')
    ap.add_argument('--optimizer-step', action='store_true', help="only the optimizer-step table: AdamW's per-tensor, foreach "
                    "and fused implementations and the trainer's choice, on the benchmark model's parameters")
    ap.add_argument('--pin-malloc', action='store_true',
                    help="re-run with glibc's malloc thresholds pinned (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_): "
                         "freed activation memory is kept instead of being returned to the OS and faulted in again, "
                         "which takes the run-to-run page-fault differences out of the comparison (Linux/glibc)")
    ap.add_argument('--quick', action='store_true', help='tiny sizes (seconds): checks that the script runs and prints its tables')
    a = ap.parse_args(argv)
    if a.quick:   # explicit flags still win over the quick sizes
        ap.set_defaults(**dict(steps=3, repeats=1, warmup_run_steps=1, eval_batches=1, component_runs=2)); a = ap.parse_args(argv)
    if a.pin_malloc and argv is None and not os.environ.get('MALLOC_TRIM_THRESHOLD_'):
        env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': str(2**32), 'MALLOC_TRIM_THRESHOLD_': str(2**34)}
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)
    if a.steps < 2 or a.repeats < 1 or a.warmup_run_steps < 1 or a.eval_batches < 1:
        ap.error('--steps must be at least 2; --repeats, --warmup-run-steps and --eval-batches at least 1')
    if a.threads: torch.set_num_threads(a.threads)
    from bytropix.core import resolve_device
    device = resolve_device(a.device)
    if a.compile:   # every side would fail on its first step (the Trainer's would train eager): one line instead
        from bytropix.training.trainer import compile_for_training
        probe = nn.Linear(1, 1)
        if compile_for_training(probe, device, print) is probe:
            raise SystemExit("train_throughput.py --compile: torch.compile does not work here (above); rerun without --compile.")
    tmp = tempfile.mkdtemp(prefix='bytropix-throughput-')
    t_start = time.perf_counter()
    try:
        for flag, fn in (('components', components), ('optimizer_step', optimizer_step)):
            if getattr(a, flag):
                rows = fn(a, device, tmp)
                if a.json:
                    with open(a.json, 'w') as f: json.dump({flag: rows}, f, indent=1)
                return {flag: rows}
        tc = make_run(a.steps, str(device), a.threads, a.eval_batches, tmp).train
        print(f"batch {tc.batch_size} x block {tc.block_size} = {tc.tokens_per_step:,} tokens/step, {tc.steps} steps "
              f"(warm-up {tc.warmup_steps}, cosine {tc.lr:g} -> {tc.min_lr:g}, clip {tc.clip_grad}), device {device}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
        styles = ('llama', 'gpt2') if a.style == 'both' else (a.style,)
        out = {'steps': a.steps, 'repeats': a.repeats, 'device': str(device), 'threads': torch.get_num_threads(),
               'styles': {s: measure(a, s, device, tmp) for s in styles}}
        print(f"\nHow measured: tokens trained / time over the training loop. Trainer: `time_s` of its last-step record in "
              f"RUN/metrics.jsonl, which fit() measures from the start of its loop (after setup) to the end of the last "
              f"step: data loading, steps and periodic logging included; the final eval, checkpoint and export excluded. "
              f"Plain and reference: perf_counter around the same plain loop. Intervals: the trainer's own "
              f"`train/tokens_per_s` records (every {tc.log_interval} steps; the step-1 record left out), the plain loops "
              f"timed at the same steps. tokens/CPU-s: the whole loop in process CPU time"
              + (" (host)" if device.type == 'cuda' else '') +
              f". {a.repeats} alternating rounds after an untimed warm-up run of each side; medians, since the CPU may "
              f"be shared." + (" --compile: every side's tokens/s (and tokens/CPU-s) from the end of step 1, the step "
                               "that compiles, to the end of the last." if a.compile else '') +
              f" Page faults/step: minor page faults over the loop / steps"
              + (" (malloc thresholds pinned)" if os.environ.get('MALLOC_TRIM_THRESHOLD_') else '') +
              f". Benchmark wall time {time.perf_counter() - t_start:.0f} s.")
        if a.json:
            with open(a.json, 'w') as f: json.dump(out, f, indent=1)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()

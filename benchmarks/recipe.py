"""The main job's recipe at equal wall time: variants of `configs/default.yaml` each trained for the same time budget,
judged in bits per byte on the whole validation split of the default corpus.

Each variant is a list of config overrides. Equal wall time, not equal steps: a variant that makes a step dearer
(wider, deeper, longer blocks, Muon's Newton-Schulz iterations) gets fewer steps. For every variant the script

1. calibrates: in a fresh process, times the trainer's setup (data, tokenizer training, model), trains
   `--calib-steps` steps and reads the steady step time from the run's own `metrics.jsonl` (the trainer's `time_s`
   between its second and last logged steps: the first steps, slower while caches and allocator warm up, and the
   calibration run's final evaluation and checkpoint are left out — including them overestimated the step time and
   left 4-23 % of the budget unused);
2. in the same process, on the same prepared data, trains `steps = (budget − setup) / step time` steps (the schedule
   stretched over them; warm-up 100 steps or 7 % of the steps, whichever is smaller);
3. evaluates the final model on the whole validation split (`bytropix.training.evaluation.evaluate_run`, every
   validation window) and records the bpb, steps, measured training time and peak resident memory.

What the calibration run's first step took beyond a steady step (`first step + s`: torch.compile's compilation with
`train.compile: true`, as shipped; a fraction of a second for the `eager` variant) is taken from the budget as well:
the timed run compiles its new model again (from a warm cache, so a cold first run pays more: see the trainer chapter).

The table prints the model's bpb, the bpb with the n-gram retrieval of the training split when the variant has a
`retrieval:` section (the shipped recipe does: see the retrieval chapter), and the difference of the final figure from
`baseline` (the default config as shipped). Timings are only as good as
the machine is quiet: run it alone (`nproc` cores, nothing else running) — the calibration and the training of a
variant are adjacent, so a load change between variants shifts their step counts, not their comparison within a
variant.

    python benchmarks/recipe.py                                  # every variant, 6 minutes each (~1 hour)
    python benchmarks/recipe.py --minutes 2 --variants baseline muon wsd muon+wsd
    python benchmarks/recipe.py --steps 600 --threads 1 --variants previous-default cosine bpe4k-cosine block256-cosine bytes-muon
                                                                 # equal steps: the trainer chapter's second table
    python benchmarks/recipe.py --quick                          # a tiny model, seconds per variant (smoke test)
"""
import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

# name -> overrides of configs/default.yaml (each a `key=value` string, as on the command line): the shipped recipe,
# each of its choices undone one at a time, the previous default, and alternatives that did not make it
PREVIOUS = ['tokenizer.kind=byte', 'train.schedule=cosine', 'retrieval=null', 'model.mlp_act=null', 'train.compile=false']
VARIANTS = {
    'baseline': [],
    'previous-default': PREVIOUS,
    'swiglu': ['model.mlp_act=null'],
    'byte': ['tokenizer.kind=byte'],
    'cosine': ['train.schedule=cosine'],
    'bpe2k': ['tokenizer.vocab_size=2048'],
    'bpe1k': ['tokenizer.vocab_size=1024'],
    'bpe4k-cosine': ['tokenizer.vocab_size=4096', 'train.schedule=cosine'],      # the equal-steps table's rows
    'block256-cosine': ['train.block_size=256', 'train.batch_size=8', 'train.schedule=cosine'],
    'bytes-muon': PREVIOUS + ['train.optimizer=muon'],
    'muon': ['train.optimizer=muon'],
    'qk-norm': ['model.qk_norm=true'],
    'relu2': ['model.mlp_act=relu2'],
    'value-embeds': ['model.value_embeds=1'],
    'lr3e-3': ['train.lr=3e-3', 'train.min_lr=3e-4'],
    'untied': ['model.tie_embeddings=false'],
    'block256': ['train.block_size=256', 'train.batch_size=8'],
    'wide6x192': ['model.n_layer=6', 'model.n_head=6', 'model.n_embd=192'],
    'gpt2-style': ['model.style=gpt2'],
    'eager': ['train.compile=false'],
}
QUICK = ['model.n_layer=1', 'model.n_head=2', 'model.n_embd=32', 'train.batch_size=4', 'train.block_size=32',
         'data.max_train_tokens=200000', 'data.max_val_tokens=20000',
         'train.eval_batches=2', 'train.compile=false']   # seconds per variant: no compilation


def _common(out_dir: str, steps: int, threads: int | None, quick: bool) -> list[str]:
    ov = [f'out_dir={out_dir}', f'train.steps={steps}', f'train.warmup_steps={min(100, max(1, int(0.07 * steps)))}',
          'train.eval_interval=0', 'train.save_interval=0', 'train.keep_last=1', 'train.sample_interval=0',
          'train.tensorboard=false']
    if threads: ov.append(f'train.num_threads={threads}')
    return ov + (QUICK if quick else [])


def _train_records(out_dir: str) -> list[dict]:
    "The `train/*` records of a run's metrics.jsonl, by step."
    recs = [json.loads(l) for l in open(os.path.join(out_dir, 'metrics.jsonl'))]
    return sorted((r for r in recs if 'time_s' in r and any(k.startswith('train/') for k in r)), key=lambda r: r['step'])


def _train_s(out_dir: str) -> float:
    "The trainer's own training time (setup excluded): `time_s` of the last `train/*` record of metrics.jsonl."
    return _train_records(out_dir)[-1]['time_s']


def _steady_step_s(out_dir: str) -> float:
    "Seconds per step between the second and the last logged step (the first steps excluded: they warm up)."
    recs = _train_records(out_dir)
    a, b = (recs[1], recs[-1]) if len(recs) >= 3 else (recs[0], recs[-1])
    return (b['time_s'] - a['time_s']) / max(1, b['step'] - a['step'])


def _variant(name: str, extra: list[str], budget_s: float, calib_steps: int, threads: int | None, quick: bool,
             work: str, q: mp.Queue, fixed_steps: int | None = None) -> None:
    "Child process: calibrate, train for the budget, evaluate on the whole validation split; report to `q`."
    from bytropix.config import load_config
    from bytropix.training.evaluation import evaluate_run
    from bytropix.training.trainer import Trainer
    cfg = os.path.join(ROOT, 'configs', 'default.yaml')
    cal = load_config(cfg, _common(os.path.join(work, name + '-calib'), calib_steps, threads, quick) + extra)
    t0 = time.perf_counter()
    tr = Trainer(cal, log=None, progress=False).setup()
    setup_s = time.perf_counter() - t0                        # data preparation, tokenizer training, the model
    tr.fit()
    step_s = _steady_step_s(cal.out_dir)
    # what the first step took beyond a steady one (torch.compile's compilation, with `train.compile`) is spent again
    # by the timed run (a new model: compiled anew, from a warm cache) and counts against its budget too
    first_extra_s = max(0.0, _train_records(cal.out_dir)[0]['time_s'] - step_s)
    steps = fixed_steps or max(calib_steps, int((budget_s - setup_s - first_extra_s) / step_s))
    run = load_config(cfg, _common(os.path.join(work, name), steps, threads, quick) + extra)
    Trainer(run, data=tr.data, tokenizer=tr.tokenizer, log=None, progress=False).fit()   # the same prepared data
    ev = evaluate_run(run.out_dir, 'latest', max_batches=None, device='cpu')
    q.put({'variant': name, 'overrides': extra, 'calib_step_ms': 1e3 * step_s, 'setup_s': setup_s, 'steps': steps,
           'first_extra_s': first_extra_s,
           'train_s': _train_s(run.out_dir), 'model_bpb': ev['bpb'], 'bpb': ev.get('retrieval/bpb', ev['bpb']),
           'retrieval_bpb': ev.get('retrieval/bpb'), 'val_tokens': ev['tokens'],
           'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run_variant(name: str, extra: list[str], budget_s: float, calib_steps: int, threads: int | None, quick: bool,
                work: str, fixed_steps: int | None = None) -> dict:
    "One variant in a fresh process (its own peak memory, no state shared with the others)."
    ctx = mp.get_context('spawn')
    q = ctx.Queue()
    p = ctx.Process(target=_variant, args=(name, extra, budget_s, calib_steps, threads, quick, work, q, fixed_steps))
    p.start(); p.join()
    if p.exitcode != 0: raise SystemExit(f"recipe.py: variant `{name}` failed (exit {p.exitcode}): {extra}")
    return q.get()


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS), metavar='NAME',
                    help=f"which variants (default: all): {', '.join(VARIANTS)}")
    ap.add_argument('--minutes', type=float, default=6.0, help="training budget per variant, setup included (default 6)")
    ap.add_argument('--calib-steps', type=int, default=40)
    ap.add_argument('--steps', type=int, default=None, help="equal steps instead of equal time: every variant trains this many")
    ap.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's, i.e. every core)")
    ap.add_argument('--quick', action='store_true', help="a tiny model and a few seconds per variant (smoke test)")
    ap.add_argument('--out', default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    if a.quick: a.minutes, a.calib_steps = min(a.minutes, 0.1), 5
    if a.calib_steps < 2 or a.minutes <= 0 or (a.steps is not None and a.steps < 1):
        ap.error('--calib-steps must be at least 2 (a step time needs two logged steps), --minutes positive, --steps at least 1')
    if 'baseline' not in a.variants: a.variants = ['baseline'] + a.variants
    work = tempfile.mkdtemp(prefix='bytropix-recipe-')
    try:
        rows = [run_variant(n, VARIANTS[n], 60 * a.minutes, a.calib_steps, a.threads, a.quick, work, a.steps) for n in a.variants]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]['bpb']
    print(f"\nequal steps: {a.steps} per variant, " if a.steps else f"\nequal wall time: {a.minutes:g} min per variant (setup included), ", end='')
    print(f"{os.cpu_count()} CPUs, "
          f"threads {a.threads or 'default'}{', QUICK' if a.quick else ''}")
    print('| variant | overrides | steps | step ms | first step + s | train s | setup s | peak RSS MB | model bpb | + retrieval | Δ vs baseline |')
    print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for r in rows:
        print(f"| {r['variant']} | {' '.join(r['overrides']) or '(default)'} | {r['steps']} | {r['calib_step_ms']:.0f} | "
              f"{r['first_extra_s']:.1f} | {r['train_s']:.0f} | {r['setup_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['model_bpb']:.4f} | "
              f"{'—' if r['retrieval_bpb'] is None else format(r['retrieval_bpb'], '.4f')} | {r['bpb'] - base:+.4f} |")
    if a.out:
        with open(a.out, 'w') as f: json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()

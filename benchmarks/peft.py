"""Fine-tuning evidence: full fine-tuning vs LoRA (float32 and bf16 trunks) vs QLoRA (NF4 trunk) vs int8/NVFP4 trunks
vs prompt tuning — trainable parameters, memory and bits per byte, all through the trainer (`train.init_from` +
`train.peft`).

A GPT is pretrained on the code half of the default corpus (standard-library sources), exported, then fine-tuned on
prose it has not seen (Python's documentation topics, `pydoc_data.topics`, which ships with Python) with each method for the same steps, batch and data order. Each fine-tune
runs in its own process, so its peak resident memory is its own. Reported per method:

- trainable parameters and their share of the model;
- the bytes of the weights (parameters and buffers: the trunk as stored), and of the training state the optimizer needs
  (weights + gradients + Adam moments), counted from the tensors themselves after the run;
- the process's peak resident memory (CPU: includes Python, torch and the activations);
- validation bits per byte on the new text, and seconds per step.

    python benchmarks/peft.py --quick      # tiny model, a few steps: seconds (the smoke test)
    python benchmarks/peft.py              # 4 layers × 256 pretrained 150 steps, 40 fine-tuning steps per method
    python benchmarks/peft.py --layers 2 --width 128 --batch 8 --block 64     # a smaller model (a busy machine)
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

METHODS = {   # name: (train.peft, learning rate)
    'full fine-tune': (None, 1e-3),
    'LoRA, fp32 trunk': ({'r': 16, 'alpha': 32}, 5e-3),
    'LoRA, bf16 trunk': ({'r': 16, 'alpha': 32, 'trunk': 'bf16'}, 5e-3),
    'LoRA, int8 trunk': ({'r': 16, 'alpha': 32, 'trunk': 'int8'}, 5e-3),
    'QLoRA (NF4 trunk)': ({'method': 'qlora', 'r': 16, 'alpha': 32}, 5e-3),
    'LoRA, NVFP4 trunk': ({'r': 16, 'alpha': 32, 'trunk': 'nvfp4'}, 5e-3),
    'prompt tuning (16)': ({'method': 'prompt', 'virtual_tokens': 16}, 3e-2),
}
VIRTUAL = 16


SIZE_ARGS = {'layers': 'n_layer', 'width': 'n_embd', 'pre_steps': 'pre_steps', 'ft_steps': 'ft_steps', 'batch': 'batch',
             'block': 'block'}

def sizes(quick: bool, args=None) -> dict:
    "The model and run sizes (`args`' size options override the full run's)."
    if args is not None and not quick:
        return {**sizes(False), **{v: getattr(args, k) for k, v in SIZE_ARGS.items() if getattr(args, k, None) is not None}}
    if quick: return dict(n_layer=1, n_embd=64, n_head=4, pre_steps=4, ft_steps=3, batch=4, block=32, eval_batches=2, tokens=20000)
    return dict(n_layer=4, n_embd=256, n_head=4, pre_steps=150, ft_steps=40, batch=16, block=128, eval_batches=20, tokens=None)


def common(s: dict, out: Path) -> dict:
    return {'out_dir': str(out), 'train.batch_size': s['batch'], 'train.block_size': s['block'], 'train.eval_interval': 0,
            'train.save_interval': 0, 'train.sample_interval': 0, 'train.tensorboard': False,
            'train.eval_batches': s['eval_batches'], 'train.log_interval': 1000,
            **({'data.max_train_tokens': s['tokens'], 'data.max_val_tokens': s['tokens'] // 10} if s['tokens'] else {})}


def write_new_text(folder: Path) -> Path:
    "The fine-tuning text: Python's documentation topics, one file per sixth of them."
    from pydoc_data.topics import topics
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(topics)
    for i in range(6): (folder/f'part-{i}.txt').write_text('\n\n'.join(topics[n].strip() for n in names[i::6]) + '\n', encoding='utf-8')
    return folder


def pretrain(s: dict, work: Path) -> Path:
    from bytropix.config import load_config
    from bytropix.training.trainer import Trainer
    cfg = {**common(s, work/'base'), 'train.steps': s['pre_steps'], 'model.n_layer': s['n_layer'], 'model.n_embd': s['n_embd'],
           'model.n_head': s['n_head'], 'model.block_size': s['block'] + VIRTUAL,   # room for prompt tuning's virtual tokens
           'data.corpus_kind': 'code'}   # the base knows Python code; the fine-tuning text is English documentation
    Trainer(load_config(None, cfg), log=None, progress=False).fit()
    return work/'base'/'export'


def state_bytes(trainer) -> dict:
    "Bytes of the weights as stored, and of weights + gradients + optimizer moments (from the tensors themselves)."
    m = trainer.model
    tensors = {id(t): t for t in [*m.parameters(), *m.buffers()]}.values()
    weights = sum(t.numel() * t.element_size() for t in tensors)
    trainable = [p for p in {id(p): p for p in m.parameters()}.values() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trainable)
    opt = sum(v.numel() * v.element_size() for o in trainer.optimizer.optimizers.values() for st in o.state.values()
              for v in st.values() if hasattr(v, 'numel') and v.dim() > 0)
    return {'weights': weights, 'training': weights + grads + opt, 'trainable': sum(p.numel() for p in trainable),
            'total': sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())}


def finetune(args) -> dict:
    "One method's fine-tune (in a child process: prints its JSON line)."
    from bytropix.config import load_config
    from bytropix.training.trainer import Trainer
    s = sizes(args.quick, args)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peft, lr = METHODS[args.method] if args.method != 'none' else (None, 1e-3)
    block = s['block'] - (VIRTUAL if peft and peft.get('method') == 'prompt' else 0)
    cfg = {**common(s, Path(args.out)), 'train.init_from': args.base, 'data.source': args.text, 'data.cache_dir': args.cache,
           'train.steps': s['ft_steps'] if args.method != 'none' else 1, 'train.lr': lr if args.method != 'none' else 1e-12,
           'train.min_lr': lr / 10 if args.method != 'none' else 0.0, 'train.warmup_steps': max(1, s['ft_steps'] // 10),
           'train.peft': peft, 'train.block_size': block}
    stamps = {}
    t = Trainer(load_config(None, cfg), log=None, progress=False, callbacks=[lambda tr, step, rec: stamps.setdefault(step, time.perf_counter())])
    m = t.fit()
    sec = (stamps[t.step] - stamps[1]) / (t.step - 1) if t.step > 1 else float('nan')   # training steps only (no eval, export)
    r = {**state_bytes(t), 'bpb': m['val/bpb'], 's_per_step': sec,
         'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'rss_at_start_mb': rss0}
    if args.child: print(json.dumps(r))
    return r


def mb(b: float) -> str: return f"{b / 2**20:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='tiny sizes: seconds')
    for k in SIZE_ARGS: ap.add_argument('--' + k.replace('_', '-'), type=int, help=f"override the full run's {k.replace('_', ' ')}")
    ap.add_argument('--method', help=argparse.SUPPRESS); ap.add_argument('--base', help=argparse.SUPPRESS)
    ap.add_argument('--text', help=argparse.SUPPRESS); ap.add_argument('--out', help=argparse.SUPPRESS)
    ap.add_argument('--cache', help=argparse.SUPPRESS); ap.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child: return finetune(args)
    s = sizes(args.quick, args)
    work = Path(tempfile.mkdtemp(prefix='bench-peft-'))
    try: run_all(args, s, work)
    finally: shutil.rmtree(work, ignore_errors=True)


def run_all(args, s: dict, work: Path) -> None:
    t0 = time.perf_counter()
    base = pretrain(s, work)
    text = write_new_text(work/'text')
    print(f"base: GPT {s['n_layer']} layers × {s['n_embd']}, pretrained {s['pre_steps']} steps on the default corpus's code "
          f"({time.perf_counter() - t0:.0f} s); fine-tuning: {s['ft_steps']} steps × {s['batch']}×{s['block']} tokens "
          f"on Python's documentation topics; torch threads {__import__('torch').get_num_threads()}\n")
    rows = {}
    for i, name in enumerate(['none', *METHODS]):
        a = argparse.Namespace(method=name, base=str(base), text=str(text), out=str(work/f'ft{i}'), cache=str(work/'cache'),
                               quick=args.quick, child=False)
        if args.quick: rows[name] = finetune(a); continue    # one process: quick, but no per-method peak memory
        cmd = [sys.executable, __file__, '--child', '--method', name, '--base', a.base, '--text', a.text, '--out', a.out, '--cache', a.cache,
               *[f"--{k.replace('_', '-')}={getattr(args, k)}" for k in SIZE_ARGS if getattr(args, k) is not None]]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(Path(__file__).resolve().parents[1])})
        if r.returncode != 0: sys.exit(f"{name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        rows[name] = json.loads(r.stdout.strip().splitlines()[-1])
    full = rows['full fine-tune']
    print('| method | trainable params | share | weights MiB | weights+grads+Adam MiB | vs full FT | peak RSS MiB | val bpb | s/step |')
    print('|---|---|---|---|---|---|---|---|---|')
    ref = rows.pop('none')
    print(f"| pretrained, not fine-tuned | 0 | 0% | {mb(ref['weights'])} | – | – | – | {ref['bpb']:.4f} | – |")
    for name, r in rows.items():
        rss = '–' if args.quick else f"{r['peak_rss_mb']:.0f}"
        print(f"| {name} | {r['trainable']:,} | {r['trainable'] / full['total']:.2%} | {mb(r['weights'])} | {mb(r['training'])} | "
              f"{r['training'] / full['training']:.3f}× | {rss} | {r['bpb']:.4f} | {r['s_per_step']:.2f} |")
    if not args.quick: print(f"\n(peak RSS of each fine-tuning process, Python and torch included: {ref['peak_rss_mb']:.0f} MiB for "
                             f"loading and evaluating the model alone)")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == '__main__':
    main()

"""Delta vs full checkpoints: bytes written per checkpoint over a 4-stage progressive (StackWise-like) run and over
LoRA / QLoRA fine-tunes with a frozen base.

Scenarios (the same training, saved twice: once with full checkpoints, once with delta checkpoints):

- **progressive, 4 stages**: a plain `gpt` grown a stack (`--k` blocks) at a time, appended on top: at stage s the
  model has (s+1)·k blocks, the lower s·k copied from stage s−1 and frozen; the new stack, the embeddings and the head
  train (AdamW rebuilt per stage, as a new stage does). `--saves` checkpoints per stage, `--steps` optimizer steps
  between two checkpoints. The **prepend** variant adds each new stack below the frozen ones, which move up (are
  renumbered): content addressing relative to a group's place keeps their objects.
- **LoRA, frozen base** and **QLoRA (NF4 base)**: the final-depth model with `bytropix.peft` adapters (rank 16) on every
  matrix; only the adapters train. `4·saves` checkpoints.

Bytes written by a checkpoint = its directory (weights or manifest, optimizer state, state.json) + the objects it
added to the store. Training data are random tokens: the bytes written do not depend on what is learned, only on
which weights move. Save time is the wall time of the save call (a shared machine makes it noisy).

    python benchmarks/checkpoint_store.py --quick     # tiny model: seconds (the smoke test)
    python benchmarks/checkpoint_store.py             # 256 wide, 2 blocks per stack (8 at the end), 3 saves per stage
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

import torch  # noqa: E402

import bytropix.models.gpt  # noqa: E402,F401  (registers `gpt`)
from bytropix.models.base import build_model  # noqa: E402
from bytropix.training.run import RunDir  # noqa: E402


def sizes(quick: bool, args) -> dict:
    if quick: return dict(n_embd=32, n_head=2, k=1, saves=2, steps=1, batch=2, block=16)
    return dict(n_embd=args.width, n_head=4, k=args.k, saves=args.saves, steps=args.steps, batch=8, block=64)


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob('*') if f.is_file())


class Saver:
    "Saves the same model into a full and a delta run directory; records bytes written and seconds per checkpoint."
    def __init__(self, root: Path):
        self.runs = {m: RunDir(root/m).create() for m in ('full', 'delta')}
        self.written = {m: [] for m in self.runs}
        self.seconds = {m: [] for m in self.runs}
        self.step = 0

    def save(self, model, opt) -> None:
        self.step += 1
        for mode, rd in self.runs.items():
            before = set(rd.store.objects())
            t = time.perf_counter()
            path = rd.save_checkpoint(self.step, model, delta=mode == 'delta', optimizer=opt, loader_state={'step': self.step})
            self.seconds[mode].append(time.perf_counter() - t)
            self.written[mode].append(dir_bytes(path) + rd.store.nbytes(set(rd.store.objects()) - before))


def train(model, opt, s: dict, vocab: int, gen: torch.Generator) -> None:
    for _ in range(s['steps']):
        x = torch.randint(0, vocab, (s['batch'], s['block'] + 1), generator=gen)
        loss = model(x[:, :-1], x[:, 1:]).loss
        opt.zero_grad(); loss.backward(); opt.step()


def adamw(model): return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def progressive(s: dict, root: Path, prepend: bool = False) -> Saver:
    "4 stages, each adding a stack of k blocks on top of the frozen ones (`prepend`: below them, renumbering them)."
    gen, saver, prev, k = torch.Generator().manual_seed(0), Saver(root), None, s['k']
    for stage in range(4):
        torch.manual_seed(stage)
        model = build_model('gpt', {'n_layer': (stage + 1) * s['k'], 'n_embd': s['n_embd'], 'n_head': s['n_head'],
                                    'vocab_size': 256, 'block_size': s['block']})
        new = range(0, k) if prepend else range(stage * k, (stage + 1) * k)   # the indices of the new stack
        if prev is not None:   # the trained stacks, embeddings and head carry over
            model.load_state_dict({n: v for n, v in prev.state_dict().items() if not n.startswith('blocks.')}, strict=False)
            old = [i for i in range(len(model.blocks)) if i not in new]
            for i, b in zip(old, prev.blocks): model.blocks[i].load_state_dict(b.state_dict())
        for i, b in enumerate(model.blocks): b.requires_grad_(i in new)
        opt = adamw(model)
        for _ in range(s['saves']):
            train(model, opt, s, 256, gen); saver.save(model, opt)
        prev = model
    return saver


def finetune(s: dict, root: Path, peft: dict) -> Saver:
    "The final-depth model with adapters over a frozen base; 4·saves checkpoints."
    from bytropix.peft import apply_peft
    gen, saver = torch.Generator().manual_seed(0), Saver(root)
    torch.manual_seed(0)
    model = build_model('gpt', {'n_layer': 4 * s['k'], 'n_embd': s['n_embd'], 'n_head': s['n_head'], 'vocab_size': 256,
                                'block_size': s['block']})
    apply_peft(model, peft)
    opt = adamw(model)
    for _ in range(4 * s['saves']):
        train(model, opt, s, 256, gen); saver.save(model, opt)
    return saver


def mib(b: float) -> str: return f"{b / 2**20:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='tiny sizes: seconds')
    ap.add_argument('--width', type=int, default=256, help='n_embd of the model')
    ap.add_argument('--k', type=int, default=2, help='blocks per stack (the final model has 4·k)')
    ap.add_argument('--saves', type=int, default=3, help='checkpoints per stage')
    ap.add_argument('--steps', type=int, default=5, help='optimizer steps between two checkpoints')
    args = ap.parse_args()
    s = sizes(args.quick, args)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix='bench-ckpt-store-'))
    t0 = time.perf_counter()
    try:
        results = {'progressive, 4 stages (frozen lower stacks)': progressive(s, work/'prog'),
                   'progressive, 4 stages, prepend (frozen upper stacks)': progressive(s, work/'prep', prepend=True),
                   'LoRA r=16, frozen fp32 base': finetune(s, work/'lora', {'r': 16, 'alpha': 32}),
                   'QLoRA r=16, frozen NF4 base': finetune(s, work/'qlora', {'method': 'qlora', 'r': 16, 'alpha': 32})}
        print(f"gpt, n_embd {s['n_embd']}, {s['k']} block(s) per stack, {4 * s['k']} blocks at the end; {s['saves']} "
              f"checkpoints per stage, {s['steps']} AdamW steps between checkpoints; torch threads 1\n")
        print('| run | checkpoints | full: MiB written | delta: MiB written | delta / full | full: MiB/ckpt, last | '
              'delta: MiB/ckpt, last | save s, full | save s, delta |')
        print('|---|---|---|---|---|---|---|---|---|')
        for name, sv in results.items():
            f, d = sv.written['full'], sv.written['delta']
            print(f"| {name} | {len(f)} | {mib(sum(f))} | {mib(sum(d))} | {sum(d) / sum(f):.3f} | {mib(f[-1])} | {mib(d[-1])} | "
                  f"{sum(sv.seconds['full']) / len(f):.3f} | {sum(sv.seconds['delta']) / len(d):.3f} |")
        prog = results['progressive, 4 stages (frozen lower stacks)']
        print('\nprogressive run, per stage (MiB written: full → delta):')
        n = s['saves']
        for st in range(4):
            f, d = prog.written['full'][st * n:(st + 1) * n], prog.written['delta'][st * n:(st + 1) * n]
            print(f"  stage {st + 1}: " + ', '.join(f"{mib(a)} → {mib(b)}" for a, b in zip(f, d)))
        print(f"total {time.perf_counter() - t0:.0f} s")
    finally: shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()

"""Where should hyperbolic geometry help? GPT vs WuBu at equal parameters and equal wall time on text with a known
hierarchy (and its exact entropy floor), on the default corpus, and an ablation of WuBu's options.

The hierarchical text is a probabilistic grammar of bracketed trees, generated offline and deterministically (seeded):
every tree opens a typed bracket (`( [ { <`; the child's type depends on its parent's), then holds a random sequence
of sub-trees, words and finally the matching close bracket; nesting goes 7 levels deep and opening gets rarer with
depth. Words are two syllables, the first drawn from a table of the parent's type, the second from the
grandparent's — a leaf depends on its path from the root. Every byte's probability given everything before it is
known to the generator (the stack of open brackets and the word prefix are functions of the past), so
`-mean log2 p` over the validation bytes is what the Bayes-optimal predictor scores on them: the floor, printed with
each table. (The models see `--block-size` bytes of context, the floor uses the whole history: a lower bound.)

Training is at **equal wall time**: every contender gets `--seconds` of training (forward, backward, optimizer step;
the data and evaluation not counted), and the contenders take turns — each step goes to the one with the least
training time so far — so a load spike on the shared CPU hits all of them alike. Time is the training thread's CPU
time (`time.thread_time`, one torch thread): on a CPU shared with other jobs the waits for a core would otherwise be
charged to whichever model was running; on an idle machine the two clocks agree. Same batches (same seed), AdamW with
the library's groups (`build_optimizer`), 30 warm-up steps then a cosine to lr/10 over the time budget, clipping 1.0.

    python benchmarks/hierarchical.py                      # hierarchy + default corpus, 90 s per model per table
    python benchmarks/hierarchical.py --ablation           # WuBu options on the hierarchy, 30 s per variant
    python benchmarks/hierarchical.py --compile            # the same, every model compiled as `train.compile: true` trains it
    python benchmarks/hierarchical.py --quick              # seconds: checks the script runs and prints its tables
"""
import argparse
import functools
import math
import os
import random
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

OPEN, CLOSE = '([{<', ')]}>'
SYLLABLES = ['ka', 'lo', 'mi', 'pu', 'ta', 'se', 'ri', 'no', 'be', 'du', 'fa', 'gi', 'ho', 'ju', 've', 'zo']


class Grammar:
    "The bracketed-tree grammar: child types given the parent's, words given the parent's and grandparent's types."
    def __init__(self, n_types: int = 4, max_depth: int = 7, seed: int = 0):
        rng = random.Random(seed)
        self.n, self.max_depth = n_types, max_depth
        def cat(k):   # a peaked random categorical (Dirichlet(0.6))
            w = [rng.gammavariate(0.6, 1.0) for _ in range(k)]; s = sum(w)
            return [x / s for x in w]
        self.child = [cat(n_types) for _ in range(n_types + 1)]               # index n: the root's "parent"
        self.first = [(rng.sample(SYLLABLES, 4), cat(4)) for _ in range(n_types)]
        self.second = [(rng.sample(SYLLABLES, 4), cat(4)) for _ in range(n_types + 1)]

    @functools.lru_cache(maxsize=None)
    def words(self, parent: int, grand: int) -> tuple:
        "The word distribution under a node of type `parent` whose parent has type `grand`: ((word, p), ...)."
        d: dict = {}
        (sa, pa), (sb, pb) = self.first[parent], self.second[grand]
        for a, p in zip(sa, pa):
            for b, q in zip(sb, pb): d[a + b] = d.get(a + b, 0.0) + p * q
        return tuple(sorted(d.items()))

    @functools.lru_cache(maxsize=None)
    def next_char(self, parent: int, grand: int, prefix: str) -> dict:
        "P(next character | the word so far) under that node (' ' ends the word)."
        ws = [(w, p) for w, p in self.words(parent, grand) if w.startswith(prefix)]
        mass = sum(p for _, p in ws)
        out: dict = {}
        for w, p in ws:
            ch = w[len(prefix)] if len(w) > len(prefix) else ' '
            out[ch] = out.get(ch, 0.0) + p / mass
        return out

    def slot(self, depth: int) -> tuple[float, float, float]:
        "P(open a sub-tree), P(a word), P(close) at a node of depth `depth` (the root has depth 1)."
        p_open = 0.0 if depth >= self.max_depth else 0.42 * 0.85 ** (depth - 1)
        p_close = 0.18 + 0.04 * depth
        return p_open, 1 - p_open - p_close, p_close


def generate(g: Grammar, n_bytes: int, seed: int) -> tuple[bytes, list[float]]:
    "About `n_bytes` of trees (one per line) and every byte's probability given all the bytes before it."
    rng = random.Random(seed)
    out: list[str] = []
    probs: list[float] = []
    def pick(items):
        r, acc = rng.random(), 0.0
        for k, p in items:
            acc += p
            if r < acc: return k
        return items[-1][0]
    while len(out) < n_bytes:
        t = pick(list(enumerate(g.child[g.n])))
        out.append(OPEN[t]); probs.append(g.child[g.n][t])
        stack = [t]
        while stack:
            depth, parent = len(stack), stack[-1]
            grand = stack[-2] if depth > 1 else g.n
            po, pw, pc = g.slot(depth)
            event = pick([('open', po), ('word', pw), ('close', pc)])
            if event == 'open':
                t = pick(list(enumerate(g.child[parent])))
                out.append(OPEN[t]); probs.append(po * g.child[parent][t]); stack.append(t)
            elif event == 'close':
                out.append(CLOSE[stack.pop()]); probs.append(pc)
            else:
                w = pick(list(g.words(parent, grand))) + ' '
                for i, ch in enumerate(w):
                    out.append(ch); probs.append(g.next_char(parent, grand, w[:i])[ch] * (pw if i == 0 else 1.0))
        out.append('\n'); probs.append(1.0)
    return ''.join(out).encode('ascii'), probs


# ---------------------------------------------------------------- data sources: (train sampler, validation batches)
class HierData:
    "Random training windows of the grammar's text; fixed consecutive validation windows and their floor."
    bytes_per_token = 1.0

    def __init__(self, n_train: int, n_val: int, block: int, batch: int, seed: int = 0):
        import torch
        g = Grammar(seed=seed)
        tr, _ = generate(g, n_train, seed + 1)
        va, p = generate(g, n_val, seed + 2)
        self.train_ids = torch.tensor(list(tr), dtype=torch.long)
        self.val_ids = torch.tensor(list(va), dtype=torch.long)
        self.nll_bits = torch.tensor([-math.log2(q) for q in p], dtype=torch.float64)
        self.block, self.batch, self.seed = block, batch, seed

    def train_iter(self):
        import torch
        gen = torch.Generator().manual_seed(self.seed)
        T, n = self.block, len(self.train_ids) - self.block - 1
        while True:
            i = torch.randint(0, n, (self.batch,), generator=gen)
            w = torch.stack([self.train_ids[j:j + T + 1] for j in i.tolist()])
            yield w[:, :-1], w[:, 1:]

    def val_batches(self, n_batches: int):
        import torch
        T = self.block
        starts = list(range(0, len(self.val_ids) - T - 1, T))[:n_batches * self.batch]
        for k in range(0, len(starts), self.batch):
            w = torch.stack([self.val_ids[j:j + T + 1] for j in starts[k:k + self.batch]])
            yield w[:, :-1], w[:, 1:]

    def floor(self, n_batches: int) -> float:
        "The optimal predictor's bits per byte on exactly the validation targets scored."
        T = self.block
        starts = list(range(0, len(self.val_ids) - T - 1, T))[:n_batches * self.batch]
        return float(sum(self.nll_bits[j + 1:j + T + 1].sum() for j in starts) / (len(starts) * T))


class CorpusData:
    "The embedded default corpus through the library's data pipeline (byte tokenizer)."
    def __init__(self, block: int, batch: int, seed: int = 0):
        from bytropix.data.datasets import DataConfig, prepare_data
        from bytropix.data.tokenizers import byte_tokenizer
        self.data = prepare_data(DataConfig(), byte_tokenizer(), block, batch, seed)
        self.bytes_per_token = self.data.bytes_per_token

    def train_iter(self): return self.data.train
    def val_batches(self, n_batches: int): return self.data.val_batches(n_batches)


# ---------------------------------------------------------------- equal-wall-time training, interleaved
def train_equal_time(contenders: list[dict], data, seconds: float, lr: float, val_batches: int, seed: int = 0,
                     warmup: int = 30, compile_: bool = False, eval_every: float = 0.0) -> list[dict]:
    """Train every contender for `seconds` of its own step time, taking turns (the least-trained goes next); return
    name, parameters, steps, tokens/s and validation bpb of each. `compile_`: each trains as `train.compile` would
    (`compile_for_training`); its first step, the compilation, is not charged to its time (printed apart).
    `eval_every`: also evaluate each contender every that many of its training seconds (not charged) and return its
    best validation bpb and when — what stopping at the best checkpoint would keep."""
    import torch
    import bytropix.models.gpt, bytropix.models.wubu  # noqa: F401  (register the architectures)
    from bytropix.config import TrainConfig
    from bytropix.core import seed_everything
    from bytropix.models.base import build_model
    from bytropix.training.evaluation import evaluate
    from bytropix.training.optim import build_optimizer, clip_gradients
    from bytropix.training.trainer import compile_for_training
    runs = []
    for c in contenders:
        seed_everything(seed)
        model = build_model(c['arch'], c['model'])
        tc = TrainConfig(lr=lr, weight_decay=0.1, clip_grad=1.0)
        opt = build_optimizer(model, tc, torch.device('cpu'))
        f = compile_for_training(model, torch.device('cpu'), print) if compile_ else model
        if compile_ and f is model: raise SystemExit("hierarchical.py --compile: torch.compile does not work here (above); rerun without --compile.")
        runs.append(dict(c, model=model, train_fn=f, compile_s=None, opt=opt, groups=[(g, g['lr']) for g in opt.param_groups], it=iter(data.train_iter()),
                         params=[p for p in model.parameters() if p.requires_grad], time=0.0, steps=0, tokens=0,
                         n_params=model.num_parameters(), best=(math.inf, 0.0), next_eval=eval_every or math.inf))
    val = list(data.val_batches(val_batches))
    while True:
        live = [r for r in runs if r['time'] < seconds]
        if not live: break
        r = min(live, key=lambda r: r['time'])
        frac = min(1.0, r['time'] / seconds)
        f = min(1.0, (r['steps'] + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g, base in r['groups']: g['lr'] = base * f
        x, y = next(r['it'])
        t0 = time.thread_time()
        w0 = time.perf_counter()
        loss = r['train_fn'](x, y).loss
        r['opt'].zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(r['params'], 1.0)
        r['opt'].step()
        if compile_ and r['compile_s'] is None: r['compile_s'] = time.perf_counter() - w0   # one-off: not charged
        else: r['time'] += time.thread_time() - t0
        r['steps'] += 1; r['tokens'] += x.numel()
        if r['time'] >= r['next_eval'] and r['time'] < seconds:
            r['next_eval'] += eval_every
            r['best'] = min(r['best'], (evaluate(r['model'], val, data.bytes_per_token)['bpb'], r['time']))
    out = []
    for r in runs:
        ev = evaluate(r['model'], val, data.bytes_per_token)
        best = min(r['best'], (ev['bpb'], r['time']))
        out.append(dict(name=r['name'], params=r['n_params'], steps=r['steps'], tokens_per_s=(r['tokens'] - (x.numel() if compile_ else 0)) / r['time'],
                        bpb=ev['bpb'], compile_s=r['compile_s'], **({'best_bpb': best[0], 'best_s': best[1]} if eval_every else {})))
        del r['model'], r['opt'], r['train_fn']
    return out


def gpt_like(common: dict, wubu_model: dict) -> dict:
    "The GPT contender with its SwiGLU hidden size (a multiple of 16) chosen to match WuBu's parameter count."
    import bytropix.models.gpt, bytropix.models.wubu  # noqa: F401  (register the architectures)
    from bytropix.models.base import build_model
    target = build_model('wubu', wubu_model).num_parameters()
    def model(h):   # ⅔·ratio·d = h − ½ rounds up to h
        return {**common, 'mlp_ratio': 1.5 * (h - 0.5) / common['n_embd'], 'multiple_of': 16}
    h = min(range(16, 4 * common['n_embd'] + 1, 16), key=lambda h: abs(build_model('gpt', model(h)).num_parameters() - target))
    return dict(name=f'GPT, SwiGLU hidden {h} (WuBu\'s size)', arch='gpt', model=model(h))


def table(title: str, rows: list[dict], floor: float | None = None, ref: str = 'GPT') -> None:
    base = next((r for r in rows if r['name'] == ref), rows[0])
    print(f"\n{title}")
    print('| model | parameters | steps | train tokens/CPU-s | validation bpb ↓ | bpb / GPT |' + (' bpb − floor |' if floor else ''))
    print('|---|---:|---:|---:|---:|---:|' + ('---:|' if floor else ''))
    for r in rows:
        print(f"| {r['name']} | {r['params']:,} | {r['steps']} | {r['tokens_per_s']:.0f} | {r['bpb']:.3f} | "
              f"{r['bpb'] / base['bpb']:.3f} |" + (f" {r['bpb'] - floor:+.3f} |" if floor else ''), flush=True)
    if floor: print(f"| floor (Bayes-optimal predictor, whole history) | | | | {floor:.3f} | | |")
    if 'best_bpb' in rows[0]:
        print('best validation bpb during training (evaluated every --eval-every training seconds, and at the end): '
              + ', '.join(f"{r['name']} {r['best_bpb']:.3f} after {r['best_s']:.0f} s" for r in rows)
              + ''.join(f" — {r['name']} / {base['name']} {r['best_bpb'] / base['best_bpb']:.3f}" for r in rows if r is not base))
    if rows[0].get('compile_s') is not None:
        print('compiled (train.compile); the first step, compiling, not charged: ' + ', '.join(f"{r['name']} {r['compile_s']:.0f} s" for r in rows))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=float, default=90.0, help='training seconds per model (hierarchy and corpus tables)')
    ap.add_argument('--ablation', action='store_true', help='run the WuBu ablation on the hierarchy instead')
    ap.add_argument('--ablation-seconds', type=float, default=30.0)
    ap.add_argument('--skip-corpus', action='store_true', help='only the hierarchy table')
    ap.add_argument('--skip-hierarchy', action='store_true', help='only the default corpus table')
    ap.add_argument('--gpt-like-wubu', action='store_true',
                    help="add a third contender: the GPT with its MLP narrowed to WuBu's parameter count")
    ap.add_argument('--train-bytes', type=int, default=400_000)
    ap.add_argument('--val-bytes', type=int, default=40_000)
    ap.add_argument('--batch-size', type=int, default=8)
    ap.add_argument('--block-size', type=int, default=128)
    ap.add_argument('--val-batches', type=int, default=24)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--n-layer', type=int, default=4)
    ap.add_argument('--n-embd', type=int, default=128)
    ap.add_argument('--level-dims', type=int, nargs='+', default=[96, 64, 32])
    ap.add_argument('--level-mlp-ratio', type=float, default=None, help="WuBu's level MLP hidden / level dim (default: the config's)")
    ap.add_argument('--boundary-points', type=int, nargs='+', default=None, help='WuBu landmarks per level (default: the config\'s)')
    ap.add_argument('--wubu-option', action='append', default=[], metavar='KEY=VALUE',
                    help="any other WuBu model field, e.g. --wubu-option learnable_curvature=false (YAML values; repeatable)")
    ap.add_argument('--threads', type=int, default=int(os.environ.get('BENCH_THREADS', 1)))
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--eval-every', type=float, default=0.0, help='also evaluate every this many training seconds and print each model\'s best bpb')
    ap.add_argument('--compile', action='store_true', help='train every model compiled, as train.compile does (compilation not charged)')
    ap.add_argument('--quick', action='store_true', help='tiny sizes (seconds): checks that the script runs and prints its tables')
    a = ap.parse_args(argv)
    if a.eval_every < 0: ap.error(f"--eval-every must be 0 (off) or a positive number of seconds, got {a.eval_every}")
    if a.level_mlp_ratio is not None and a.level_mlp_ratio <= 0: ap.error(f"--level-mlp-ratio must be positive, got {a.level_mlp_ratio}")
    if a.boundary_points is not None and min(a.boundary_points) < 0: ap.error(f"--boundary-points must be 0 or more, got {a.boundary_points}")
    if a.skip_hierarchy and (a.skip_corpus or a.ablation):
        ap.error("--skip-hierarchy leaves nothing to run with " + ('--ablation (it runs on the hierarchy)' if a.ablation else '--skip-corpus'))
    from bytropix.core import parse_value
    extra = {}
    for opt in a.wubu_option:
        key, eq, value = opt.partition('=')
        if not eq or not key.strip(): ap.error(f"--wubu-option takes KEY=VALUE (a WuBu model field), got {opt!r}")
        extra[key.strip()] = parse_value(value)   # as the CLI reads --model.KEY VALUE
    if a.quick:   # explicit flags still win over the quick sizes
        ap.set_defaults(seconds=1.5, ablation_seconds=0.5, train_bytes=6000, val_bytes=1500, batch_size=2, block_size=32,
                        val_batches=2, n_layer=1, n_embd=32, level_dims=[16, 8])
        a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    T, nh = a.block_size, 4 if a.n_embd % 4 == 0 else 2
    common = dict(n_layer=a.n_layer, n_head=nh, n_embd=a.n_embd, vocab_size=256, block_size=T)
    gpt = dict(name='GPT', arch='gpt', model=common)
    wk = {'level_dims': a.level_dims, **({'level_mlp_ratio': a.level_mlp_ratio} if a.level_mlp_ratio is not None else {}),
          **({'boundary_points': a.boundary_points} if a.boundary_points is not None else {}), **extra}
    wubu = lambda name, **kw: dict(name=name, arch='wubu', model={**common, **wk, **kw})
    pair = [gpt, wubu('WuBu')] + ([gpt_like(common, wubu('WuBu')['model'])] if a.gpt_like_wubu else [])
    t0 = time.time()
    hier = HierData(a.train_bytes, a.val_bytes, T, a.batch_size, a.seed)
    floor = hier.floor(a.val_batches)
    print(f"hierarchical text: {len(hier.train_ids):,} training bytes, {len(hier.val_ids):,} validation bytes "
          f"({time.time() - t0:.0f} s to generate); floor {floor:.3f} bpb; sample:\n"
          + bytes(hier.val_ids[:160].tolist()).decode('ascii'), flush=True)
    res: dict = {'floor': floor}
    if a.ablation:
        L = a.level_dims
        variants = [gpt, wubu('WuBu (default: 3 levels)'),
                    wubu('1 level', level_dims=L[:1]), wubu('2 levels', level_dims=L[:2]),
                    wubu('4 levels', level_dims=L + [max(4, L[-1] // 2)]),
                    wubu('fixed curvature', learnable_curvature=False), wubu('no rotations', rotation='identity'),
                    wubu('no boundary points', boundary_points=[0]), wubu('hyperbolic mixing (Möbius MLP)', intra='mobius'),
                    wubu('hyperbolic attention + rotary', attention='hyperbolic'), wubu('hyperbolic RMSNorm', level_norm='hyperbolic')]
        variants += pair[2:]   # --gpt-like-wubu: the GPT of the default WuBu's size
        rows = train_equal_time(variants, hier, a.ablation_seconds, a.lr, a.val_batches, a.seed, compile_=a.compile, eval_every=a.eval_every)
        table(f"WuBu ablation on the hierarchy, {a.ablation_seconds:g} CPU-seconds of training each (equal time):", rows, floor)
        res['ablation'] = rows
        return res
    if not a.skip_hierarchy:
        rows = train_equal_time(pair, hier, a.seconds, a.lr, a.val_batches, a.seed, compile_=a.compile, eval_every=a.eval_every)
        table(f"Hierarchical grammar, {a.seconds:g} CPU-seconds of training each (equal time):", rows, floor)
        g, w = rows[:2]
        print(f"WuBu / GPT bpb on the hierarchy: {w['bpb'] / g['bpb']:.3f} (target ≤ 1.000: "
              f"{'met' if w['bpb'] <= g['bpb'] else 'NOT met'})")
        res['hierarchy'] = rows
    if not a.skip_corpus:
        rows = train_equal_time(pair, CorpusData(T, a.batch_size, a.seed), a.seconds, a.lr, a.val_batches, a.seed, compile_=a.compile, eval_every=a.eval_every)
        table(f"Default corpus, {a.seconds:g} CPU-seconds of training each (equal time):", rows)
        g, w = rows[:2]
        print(f"WuBu / GPT bpb on the default corpus: {w['bpb'] / g['bpb']:.3f} (target ≤ 1.030: "
              f"{'met' if w['bpb'] <= 1.03 * g['bpb'] else 'NOT met'})")
        res['corpus'] = rows
    return res


if __name__ == '__main__':
    from bytropix.core import ConfigError
    try: main()
    except ConfigError as e: sys.exit(f"hierarchical.py: {e}")   # a model option that does not fit: one line

"""Encoder probes built from the embedded corpus (no download): how much a BERT-style encoder's text embeddings know,
against a GPT's hidden states and a bag-of-bytes baseline.

Three tasks, from the interpreter's own documentation and standard library (`bytropix.data.corpus`):
1. prose vs code: a documentation paragraph or a standard-library function (first 128 bytes), balanced;
2. module: which of the 20 standard-library packages with the most documented functions a function comes from;
3. retrieval: a function's docstring against its code (docstring removed): top-1 accuracy of cosine similarity among
   `--pairs` candidates (zero-shot, no training; chance is 1/pairs).
Tasks 1 and 2 are linear probes: logistic regression (L2, LBFGS) on standardised, mean-pooled final hidden states,
trained on 70 % of the examples and scored on the other 30 % (a stable hash of the text splits them).

Models: `arch: encoder` trained with `task: mlm` and a causal GPT trained with `task: lm`, same trunk size, same
steps (`bytropix.training.trainer.Trainer`); an untrained encoder and byte histograms as references.

    python benchmarks/encoder_tasks.py                 # 1500 training steps each, configs/default.yaml's trunk
    python benchmarks/encoder_tasks.py --quick         # tiny sizes: checks that the script runs
"""
import argparse
import ast
import hashlib
import os
import sys
import tempfile
from collections import Counter

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

import torch  # noqa: E402


def functions(limit_files: int | None = None) -> list[dict]:
    "Documented functions of the standard library: {'package', 'code' (docstring removed), 'doc'}."
    from bytropix.data.corpus import module_name, read_source, stdlib_dir, stdlib_sources
    out = []
    for rel in stdlib_sources()[:limit_files]:
        try: src = read_source(stdlib_dir()/rel); tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, OSError): continue
        lines = src.splitlines()
        pkg = module_name(rel).split('.')[0]
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)): continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 20 or len(node.body) < 2: continue
            body = '\n'.join(lines[node.body[1].lineno - 1:node.end_lineno])   # without the docstring
            code = f"def {node.name}(...):\n{body}"
            out.append({'package': pkg, 'code': code[:400], 'doc': doc.strip()[:400]})
    return out


def prose(n: int) -> list[str]:
    "Documentation paragraphs of at least 80 characters."
    from pydoc_data.topics import topics
    paras = [p.strip() for k in sorted(topics) for p in topics[k].split('\n\n') if len(p.strip()) >= 80 and '>>>' not in p]
    return paras[:n]


def split(text: str) -> bool:
    "True for the training part (70 %), by a stable hash of the text."
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 10 < 7


@torch.no_grad()
def embed(hidden, tokenizer, texts: list[str], block: int) -> torch.Tensor:
    "Mean-pooled `hidden(ids)` states per text (grouped by length: no padding)."
    seqs = [tokenizer.encode(t)[:block] or [0] for t in texts]
    out, groups = [None] * len(seqs), {}
    for i, s in enumerate(seqs): groups.setdefault(len(s), []).append(i)
    for idx in groups.values():
        for j in range(0, len(idx), 64):
            c = idx[j:j + 64]
            h = hidden(torch.tensor([seqs[i] for i in c]))
            for i, v in zip(c, h.mean(1)): out[i] = v
    return torch.stack(out)


def byte_histogram(texts: list[str]) -> torch.Tensor:
    return torch.stack([torch.bincount(torch.tensor(list(t.encode()) or [0]), minlength=256).float() / max(1, len(t.encode()))
                        for t in texts])


def probe(feats: torch.Tensor, labels: list, train: list[bool], l2: float = 1e-3, iters: int = 200) -> float:
    "Test accuracy of an L2-regularised logistic regression on standardised features."
    classes = sorted(set(labels)); y = torch.tensor([classes.index(l) for l in labels])
    tr = torch.tensor(train)
    mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-6
    x = (feats - mu) / sd
    w = torch.zeros(x.shape[1], len(classes), requires_grad=True); b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn='strong_wolfe')
    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[tr] @ w + b, y[tr]) + l2 * (w ** 2).sum()
        loss.backward(); return loss
    opt.step(closure)
    with torch.no_grad(): return float(((x[~tr] @ w + b).argmax(1) == y[~tr]).float().mean())


def retrieval(q: torch.Tensor, d: torch.Tensor) -> float:
    "Top-1 accuracy of cosine similarity: query i should find document i."
    q, d = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(d, dim=1)
    return float(((q @ d.T).argmax(1) == torch.arange(len(q))).float().mean())


def train(arch: str, task: str, args, out: str):
    from bytropix.config import load_config
    from bytropix.training.trainer import Trainer
    model = dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, causal=task == 'lm')
    run = load_config(None, {'arch': arch, 'task': task, 'out_dir': out, 'model': model,
                             'data': dict(max_train_tokens=args.max_train_tokens),
                             'train': dict(steps=args.steps, batch_size=args.batch_size, block_size=args.block_size,
                                           warmup_steps=min(100, args.steps // 10), eval_interval=0, save_interval=0,
                                           sample_interval=0, tensorboard=False, eval_batches=2)})
    tr = Trainer(run, log=None, progress=False); tr.fit()
    return tr.model.eval(), tr.tokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help="tiny sizes and few steps (a smoke test, not a measurement)")
    ap.add_argument('--steps', type=int, default=1500)
    ap.add_argument('--n-layer', type=int, default=4); ap.add_argument('--n-embd', type=int, default=128)
    ap.add_argument('--n-head', type=int, default=4)
    ap.add_argument('--batch-size', type=int, default=16); ap.add_argument('--block-size', type=int, default=128)
    ap.add_argument('--max-train-tokens', type=int, default=None)
    ap.add_argument('--examples', type=int, default=600, help="examples per class of task 1 (task 2: up to this many per package)")
    ap.add_argument('--pairs', type=int, default=200)
    args = ap.parse_args()
    limit = None
    if args.quick:
        args.steps, args.n_layer, args.n_embd, args.n_head, args.batch_size, args.block_size = 3, 1, 32, 2, 4, 32
        args.max_train_tokens, args.examples, args.pairs, limit = 50_000, 10, 10, 25
    from bytropix.models.base import build_model
    torch.manual_seed(0)
    fns = functions(limit)
    g = torch.Generator().manual_seed(0)
    fns = [fns[i] for i in torch.randperm(len(fns), generator=g).tolist()]
    # task 1: prose vs code
    code = [f['code'][:128] for f in fns[:args.examples]]
    doc = [p[:128] for p in prose(len(code))]
    t1 = doc + code; y1 = ['prose'] * len(doc) + ['code'] * len(code)
    # task 2: the 20 packages with the most documented functions
    top = [p for p, _ in Counter(f['package'] for f in fns).most_common(20)]
    per = Counter(); t2, y2 = [], []
    for f in fns:
        if f['package'] in top and per[f['package']] < args.examples: t2.append(f['code'][:128]); y2.append(f['package']); per[f['package']] += 1
    # task 3: docstring ↔ code
    pairs = fns[:args.pairs]
    tmp = tempfile.mkdtemp(prefix='bytropix-enc-')
    enc, tok = train('encoder', 'mlm', args, os.path.join(tmp, 'enc'))
    gpt, _ = train('gpt', 'lm', args, os.path.join(tmp, 'gpt'))
    fresh = build_model('encoder', enc.config).eval()

    def gpt_hidden(ids):
        x = gpt._embed(ids, 0)
        for b in gpt.blocks: x = b(x)
        return gpt.ln_f(x)
    models = {'encoder (MLM)': enc.hidden_states, 'GPT (causal LM), mean of hidden states': gpt_hidden,
              'encoder, untrained': fresh.hidden_states}
    print(f"\n## Encoder probes: {len(t1)} prose/code texts, {len(t2)} functions of {len(top)} packages, {len(pairs)} "
          f"docstring/code pairs; models: {args.n_layer} layers, n_embd {args.n_embd}, {args.steps} training steps\n")
    print("| features | prose vs code (probe acc.) | package of a function, top 20 (probe acc.) | docstring→code retrieval (top-1) |")
    print("|---|---|---|---|")
    sp1, sp2 = [split(t) for t in t1], [split(t) for t in t2]
    for name, h in models.items():
        e1, e2 = embed(h, tok, t1, args.block_size), embed(h, tok, t2, args.block_size)
        r = retrieval(embed(h, tok, [p['doc'] for p in pairs], args.block_size), embed(h, tok, [p['code'] for p in pairs], args.block_size))
        print(f"| {name} | {probe(e1, y1, sp1):.3f} | {probe(e2, y2, sp2):.3f} | {r:.3f} |")
    r = retrieval(byte_histogram([p['doc'] for p in pairs]), byte_histogram([p['code'] for p in pairs]))
    print(f"| bag of bytes (histogram) | {probe(byte_histogram(t1), y1, sp1):.3f} | {probe(byte_histogram(t2), y2, sp2):.3f} | {r:.3f} |")
    common = Counter(l for l, s in zip(y2, sp2) if not s).most_common(1)[0][1] / max(1, sum(not s for s in sp2))
    print(f"| (chance: majority class / 1 of N) | 0.5 | {common:.3f} | {1 / len(pairs):.3f} |")
    print(f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == '__main__':
    main()

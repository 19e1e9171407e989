"""Poincaré vs Euclidean embeddings of a tree (or any graph): mean average precision and distortion in 2, 5, 10 dims.

Two objectives, each trained for both geometries with the same initialisation scale, steps and learning rate:

* reconstruction (Nickel & Kiela 2017, *Poincaré Embeddings*): for each relation (u, v),
  -log( e^{-d(u,v)} / sum_{v' in negatives(u) + {v}} e^{-d(u,v')} ) with sampled non-related nodes as negatives;
  evaluated by the mean average precision (MAP) and mean rank of the relations ranked by embedding distance. The
  relations are the tree's transitive closure (every ancestor-descendant pair, as Nickel & Kiela's WordNet noun
  hierarchy), or the given graph's edges (`--edges`; add `--closure` for a DAG of (parent, child) edges);
* distortion: mean over random node pairs of (d_emb(u,v) / (a d_graph(u,v)) - 1)^2 with a learned scale a of the
  graph metric; evaluated by the average distortion mean |d_emb/(a d_graph) - 1| over all connected pairs
  (0 = isometric up to scale).

Poincaré embeddings are `bytropix.layers.hyperbolic.HyperbolicEmbedding` (geoopt ManifoldParameters on the ball,
trained with Riemannian Adam); Euclidean ones are plain tensors trained with Adam. Trees grow exponentially, like
hyperbolic space, so the Poincaré ball should win clearly at low dimension (Nickel & Kiela, WordNet nouns: MAP 0.823
vs 0.024 at 5 dimensions). A Poincaré-disk picture of the 2-D embeddings (edges drawn as geodesics) is saved as PNG.

    python benchmarks/hyperbolic_vs_euclidean.py                          # balanced tree, branching 4, depth 5
    python benchmarks/hyperbolic_vs_euclidean.py --edges my_graph.tsv     # any edge list: one 'u v' pair per line
    python benchmarks/hyperbolic_vs_euclidean.py --dims 2 5 10 --steps 1500 --png nbs/images/poincare_tree.png
"""
import argparse
import json
import math
import os
import sys
import time
from collections import deque

import torch
import torch.nn.functional as F

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)
from bytropix.core import DataError, seed_everything
from bytropix.geometry import cdist, dist, mobius_add, mobius_scalar_mul
from bytropix.layers.hyperbolic import HyperbolicEmbedding


# -- graphs --------------------------------------------------------------------------------------------------------
def balanced_tree(branching: int, depth: int) -> tuple[list[str], list[tuple[int, int]]]:
    "Nodes and (parent, child) edges of a balanced tree."
    names, edges, frontier = ['0'], [], [0]
    for _ in range(depth):
        nxt = []
        for p in frontier:
            for _ in range(branching):
                names.append(str(len(names))); edges.append((p, len(names) - 1)); nxt.append(len(names) - 1)
        frontier = nxt
    return names, edges


def read_edges(path: str) -> tuple[list[str], list[tuple[int, int]]]:
    "An edge list file: one pair per line, separated by whitespace, comma or tab; '#' starts a comment."
    ids, edges = {}, set()
    with open(path, encoding='utf-8') as f:
        for ln, line in enumerate(f, 1):
            line = line.split('#', 1)[0].strip()
            if not line: continue
            parts = line.replace(',', ' ').split()
            if len(parts) < 2: raise DataError(f"{path}:{ln}: expected 'u v', got {line!r}.")
            u, v = (ids.setdefault(p, len(ids)) for p in parts[:2])
            if u != v: edges.add((min(u, v), max(u, v)))
    if not edges: raise DataError(f"{path} holds no edges; write one 'u v' pair per line.")
    names = [None] * len(ids)
    for k, i in ids.items(): names[i] = k
    return names, sorted(edges)


def transitive_closure(n: int, edges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    "Every (ancestor, descendant) pair of a DAG given as (parent, child) edges."
    children = [[] for _ in range(n)]
    for u, v in edges: children[u].append(v)
    out = []
    for s in range(n):
        seen, q = {s}, deque(children[s])
        while q:
            w = q.popleft()
            if w in seen: continue
            seen.add(w); out.append((s, w)); q.extend(children[w])
    return out


def graph_distances(n: int, edges: list[tuple[int, int]]) -> torch.Tensor:
    "All-pairs shortest-path lengths by BFS (inf for disconnected pairs)."
    adj = [[] for _ in range(n)]
    for u, v in edges: adj[u].append(v); adj[v].append(u)
    D = torch.full((n, n), math.inf, dtype=torch.float64)
    for s in range(n):
        D[s, s] = 0; q = deque([s])
        while q:
            u = q.popleft()
            for w in adj[u]:
                if D[s, w] == math.inf: D[s, w] = D[s, u] + 1; q.append(w)
    return D


# -- embeddings ----------------------------------------------------------------------------------------------------
class Embedding:
    "One embedding of n nodes in `dim` dimensions, Poincaré or Euclidean, with its optimiser."
    def __init__(self, kind: str, n: int, dim: int, lr: float, init: float):
        import geoopt
        self.kind, self.lr = kind, lr
        if kind == 'poincare':
            self.emb = HyperbolicEmbedding(n, dim, c=1.0, std=init).double()
            self.opt = geoopt.optim.RiemannianAdam(self.emb.parameters(), lr=lr)
        else:
            self.w = torch.nn.Parameter(torch.randn(n, dim, dtype=torch.float64) * init)
            self.opt = torch.optim.Adam([self.w], lr=lr)

    def points(self) -> torch.Tensor:
        return self.emb.points() if self.kind == 'poincare' else self.w

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return dist(x, y) if self.kind == 'poincare' else torch.linalg.vector_norm(x - y, dim=-1)

    def all_distances(self) -> torch.Tensor:
        p = self.points()
        return cdist(p, p) if self.kind == 'poincare' else torch.cdist(p, p)


def train_reconstruction(e: Embedding, edges: torch.Tensor, adj: torch.Tensor, steps: int, negs: int,
                         g: torch.Generator, batch: int = 2048) -> None:
    "Nickel & Kiela's loss on `batch` random (directed) relations per step, `negs` sampled non-neighbours each."
    n = adj.shape[0]
    U, W = torch.cat([edges[:, 0], edges[:, 1]]), torch.cat([edges[:, 1], edges[:, 0]])
    for step in range(steps):
        k = torch.randint(0, len(U), (min(batch, len(U)),), generator=g)
        u, v = U[k], W[k]
        cand = torch.randint(0, n, (len(u), negs), generator=g)
        cand = torch.cat([v[:, None], cand], 1)                              # the true neighbour first
        invalid = adj[u[:, None], cand]; invalid[:, 0] = False                  # neighbours are not negatives
        p = e.points()
        d = e.pairwise(p[u][:, None, :], p[cand])
        loss = F.cross_entropy((-d).masked_fill(invalid, float('-inf')), torch.zeros(len(u), dtype=torch.long))
        for grp in e.opt.param_groups:                                           # NK's burn-in: a gentler start
            grp['lr'] = e.lr / 10 if step < steps // 10 else e.lr
        e.opt.zero_grad(); loss.backward(); e.opt.step()


def train_distortion(e: Embedding, D: torch.Tensor, steps: int, batch: int, g: torch.Generator) -> None:
    """Mean (d_emb(u,v) / (a d_graph(u,v)) - 1)^2 over `batch` random connected pairs per step, with a learned scale
    a > 0 of the graph metric (hyperbolic space is not scale-invariant: trees embed with low distortion once their
    edges are long enough, Sala et al. 2018; for Euclidean embeddings the scale is redundant)."""
    iu = torch.triu_indices(D.shape[0], D.shape[0], 1)
    ok = torch.isfinite(D[iu[0], iu[1]])
    pu, pv = iu[0][ok], iu[1][ok]
    dg = D[pu, pv]
    e.log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt_s = torch.optim.Adam([e.log_scale], lr=e.lr)
    for _ in range(steps):
        k = torch.randint(0, len(pu), (min(batch, len(pu)),), generator=g)
        p = e.points()
        de = e.pairwise(p[pu[k]], p[pv[k]])
        loss = ((de / (e.log_scale.exp() * dg[k]) - 1) ** 2).mean()
        e.opt.zero_grad(); opt_s.zero_grad(); loss.backward(); e.opt.step(); opt_s.step()


@torch.no_grad()
def evaluate(e: Embedding, adj: torch.Tensor, D: torch.Tensor) -> dict:
    "MAP and mean rank of the edges (reconstruction), and the average distortion."
    de = e.all_distances()
    n = adj.shape[0]
    de_nodiag = de + torch.diag(torch.full((n,), math.inf, dtype=de.dtype))
    aps, ranks = [], []
    for u in range(n):
        nb = adj[u].nonzero().flatten()
        nb = nb[nb != u]
        if len(nb) == 0: continue
        order = de_nodiag[u].argsort()
        rank_of = torch.empty(n, dtype=torch.long); rank_of[order] = torch.arange(1, n + 1)
        r = rank_of[nb].sort().values.double()
        aps.append((torch.arange(1, len(r) + 1, dtype=torch.float64) / r).mean().item())
        non = ~adj[u]; non[u] = False
        for v in nb: ranks.append(1 + int((de[u][non] < de[u, v]).sum()))
    mask = torch.isfinite(D) & (D > 0)
    scale = float(getattr(e, 'log_scale', torch.zeros(())).exp())
    distortion = ((de[mask] / (scale * D[mask])) - 1).abs().mean().item()
    return {'map': sum(aps) / len(aps), 'mean_rank': sum(ranks) / len(ranks), 'distortion': distortion, 'scale': scale}


# -- the picture ---------------------------------------------------------------------------------------------------
def geodesic(x: torch.Tensor, y: torch.Tensor, n: int = 24) -> torch.Tensor:
    "Points along the Poincaré geodesic from x to y: x ⊕ (t ⊗ (-x ⊕ y)), t in [0, 1]."
    t = torch.linspace(0, 1, n, dtype=x.dtype)[:, None]
    return mobius_add(x.expand(n, -1), mobius_scalar_mul(t, mobius_add(-x, y).expand(n, -1)))


def draw(pics: dict, edges: list[tuple[int, int]], depth_of: torch.Tensor, path: str) -> None:
    "A 2x2 figure: rows = objective (reconstruction, distortion), columns = geometry (Poincaré disk, Euclidean plane)."
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 10.6))
    for ax, ((objective, kind), pts) in zip(axes.flat, sorted(pics.items(), key=lambda kv: (kv[0][0] != 'reconstruction', kv[0][1] != 'poincare'))):
        pts = pts.detach()
        if kind == 'poincare':
            ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color='k', lw=1))
            for u, v in edges:
                g = geodesic(pts[u], pts[v]); ax.plot(g[:, 0], g[:, 1], color='0.6', lw=0.5, zorder=1)
            ax.set_xlim(-1.05, 1.05); ax.set_ylim(-1.05, 1.05)
        else:
            for u, v in edges: ax.plot(pts[[u, v], 0], pts[[u, v], 1], color='0.6', lw=0.5, zorder=1)
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=depth_of.numpy(), cmap='viridis', s=9, zorder=2)
        ax.set_aspect('equal'); ax.set_xticks([]); ax.set_yticks([])
        ax.set_title(f"{'Poincaré disk' if kind == 'poincare' else 'Euclidean plane'}, {objective} objective (2-D)")
    fig.colorbar(sc, ax=axes, shrink=0.6, label='depth (hops from node 0)')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches='tight'); plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--edges', help="edge-list file ('u v' per line); default: a balanced tree")
    ap.add_argument('--branching', type=int, default=4)
    ap.add_argument('--depth', type=int, default=5)
    ap.add_argument('--dims', type=int, nargs='+', default=[2, 5, 10])
    ap.add_argument('--steps', type=int, default=1000, help='optimiser steps per embedding and objective')
    ap.add_argument('--lr', type=float, default=0.1)
    ap.add_argument('--negatives', type=int, default=50)
    ap.add_argument('--closure', action=argparse.BooleanOptionalAction, default=None,
                    help='reconstruct the transitive closure, edges read as (parent, child) (default: on for the '
                         'synthetic tree, off for --edges)')
    ap.add_argument('--batch', type=int, default=2048, help='relations per step of the reconstruction objective')
    ap.add_argument('--pair-batch', type=int, default=8192, help='node pairs per step of the distortion objective')
    ap.add_argument('--init', type=float, default=1e-3, help='std of the initial (tangent) coordinates')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=int(os.environ.get('BENCH_THREADS', 1)))
    ap.add_argument('--png', default='hyperbolic_vs_euclidean.png', help='Poincaré-disk picture of the 2-D embeddings')
    ap.add_argument('--json', help='also write the results here')
    ap.add_argument('--quick', action='store_true', help='tiny sizes (seconds): checks that the script runs and prints its tables')
    a = ap.parse_args(argv)
    if a.quick:   # explicit flags still win over the quick sizes
        ap.set_defaults(**dict(branching=2, depth=3, dims=[2], steps=20, negatives=5, batch=64, pair_batch=64, png=None)); a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    names, edges = read_edges(a.edges) if a.edges else balanced_tree(a.branching, a.depth)
    n = len(names)
    D = graph_distances(n, edges)
    closure = a.closure if a.closure is not None else not a.edges
    rel = transitive_closure(n, edges) if closure else edges
    E = torch.tensor(rel, dtype=torch.long)
    adj = torch.zeros(n, n, dtype=torch.bool); adj[E[:, 0], E[:, 1]] = True; adj[E[:, 1], E[:, 0]] = True
    src = f"edges from {a.edges}" if a.edges else f"balanced tree (branching {a.branching}, depth {a.depth})"
    what = f"its transitive closure ({len(rel)} ancestor-descendant pairs)" if closure else f"its {len(rel)} edges"
    print(f"{src}: {n} nodes, {len(edges)} edges; reconstruction of {what}; {a.steps} steps per run, lr {a.lr}, "
          f"{a.negatives} negatives\n")
    rows, pics = [], {}
    t_start = time.time()
    for dim in a.dims:
        for kind in ('poincare', 'euclidean'):
            seed_everything(a.seed)
            g = torch.Generator().manual_seed(a.seed)
            er = Embedding(kind, n, dim, a.lr, a.init)
            train_reconstruction(er, E, adj, a.steps, a.negatives, g, a.batch)
            rec = evaluate(er, adj, D)
            seed_everything(a.seed)
            ed = Embedding(kind, n, dim, a.lr, a.init)
            train_distortion(ed, D, a.steps, a.pair_batch, g)
            dis = evaluate(ed, adj, D)
            rows.append({'dim': dim, 'geometry': kind, 'map': rec['map'], 'mean_rank': rec['mean_rank'],
                         'distortion': dis['distortion'], 'map_distortion_objective': dis['map']})
            if dim == 2: pics[('reconstruction', kind)], pics[('distortion', kind)] = er.points(), ed.points()
            print(f"  dim {dim:3d} {kind:9s}  MAP {rec['map']:.3f}  mean rank {rec['mean_rank']:7.2f}  "
                  f"distortion {dis['distortion']:.3f}   ({time.time() - t_start:.0f} s)", flush=True)
    print('\n| dim | geometry | MAP ↑ | mean rank ↓ | avg. distortion ↓ | MAP (distortion objective) ↑ |')
    print('|---:|---|---:|---:|---:|---:|')
    for r in rows:
        print(f"| {r['dim']} | {'Poincaré' if r['geometry'] == 'poincare' else 'Euclidean'} | {r['map']:.3f} | "
              f"{r['mean_rank']:.2f} | {r['distortion']:.3f} | {r['map_distortion_objective']:.3f} |")
    verdict = []
    for d in a.dims:
        p, e = (next(r for r in rows if r['dim'] == d and r['geometry'] == k) for k in ('poincare', 'euclidean'))
        verdict.append(f"dim {d}: Poincaré {'wins' if p['map'] > e['map'] else 'loses'} on MAP "
                       f"({p['map']:.3f} vs {e['map']:.3f}), {'wins' if p['distortion'] < e['distortion'] else 'loses'} "
                       f"on distortion ({p['distortion']:.3f} vs {e['distortion']:.3f})")
    print('\n' + '\n'.join(verdict))
    if 2 in a.dims and a.png:
        draw(pics, edges, D[0].clamp_max(1e9), a.png)
        print(f"\npicture: {a.png}")
    out = {'graph': src, 'nodes': n, 'edges': len(edges), 'closure': closure, 'steps': a.steps, 'rows': rows}
    if a.json:
        with open(a.json, 'w') as f: json.dump(out, f, indent=2)
    return out


if __name__ == '__main__':
    main()

"""Autoregressive GPT vs masked-diffusion LM (MDLM) at equal parameters and equal training compute, same data and windows.

Both models are configs/default.yaml's GPT trunk (4 layers, n_embd 128, byte tokenizer unless `--tokenizer`, embedded corpus): the AR one
causal with `task: lm`, the MDLM one bidirectional (`causal: false`) with `task: mdlm` (log-linear schedule) and one more
vocabulary id for [MASK]. They train with the same optimizer, schedule, batch size, block size and number of steps
(the same forward/backward cost per step), through `bytropix.training.trainer.Trainer`.

Reported:
1. validation bits per byte on the same windows: the AR model's exact NLL, the MDLM's ELBO (an upper bound: stratified
   Monte Carlo over t with fixed masks, its standard error printed), and the perplexity ratio exp(L_MDLM − L_AR) — the
   MDLM paper reports about 1.14× on LM1B (23.00 vs 20.09); the aim here is ≤ 1.15×;
   one MDLM per `--sampling` (time: MDLM's t with weight 1/t; count: a number of masks m with weight 1/m);
2. where the gap comes from: each MDLM's mean cross-entropy of a masked byte at masking rates 0–10 %, …, 90–100 %
   (their mean is the ELBO), next to the AR model's bits per byte and the unigram entropy of the validation bytes;
3. sampler quality (the first MDLM): continuations of validation prompts by the AR model (ancestral sampling, T = 1) and by the MDLM
   (confidence and ancestral samplers, several step counts), judged by the AR model (generative bits per byte: lower
   is likelier under the AR model) with the unigram entropy of the samples (a collapse to repetition shows as low
   entropy) and the network evaluations per token.

    python benchmarks/perplexity.py                 # 1500 steps each (configs/default.yaml), CPU: see the chapter
    python benchmarks/perplexity.py --steps 300     # shorter
    python benchmarks/perplexity.py --steps 300 --sampling time,count   # two MDLMs: time vs count sampling
    python benchmarks/perplexity.py --steps 300 --tokenizer bpe:1024     # both models on BPE tokens
    python benchmarks/perplexity.py --steps 300 --mdlm-lr 4e-3           # the MDLM at another learning rate
    python benchmarks/perplexity.py --quick         # tiny models, a few steps: checks that the script runs
"""
import argparse
import math
import os
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # for runpy.run_path too
import _checkout  # noqa: E402,F401  (the checkout first on sys.path, this folder last: see there)

import torch  # noqa: E402


def train(task: str, args, out: str, sampling: str = 'time'):
    "A trained Trainer for `task` (lm: causal GPT; mdlm: bidirectional) with the benchmark's shared settings."
    from bytropix.config import load_config
    from bytropix.training.trainer import Trainer
    causal = task == 'lm'
    d = {'arch': 'gpt', 'task': task, 'out_dir': out,
         'model': dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, causal=causal),
         'data': dict(max_train_tokens=args.max_train_tokens),
         'train': dict(steps=args.steps, batch_size=args.batch_size, block_size=args.block_size, lr=args.lr,
                       warmup_steps=min(100, args.steps // 10), eval_interval=0, eval_batches=args.eval_batches,
                       save_interval=0, sample_interval=0, tensorboard=False, seed=1337)}
    if task == 'mdlm':
        d['task_options'] = dict(eval_points=args.eval_points, sampling=sampling)
        d['train']['lr'] = args.mdlm_lr or args.lr
    if args.tokenizer != 'byte':
        kind, _, n = args.tokenizer.partition(':')
        d['tokenizer'] = dict(kind=kind, vocab_size=int(n or 1024))
    tr = Trainer(load_config(None, d), log=None, progress=False)
    t0 = time.perf_counter(); tr.fit(); dt = time.perf_counter() - t0
    return tr, dt


@torch.no_grad()
def judge_bits(ar, prompts: torch.Tensor, gen: torch.Tensor) -> float:
    "Bits per token of the generated tokens `gen` (N, L) after `prompts` (N, P) under the AR model."
    ids = torch.cat([prompts, gen], 1)
    logits = ar(ids[:, :-1]).logits.float()
    P = prompts.shape[1]
    nll = torch.nn.functional.cross_entropy(logits[:, P - 1:].reshape(-1, logits.shape[-1]), ids[:, P:].reshape(-1))
    return float(nll) / math.log(2)


def unigram_entropy(gen: torch.Tensor) -> float:
    "Mean over samples of the entropy (bits) of each sample's token frequencies."
    hs = []
    for row in gen:
        p = torch.bincount(row).float(); p = p[p > 0] / row.numel()
        hs.append(float(-(p * p.log2()).sum()))
    return sum(hs) / len(hs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help="tiny models and few steps (a smoke test, not a measurement)")
    ap.add_argument('--steps', type=int, default=1500)
    ap.add_argument('--n-layer', type=int, default=4); ap.add_argument('--n-embd', type=int, default=128)
    ap.add_argument('--n-head', type=int, default=4)
    ap.add_argument('--batch-size', type=int, default=16); ap.add_argument('--block-size', type=int, default=128)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--mdlm-lr', type=float, default=None, help="the MDLMs' peak learning rate (default: --lr)")
    ap.add_argument('--tokenizer', default='byte', help="byte, or a trained kind and size such as bpe:1024 (both models)")
    ap.add_argument('--max-train-tokens', type=int, default=None)
    ap.add_argument('--eval-batches', type=int, default=20)
    ap.add_argument('--eval-points', type=int, default=8, help="MDLM: times per validation sequence")
    ap.add_argument('--samples', type=int, default=16); ap.add_argument('--prompt-tokens', type=int, default=32)
    ap.add_argument('--gen-tokens', type=int, default=64)
    ap.add_argument('--sampler-steps', default='8,16,32,64')
    ap.add_argument('--sampling', default='time', help="MDLM training estimators, comma-separated: time, count")
    ap.add_argument('--loss-draws', type=int, default=32, help="draws of the training loss on one batch (its spread)")
    ap.add_argument('--rate-bins', type=int, default=10, help="masking-rate bins of the ELBO decomposition")
    ap.add_argument('--threads', type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.n_layer, args.n_embd, args.n_head, args.batch_size, args.block_size = 6, 1, 32, 2, 4, 32
        args.max_train_tokens, args.eval_batches, args.eval_points, args.loss_draws = 50_000, 2, 2, 4
        args.samples, args.prompt_tokens, args.gen_tokens, args.sampler_steps = 2, 4, 8, '2,8'
    if args.threads: torch.set_num_threads(args.threads)
    from bytropix.training.diffusion import diffusion_generate
    from bytropix.training.evaluation import evaluate

    tmp = tempfile.mkdtemp(prefix='bytropix-ppl-')
    ar, t_ar = train('lm', args, os.path.join(tmp, 'ar'))
    samplings = [v.strip() for v in args.sampling.split(',')]
    mds = {s: train('mdlm', args, os.path.join(tmp, f'mdlm-{s}'), s) for s in samplings}
    bpt = ar.data.bytes_per_token
    n_val = args.eval_batches or None
    e_ar = evaluate(ar.model, ar.data.val_batches, bytes_per_token=bpt, max_batches=n_val)
    e_mds = {s: evaluate(md.model, md.data.val_batches, bytes_per_token=bpt, max_batches=n_val) for s, (md, _) in mds.items()}
    md = mds[samplings[0]][0]

    print(f"\n## AR vs MDLM: {args.steps} steps each, batch {args.batch_size} × {args.block_size} tokens, "
          f"{ar.model.num_parameters():,} vs {md.model.num_parameters():,} parameters "
          f"(the MDLM's extra one: the [MASK] embedding), {e_ar['tokens']:,} validation tokens\n")
    print("| model | validation bpb | ± (MC s.e.) | loss (nats/token) | perplexity | ratio to AR | training time (s) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| AR GPT (exact NLL) | {e_ar['bpb']:.4f} | 0 | {e_ar['loss']:.4f} | {e_ar['ppl']:.3f} | 1 | {t_ar:.0f} |")
    for s, e in e_mds.items():
        n_seq = e['tokens'] / args.block_size
        se_bpb = e['metric/elbo_sd'] / math.sqrt(n_seq) / math.log(2) / bpt
        print(f"| MDLM, {s} sampling (ELBO, {args.eval_points} mask counts/sequence) | {e['bpb']:.4f} | {se_bpb:.4f} | "
              f"{e['loss']:.4f} | {e['ppl']:.3f} | {math.exp(e['loss'] - e_ar['loss']):.3f} | {mds[s][1]:.0f} |")
    ratio = math.exp(e_mds[samplings[0]]['loss'] - e_ar['loss'])
    print(f"\nperplexity ratio MDLM ({samplings[0]} sampling) / AR: {ratio:.3f} (target ≤ 1.15; MDLM paper, LM1B: "
          "23.00 / 20.09 = 1.145)")

    # where the gap comes from: the ELBO is the mean over masking rates of a masked byte's cross-entropy
    K, bits = args.rate_bins, 1 / math.log(2) / bpt
    curves, hist = {}, torch.zeros(ar.model.config.vocab_size)
    for s, (m, _) in mds.items():
        m.model.eval(); acc, nb = torch.zeros(K), 0
        for x, _y in m.data.val_batches(args.eval_batches or None):
            acc += m.model.mdlm.ce_by_mask_rate(x, K); nb += 1
            if s == samplings[0]: hist += torch.bincount(x.flatten(), minlength=len(hist))[:len(hist)].float()
        curves[s] = acc / nb * bits
    p = hist[hist > 0] / hist.sum()
    h1 = float(-(p * p.log2()).sum()) / bpt
    print(f"\n## ELBO by masking rate: mean cross-entropy of a masked token (bits per byte) when a fraction m/T of the "
          f"window is masked; AR model {e_ar['bpb']:.3f}, unigram entropy of the validation tokens {h1:.3f} (per byte)\n")
    print("| masked fraction | " + " | ".join(f"MDLM {s}" for s in curves) + " | MDLM − AR |")
    print("|---|" + "---|" * len(curves) + "---|")
    first = curves[samplings[0]]
    for j in range(K):
        print(f"| {j / K:.1f}–{(j + 1) / K:.1f} | " + " | ".join(f"{c[j]:.3f}" for c in curves.values()) +
              f" | {first[j] - e_ar['bpb']:+.3f} |")
    print("| mean (= ELBO) | " + " | ".join(f"{float(c.mean()):.3f}" for c in curves.values()) +
          f" | {float(first.mean()) - e_ar['bpb']:+.3f} |")

    # the training signal: the spread of the batch loss over fresh draws of times (or counts) and masks, same batch
    xb, _ = next(iter(md.data.val_batches(1)))
    mm, obj = md.model, md.model.mdlm
    mm.train()
    spread = {}
    with torch.no_grad():
        for s in ('time', 'count'):
            obj.sampling = s
            v = torch.tensor([float(mm(xb, xb).loss) for _ in range(args.loss_draws)]) / math.log(2) / bpt
            spread[s] = (float(v.mean()), float(v.std()))
    obj.sampling = samplings[0]; mm.eval()
    print(f"\ntraining loss of one batch ({xb.shape[0]} × {xb.shape[1]}) under {args.loss_draws} fresh draws, first MDLM "
          "(bits per byte, mean ± sd): " + ", ".join(f"{s} sampling {m:.3f} ± {d:.3f}" for s, (m, d) in spread.items()))

    # sampler quality, judged by the AR model
    g = torch.Generator().manual_seed(0)
    x, _ = next(iter(ar.data.val_batches(1)))
    rows = [x[i % x.shape[0], :args.prompt_tokens] for i in range(args.samples)]
    prompts = torch.stack(rows)
    arm, mdm = ar.model.eval(), md.model.eval()
    torch.manual_seed(0)
    print(f"\n## Samples: {args.samples} continuations of {args.gen_tokens} tokens after {args.prompt_tokens}-token "
          "validation prompts, temperature 1, judged by the AR model\n")
    print("| sampler | steps | network evaluations / token | generative bpb (AR judge) | unigram entropy (bits) |")
    print("|---|---|---|---|---|")
    ref = arm.generate(prompts, args.gen_tokens, temperature=1.0, top_k=None, generator=g)[:, args.prompt_tokens:]
    print(f"| AR GPT, ancestral | {args.gen_tokens} | 1.00 | {judge_bits(arm, prompts, ref) / bpt:.3f} | "
          f"{unigram_entropy(ref):.2f} |")
    val_rows = x[:args.samples, args.prompt_tokens:args.prompt_tokens + args.gen_tokens]
    print(f"| (validation text) | – | – | {judge_bits(arm, x[:args.samples, :args.prompt_tokens], val_rows) / bpt:.3f} | "
          f"{unigram_entropy(val_rows):.2f} |")
    for sampler in ('confidence', 'ancestral'):
        for s in (int(v) for v in args.sampler_steps.split(',')):
            out, st = diffusion_generate(mdm, prompts, args.gen_tokens, steps=s, sampler=sampler, temperature=1.0, generator=g)
            gen = out[:, -args.gen_tokens:]
            print(f"| MDLM, {sampler} | {s} | {st['nfe_per_token']:.2f} | {judge_bits(arm, prompts, gen) / bpt:.3f} | "
                  f"{unigram_entropy(gen):.2f} |")
        out, st = diffusion_generate(mdm, prompts, args.gen_tokens, steps=max(1, args.gen_tokens // 8 // 2), sampler=sampler,
                                     block_length=max(1, args.gen_tokens // 8), temperature=1.0, generator=g)
        gen = out[:, -args.gen_tokens:]
        print(f"| MDLM, {sampler}, 8 semi-AR blocks (cached) | {st['steps']}/block | {st['nfe_per_token']:.2f} | "
              f"{judge_bits(arm, prompts, gen) / bpt:.3f} | {unigram_entropy(gen):.2f} |")
    print(f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == '__main__':
    main()

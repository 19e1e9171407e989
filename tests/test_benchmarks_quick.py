"Every benchmark's `--quick` mode runs and prints its table (never a timing check: timings belong to benchmarks)."
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false', 'PYTHONPATH': str(ROOT)}


def run_quick(script: str, *args: str) -> str:
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/script), '--quick', *args], capture_output=True, text=True,
                       env=ENV, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_export_interop_quick():
    out = run_quick('export_interop.py')
    assert '| model | measure | PyTorch eager | onnxruntime | onnxruntime speed-up |' in out
    assert 'decode 8 tokens, tokens/s' in out and 'full sequence 2×16, ms' in out
    assert '| model | bytropix generate, tokens/s | transformers generate, tokens/s | bytropix / transformers |' in out


def test_export_quant_quick():
    out = run_quick('export_quant.py')
    for method in ('fp32', 'bf16', 'fp16', 'int8', 'int8-dyn', 'int4', 'nvfp4', 'mxfp4', 'nf4'): assert f"\n{method} " in out, out
    assert 'tok/s b16' in out and 'targets (int8' in out


def test_moe_quick():
    out = run_quick('moe.py')
    assert '| model | total params | active params | val bpb | bpb / dense | train tok/s | tok/s / dense |' in out
    for name in ('dense', 'moe top-2', 'moe top-1', 'dense wide'): assert f'\n| {name} |' in out, out


def test_mamba_quick():
    out = run_quick('mamba.py')
    assert '| model | layers | params | val bpb | bpb / gpt | train tok/s | tok/s / gpt | ms/token @ 8 | ms/token @ 64 |' in out
    assert '\n| gpt |' in out and '\n| mamba |' in out


def test_generation_quick():
    out = run_quick('generation.py')
    assert 'KV cache  :' in out and 'recompute :' in out and 'speed-up (KV cache / recompute)' in out
    out = run_quick('generation.py', '--retrieval', '3000')   # the same through n-gram retrieval (identical tokens checked)
    assert 'n-gram retrieval: NgramIndex(3,000 tokens' in out and 'speed-up (KV cache / recompute)' in out


def test_bdh_quick():
    out = run_quick('bdh.py')
    assert '| context | recurrent (ms/token) | recompute (ms/token) |' in out
    assert '| pass | T | naive (MiB) | chunked (MiB) |' in out and 'train step (fwd+bwd)' in out


def test_reasoning_quick():
    out = run_quick('reasoning.py')
    assert '| model | params | optimizer steps |' in out
    assert all(m in out for m in ('| HRM (', '| TRM (', '| Transformer ('))


def test_hyperbolic_vs_euclidean_quick():
    out = run_quick('hyperbolic_vs_euclidean.py')
    assert '| 2 | Poincaré |' in out and '| 2 | Euclidean |' in out


def test_train_throughput_quick():
    out = run_quick('train_throughput.py')
    assert 'bpb difference (trainer - plain) / plain' in out
    for side in ('Trainer + bytropix gpt', 'plain loop + bytropix gpt', 'plain loop + reference GPT-2'):
        assert f'| llama | {side} |' in out, out
    assert '[llama] tokens/s ratio plain loop + bytropix gpt / reference:' in out


def test_train_throughput_compiled_quick():
    out = run_quick('train_throughput.py', '--compile', '--mlp-act', 'relu2')
    assert '## style llama, MLP relu2, torch.compile:' in out
    for side in ('Trainer + bytropix gpt, compiled', 'plain loop + bytropix gpt, compiled', 'plain loop + reference GPT-2',
                 'plain loop + reference GPT-2, compiled'):
        assert f'| llama | {side} |' in out, out
    assert '[llama] tokens/s ratio plain loop + bytropix gpt (compiled) / reference compiled:' in out
    assert "from the end of step 1, the step that compiles" in out


def test_train_throughput_parts_quick():
    out = run_quick('train_throughput.py', '--components')
    assert '| component | bytropix llama | ms | reference GPT-2 | ms | difference per step |' in out
    assert '\n| GELU | tanh form (width ' in out and '| exact (erf) |' in out
    out = run_quick('train_throughput.py', '--optimizer-step')
    assert '| implementation | ms | per-tensor loop / this |' in out and "| trainer's build_optimizer (fused) |" in out


def test_wubu_vs_gpt_quick(tmp_path):
    out = run_quick('wubu_vs_gpt.py', '--out-dir', str(tmp_path))
    assert '| model | parameters | validation bpb' in out and 'WuBu / GPT: bpb' in out
    assert {'wubu_vs_gpt.png', 'wubu_levels.png', 'wubu_vs_gpt.json'} <= {p.name for p in tmp_path.iterdir()}
    out = run_quick('wubu_vs_gpt.py', '--speed', '--profile', '--out-dir', str(tmp_path))
    assert '| model | parameters | CPU ms / step | tokens/CPU-s | ÷ GPT | gain over the row above (compiled: over eager) |' in out
    assert '| model | operator calls (aten, nested included) | CUDA kernels | host synchronisations |' in out
    out = run_quick('wubu_vs_gpt.py', '--speed', '--compile', '--speed-rounds', '1', '--out-dir', str(tmp_path))
    assert '| WuBu now, train.compile (block by block) |' in out and 'like for like, both compiled: WuBu ÷ GPT' in out
    assert '| WuBu, before (literal levels, matrix_exp) |' in out and ': now |' in out


def test_geometry_quick():
    out = run_quick('geometry.py', '--no-compile')
    assert 'mobius_add' in out and 'expmap0' in out


def test_kernels_quick():
    out = run_quick('kernels.py')   # TRITON_INTERPRET=1 (set by tools/test.sh) runs the Triton kernels on the CPU
    assert '--quick: interpreter smoke test' in out


def test_speculative_quick(tmp_path):
    out = run_quick('speculative.py', '--out-dir', str(tmp_path))
    assert '| decoding | tokens/s | speed-up | acceptance | tokens per target call | identical to target |' in out
    assert '| target alone |' in out and '| draft, k = 2 |' in out and 'best speed-up' in out


def test_lr_find_quick():
    out = run_quick('lr_find.py')
    assert '| lr | from | final val bpb | / best grid bpb |' in out and '| lr-find |' in out
    assert 'sweep cost:' in out and 'suggested lr' in out


def test_serving_quick():
    out = run_quick('serving.py')
    assert '| server | tokens/s | TTFT p50 (s) | TTFT p99 (s) | inter-token p50 (ms) | inter-token p99 (ms) |' in out
    assert 'continuous batching (--max-batch 4)' in out and 'one at a time (--max-batch 1)' in out
    assert 'throughput ratio' in out and '| requests served | server RSS (MiB) |' in out


def test_distributed_quick():
    out = run_quick('distributed.py')
    assert '| ranks | step ms | tokens/s | speed-up vs 1 rank | communication share |' in out
    assert '| mode | weights + AdamW state per rank, MB | vs DDP |' in out and '| FSDP2 |' in out


def test_perplexity_quick():
    out = run_quick('perplexity.py', '--sampling', 'time,count')
    assert '| AR GPT (exact NLL) |' in out and '| MDLM, time sampling (ELBO, 2 mask counts/sequence) |' in out
    assert '| MDLM, count sampling (ELBO, 2 mask counts/sequence) |' in out
    assert 'perplexity ratio MDLM (time sampling) / AR:' in out
    assert 'training loss of one batch' in out and 'count sampling' in out
    assert '| masked fraction | MDLM time | MDLM count | MDLM − AR |' in out and '| 0.9–1.0 |' in out and '| mean (= ELBO) |' in out
    assert '| MDLM, confidence | 2 |' in out and '| MDLM, ancestral, 8 semi-AR blocks (cached) |' in out


def test_attention_variants_quick():
    out = run_quick('attention_variants.py')
    assert '| attention | parameters | mlp_ratio | KV cache bytes/token |' in out
    for name in ('| MHA |', '| GQA (1 kv head) |', '| MLA (d_c 32, d_R 16) |'): assert name in out, out


def test_encoder_tasks_quick():
    out = run_quick('encoder_tasks.py')
    assert '| features | prose vs code (probe acc.) |' in out
    for name in ('| encoder (MLM) |', '| GPT (causal LM), mean of hidden states |', '| bag of bytes (histogram) |'): assert name in out


def test_peft_quick():
    out = run_quick('peft.py')
    assert '| method | trainable params | share | weights MiB | weights+grads+Adam MiB | vs full FT |' in out
    for method in ('full fine-tune', 'LoRA, fp32 trunk', 'LoRA, bf16 trunk', 'QLoRA (NF4 trunk)', 'LoRA, NVFP4 trunk',
                   'prompt tuning (16)'):
        assert f"| {method} |" in out, out


def test_checkpoint_store_quick():
    out = run_quick('checkpoint_store.py')
    assert '| run | checkpoints | full: MiB written | delta: MiB written | delta / full |' in out
    for name in ('progressive, 4 stages (', 'progressive, 4 stages, prepend', 'LoRA r=16, frozen fp32 base',
                 'QLoRA r=16, frozen NF4 base'):
        assert f'\n| {name}' in out, out
    assert 'stage 4: ' in out


def test_context_length_quick():
    out = run_quick('context_length.py')
    assert ('| eval length | × training length | fixed: RoPE | fixed: PI (factor s) | fixed: NTK-aware (factor s) | '
            'curriculum: RoPE | curriculum: NTK-aware |') in out
    for row in ('| 16 | 1 |', '| 32 | 2 |', '| 64 | 4 |'): assert row in out, out
    assert '| length L | × | no fine-tune, PI | fine-tuned with PI: at L |' in out
    for row in ('| 32 | 2 |', '| 64 | 4 |'): assert out.count(row) == 2, out


def test_recipe_quick():
    out = run_quick('recipe.py', '--variants', 'previous-default')
    assert '| variant | overrides | steps | step ms | first step + s | train s | setup s | peak RSS MB | model bpb | + retrieval | Δ vs baseline |' in out
    assert '\n| baseline | (default) |' in out and '\n| previous-default | tokenizer.kind=byte' in out


def test_recipe_equal_steps_quick():
    out = run_quick('recipe.py', '--variants', 'baseline', '--steps', '4')
    assert 'equal steps: 4 per variant' in out and '\n| baseline | (default) | 4 |' in out


def test_stackwise_quick():
    out = run_quick('stackwise.py')
    assert '| run | steps | train FLOPs / e2e | val bpb (ELBO) | bpb / e2e | wall s | wall / e2e | peak MB | trunk cache hits |' in out
    for name in ('end to end, same FLOPs', 'progressive, frozen + trunk cache', 'progressive, QLoRA trunk (NF4)'):
        assert f'\n| {name} |' in out, out
    assert '| trunk | ms / step | speed-up vs uncached |' in out and '| cache warm: every example a hit |' in out


def test_sparse_attention_quick():
    out = run_quick('sparse_attention.py')
    assert '| context | pattern | backend | ms | ms / dense sdpa | peak MiB | MiB / dense sdpa |' in out
    assert '### training: forward + backward' in out and '### inference: forward only' in out
    for row in ('| dense | sdpa |', '| local_global | math |', '| block_sparse | flex |'): assert row in out, out
    assert 'failed' not in out, out


def test_compare_quick(tmp_path):
    out = run_quick('compare.py', '--out-dir', str(tmp_path))
    assert '| size | arch | params | layers × width | GFLOP/step | equal compute: steps | bpb | equal time: steps (s) |' in out
    for arch in ('gpt', 'bdh', 'mamba', 'wubu', 'wubu_bytes'): assert f'\n| small | {arch} |' in out, out
    assert 'skipped hrm: puzzle solver' in out and 'skipped encoder: bidirectional encoder' in out
    assert 'BDH vs GPT' in out and 'equal data' in out
    assert {p.name for p in tmp_path.iterdir()} == {'compare.json', 'compare.md', 'compare.png'}


def test_compare_refuses_a_puzzle_solver():
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'compare.py'), '--quick', '--archs', 'gpt', 'hrm'],
                       capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert r.returncode == 2 and 'compare.py: error: cannot compare hrm: puzzle solver' in r.stderr, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr


def test_compare_refuses_budgets_that_do_not_match_the_sizes():
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'compare.py'), '--quick', '--archs', 'gpt',
                        '--budget-flops', '1e6', '2e6'], capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert r.returncode == 2 and 'give --budget-flops once, or once per size in the order of --sizes (small)' in r.stderr, r.stderr[-2000:]


def test_hierarchical_quick():
    out = run_quick('hierarchical.py')
    assert '| model | parameters | steps | train tokens/CPU-s | validation bpb ↓ | bpb / GPT | bpb − floor |' in out
    assert '| floor (Bayes-optimal predictor, whole history) |' in out and 'WuBu / GPT bpb on the default corpus' in out
    out = run_quick('hierarchical.py', '--ablation', '--ablation-seconds', '0.2', '--gpt-like-wubu')
    for name in ('1 level', '4 levels', 'fixed curvature', 'no rotations', 'no boundary points', 'hyperbolic RMSNorm',
                 "GPT, SwiGLU hidden 32 (WuBu's size)"):
        assert f'\n| {name} |' in out, out
    out = run_quick('hierarchical.py', '--compile', '--skip-corpus', '--level-dims', '16', '--level-mlp-ratio', '3',
                    '--boundary-points', '8', '--eval-every', '0.5')
    assert 'compiled (train.compile); the first step, compiling, not charged: GPT ' in out and '| WuBu | 15,395 |' in out, out   # the options reached the model
    assert 'best validation bpb during training (evaluated every --eval-every training seconds, and at the end): GPT ' in out
    out = run_quick('hierarchical.py', '--skip-hierarchy', '--gpt-like-wubu', '--eval-every', '0.5', '--wubu-option',
                    'rotation=identity', '--wubu-option', 'learnable_curvature=false', '--wubu-option', 'curvature_min=1e-4')
    assert 'Hierarchical grammar' not in out and 'WuBu / GPT bpb on the default corpus' in out, out
    assert '\n| WuBu | 15,894 |' in out, out   # the options reached the model: no rotation parameters (16,014 with them)
    # the third contender: the GPT narrowed to WuBu's parameter count (16,014 in the quick sizes), compared in both lines
    assert "\n| GPT, SwiGLU hidden 32 (WuBu's size) | 15,456 |" in out and "(WuBu's size) / GPT " in out, out
    for bad, code, says in ((['--eval-every', '-1'], 2, '--eval-every must be 0 (off) or a positive'),
                            (['--skip-hierarchy'], 2, '--skip-hierarchy leaves nothing to run with --skip-corpus'),
                            (['--skip-hierarchy', '--ablation'], 2, '--skip-hierarchy leaves nothing to run with --ablation'),
                            (['--wubu-option', 'curvature_min'], 2, '--wubu-option takes KEY=VALUE'),
                            (['--wubu-option', 'curvature=2'], 1, 'hierarchical.py: Unknown config key `model.curvature`'),
                            (['--wubu-option', 'curvature_init=[1,'], 1, 'hierarchical.py: `model.curvature_init` must be a list'),
                            (['--level-dims', '16', '--boundary-points', '1', '2'], 1, 'hierarchical.py: `model.boundary_points`')):
        r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'hierarchical.py'), '--quick', '--skip-corpus', *bad],
                           capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
        assert r.returncode == code and says in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]


def test_rotations_quick():
    out = run_quick('rotations.py')
    assert '| n | parameter std | squarings | matrix_exp | taylor | in-graph | matrix_exp / taylor |' in out
    assert '\n| 16 | 0.02 |' in out and '\n| 32 | 0.2 |' in out

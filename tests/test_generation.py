"Property-based tests of bytropix.generation: sampling parameters, stop sequences, streaming, cache vs recompute."
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from bytropix.generation import (StopMatcher, generate, generate_batch, normalize_stop, sample_logits, stream,
                                 top_k_filter, top_p_filter)
from bytropix.models.gpt import GPT, GPTConfig

torch.set_num_threads(min(2, os.cpu_count() or 1))
V, BLOCK = 48, 16
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _gpt(**over):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32, **over)).eval()


MODELS = {'llama': _gpt(), 'gpt2': _gpt(style='gpt2'), 'gqa_window': _gpt(n_kv_head=2, sliding_window=5)}

temperatures = st.one_of(st.just(0.0), st.floats(0.05, 3.0))
top_ks = st.one_of(st.none(), st.integers(1, V + 5))
top_ps = st.one_of(st.none(), st.floats(0.01, 1.0))
penalties = st.floats(0.5, 4.0)
stops = st.one_of(st.none(), st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=2), min_size=1, max_size=3))


def _contains(seq, sub):
    return any(seq[i:i + len(sub)] == list(sub) for i in range(len(seq) - len(sub) + 1))


@settings(max_examples=80, **SETTINGS)
@given(arch=st.sampled_from(sorted(MODELS)), temperature=temperatures, top_k=top_ks, top_p=top_ps,
       penalty=penalties, n_new=st.integers(0, 12), batch=st.integers(1, 3), t_prompt=st.integers(1, 20),
       stop=stops, keep_stop=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_generate_outputs_are_well_formed(arch, temperature, top_k, top_p, penalty, n_new, batch, t_prompt, stop,
                                          keep_stop, seed):
    model = MODELS[arch]
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, V, (batch, t_prompt), generator=g)
    out = generate(model, prompt, n_new, temperature=temperature, top_k=top_k, top_p=top_p,
                   repetition_penalty=penalty, stop=stop, generator=g, keep_stop=keep_stop)
    assert out.dtype == torch.long and out.shape[0] == batch
    assert torch.equal(out[:, :t_prompt], prompt)
    assert t_prompt <= out.shape[1] <= t_prompt + n_new
    stop_seqs = normalize_stop(stop)
    for row in out.tolist():
        gen = row[t_prompt:]
        n_pad = 0
        while gen and gen[-1] == -1: gen.pop(); n_pad += 1
        assert all(0 <= t < V for t in gen), gen  # in-vocab; padding only at the end
        if not stop_seqs: assert len(gen) == n_new
        elif not keep_stop: assert not any(_contains(gen, s) for s in stop_seqs)
        elif len(gen) < n_new or n_pad:  # it stopped: it ends with a stop sequence, seen nowhere earlier
            s = next(s for s in sorted(stop_seqs, key=len, reverse=True) if tuple(gen[-len(s):]) == s)
            assert not any(_contains(gen[:-1], s2) for s2 in stop_seqs)


@settings(max_examples=40, **SETTINGS)
@given(arch=st.sampled_from(sorted(MODELS)), temperature=temperatures, top_k=top_ks, top_p=top_ps,
       penalty=penalties, n_new=st.integers(0, 10), t_prompt=st.integers(1, 20), stop=stops,
       seed=st.integers(0, 2**31 - 1))
def test_stream_equals_generate(arch, temperature, top_k, top_p, penalty, n_new, t_prompt, stop, seed):
    model = MODELS[arch]
    prompt = torch.randint(0, V, (1, t_prompt), generator=torch.Generator().manual_seed(seed))
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty, stop=stop)
    a = generate(model, prompt, n_new, generator=torch.Generator().manual_seed(seed), **kw)[0, t_prompt:].tolist()
    b = list(stream(model, prompt, n_new, generator=torch.Generator().manual_seed(seed), **kw))
    assert a == b


@settings(max_examples=25, **SETTINGS)
@given(style=st.sampled_from(['llama', 'gpt2']), n_kv=st.sampled_from([None, 1, 2]),
       window=st.one_of(st.none(), st.integers(1, 12)), t_prompt=st.integers(1, 18), n_new=st.integers(1, 12),
       penalty=st.sampled_from([1.0, 3.0]), seed=st.integers(0, 1000))
def test_cached_equals_recomputed_greedy(style, n_kv, window, t_prompt, n_new, penalty, seed):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_kv_head=n_kv, n_embd=32,
                          style=style, sliding_window=window)).eval()
    prompt = torch.randint(0, V, (2, t_prompt))
    if window is not None and style == 'llama' and t_prompt + n_new > BLOCK:
        # a windowed llama keeps its cache past block_size; recomputation crops to block_size: compare within it
        n_new = max(1, BLOCK - t_prompt)
    a = generate(model, prompt, n_new, temperature=0, repetition_penalty=penalty)
    b = generate(model, prompt, n_new, temperature=0, repetition_penalty=penalty, use_cache=False)
    assert torch.equal(a, b)


@settings(max_examples=200, **SETTINGS)
@given(tokens=st.lists(st.integers(0, 4), max_size=30),
       stop=st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=3), min_size=1, max_size=3),
       keep_stop=st.booleans())
def test_stop_matcher_equals_naive_trimming(tokens, stop, keep_stop):
    stops = normalize_stop(stop)
    m, released = StopMatcher(stops, keep_stop), []
    for t in tokens:
        released += m.push(t)
        if m.done: break
    if not m.done: released += m.flush()
    expected = tokens
    for i in range(1, len(tokens) + 1):  # the first prefix that ends with a stop sequence (longest one trimmed)
        hits = [s for s in stops if len(s) <= i and tuple(tokens[i - len(s):i]) == s]
        if hits:
            s = max(hits, key=len)
            expected = tokens[:i] if keep_stop else tokens[:i - len(s)]
            break
    assert released == expected


@settings(max_examples=100, **SETTINGS)
@given(k=st.integers(1, 30), p=st.floats(0.01, 1.0), temperature=st.floats(0.1, 2.0), seed=st.integers(0, 10**6))
def test_samples_fall_in_top_k_and_nucleus(k, p, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, 30, generator=g) * 3
    toks = sample_logits(logits, temperature, top_k=k, top_p=p, generator=g)
    allowed = torch.isfinite(top_p_filter(top_k_filter(logits / temperature, k), p))
    assert allowed.gather(1, toks[:, None]).all()
    assert allowed.sum(1).min() >= 1


def test_generate_batch_mixed_lengths_matches_single():
    model = MODELS['llama']
    prompts = [[1, 2, 3, 4], [5], [6, 7], [8, 9, 10, 11], [12], [13, 14]]
    outs = generate_batch(model, prompts, 5, temperature=0, batch_size=2)
    for p, o in zip(prompts, outs):
        assert o == generate(model, torch.tensor([p]), 5, temperature=0)[0].tolist()
    assert [o[:len(p)] for p, o in zip(prompts, outs)] == prompts


def test_errors_are_clear():
    model = MODELS['llama']
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match='temperature'): generate(model, ids, 2, temperature=-0.5)
    with pytest.raises(ValueError, match='top_p'): generate(model, ids, 2, top_p=1.5)
    with pytest.raises(ValueError, match='repetition_penalty'): generate(model, ids, 2, repetition_penalty=0)
    with pytest.raises(ValueError, match='max_new_tokens'): generate(model, ids, -1)
    with pytest.raises(ValueError, match='prompt is empty'): generate(model, ids[:, :0], 2)
    with pytest.raises(ValueError, match='stop'): generate(model, ids, 2, stop='\n')

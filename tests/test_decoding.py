"""Decoding methods end to end: `bytropix generate --num-beams/--draft` on exported models, bad flags, and (slow) the
sampled distribution of speculative decoding with real GPTs."""
import itertools
import os

import pytest
import torch

from bytropix.cli import main
from bytropix.data.tokenizers import byte_tokenizer, train_tokenizer
from bytropix.decoding import SpeculativeStats, beam_search
from bytropix.generation import generate, token_probs
from bytropix.models.base import BytropixModel, build_model

slow = pytest.mark.skipif(os.environ.get('BYTROPIX_SLOW') != '1', reason='long: runs with BYTROPIX_SLOW=1')
GPT = dict(vocab_size=256, block_size=64, n_head=2)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    "A 2-layer target, a 1-layer draft (both byte level), a BDH draft, and a draft with a BPE tokenizer."
    d = tmp_path_factory.mktemp('decoding')
    torch.manual_seed(0)
    build_model('gpt', dict(GPT, n_layer=2, n_embd=32)).save_pretrained(d/'target', tokenizer=byte_tokenizer())
    build_model('gpt', dict(GPT, n_layer=1, n_embd=16)).save_pretrained(d/'draft', tokenizer=byte_tokenizer())
    build_model('bdh', dict(vocab_size=256, block_size=64, n_layer=1, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4,
                            dropout=0.0)).save_pretrained(d/'bdh')
    bpe = train_tokenizer(['def f(x):\n    return x + 1\n' * 20], 'bpe', vocab_size=280)
    build_model('gpt', dict(GPT, vocab_size=bpe.vocab_size, n_layer=1, n_embd=16)).save_pretrained(d/'bpe', tokenizer=bpe)
    return d


def test_cli_beam_search_matches_the_library(exports, capsys):
    rc, out, err = run(capsys, 'generate', exports/'target', '--prompt', 'def ', '--max-new-tokens', 12, '--num-beams', 4,
                       '--length-penalty', 0)
    assert rc == 0, err
    model = BytropixModel.from_pretrained(exports/'target')
    best = beam_search(model, torch.tensor([list(b'def ')]), 12, num_beams=4, length_penalty=0.0)[0][0]
    assert out == 'def ' + byte_tokenizer().decode(best.tokens) + '\n'
    rc, out1, _ = run(capsys, 'generate', exports/'target', '--prompt', 'def ', '--max-new-tokens', 12, '--num-beams', 1,
                      '--temperature', 0)
    rc, out2, _ = run(capsys, 'generate', exports/'target', '--prompt', 'def ', '--max-new-tokens', 12, '--temperature', 0)
    assert rc == 0 and out1 == out2
    rc, out, err = run(capsys, 'generate', exports/'target', '--prompt', 'def ', '--max-new-tokens', 8, '--num-beams', 4,
                       '--num-beam-groups', 2, '--diversity-penalty', 1.5, '--early-stopping', '--stream')
    assert rc == 0 and out.startswith('def '), err


@pytest.mark.parametrize('draft', ['draft', 'bdh', 'target'])
def test_cli_speculative_greedy_equals_target(exports, capsys, draft):
    base = ['generate', exports/'target', '--prompt', 'def f(', '--max-new-tokens', 30, '--temperature', 0]
    rc, want, _ = run(capsys, *base)
    rc, out, err = run(capsys, *base, '--draft', exports/draft, '--num-draft-tokens', 3)
    assert rc == 0 and out == want, err
    assert 'speculative decoding: acceptance' in err
    if draft == 'target': assert 'acceptance 100.0%' in err


@pytest.mark.parametrize('argv, msg', [
    (['--num-beams', '0'], 'argument --num-beams: 0 is out of range'),
    (['--num-beams', '4', '--num-beam-groups', '3'], 'num_beam_groups=3 does not divide num_beams=4'),
    (['--num-beams', '4', '--diversity-penalty', '1'], 'set num_beam_groups > 1'),
    (['--num-beams', '2', '--draft', 'DRAFT'], 'cannot be combined'),
    (['--draft', 'BPE'], 'uses another tokenizer'),
    (['--draft', 'NOWHERE'], 'does not exist'),
    (['--num-draft-tokens', '0', '--draft', 'DRAFT'], 'argument --num-draft-tokens: 0 is out of range'),
])
def test_cli_bad_decoding_options_are_one_line(exports, capsys, argv, msg):
    argv = [str(exports/'draft') if a == 'DRAFT' else str(exports/'bpe') if a == 'BPE' else
            str(exports/'nowhere') if a == 'NOWHERE' else a for a in argv]
    try: rc = main(['generate', str(exports/'target'), '--prompt', 'x', '--max-new-tokens', '4', *argv])
    except SystemExit as e: rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and msg in err, err
    last = err.strip().splitlines()[-1]                 # argparse prints its usage first; the error is one line
    assert 'Traceback' not in err and last.startswith('bytropix generate: error: ') and msg in last, err


def test_vocab_mismatch_in_the_api(exports):
    target = BytropixModel.from_pretrained(exports/'target')
    other = BytropixModel.from_pretrained(exports/'bpe')
    with pytest.raises(Exception, match="draft's vocabulary"): generate(target, torch.tensor([[1, 2]]), 4, draft=other)


@slow
def test_speculative_sampling_distribution_with_real_gpts():
    "10,000 samples of 3 tokens from GPTs over 4 tokens: χ² against the target's exact distribution, TV < 0.03."
    V, n, N = 4, 3, 10000
    torch.manual_seed(3)
    target = build_model('gpt', dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, init_std=0.3)).eval()
    draft = build_model('gpt', dict(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16, init_std=0.3)).eval()
    prompt = [1, 2]
    exact = {}
    with torch.no_grad():
        for s in itertools.product(range(V), repeat=n):
            lg = target(torch.tensor([prompt + list(s)])).logits[0]
            exact[s] = float(torch.prod(torch.stack([token_probs(lg[1 + i:2 + i], 0.9, 3)[0, t] for i, t in enumerate(s)])))
    st = SpeculativeStats()
    rows = generate(target, torch.tensor([prompt] * N), n, temperature=0.9, top_k=3, draft=draft, num_draft_tokens=2,
                    generator=torch.Generator().manual_seed(0), draft_stats=st)
    counts = {s: 0 for s in exact}
    for r in rows[:, 2:].tolist(): counts[tuple(r)] += 1
    support = [s for s in exact if exact[s] > 0]
    x2 = sum((counts[s] - N * exact[s]) ** 2 / (N * exact[s]) for s in support)
    pval = float(torch.special.gammaincc(torch.tensor((len(support) - 1) / 2), torch.tensor(x2 / 2)))
    tv = 0.5 * sum(abs(counts[s] / N - exact[s]) for s in exact)
    assert pval > 1e-3 and tv < 0.03, (x2, pval, tv, str(st))

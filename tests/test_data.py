"""The data chapters end to end (bytropix.data.corpus, .tokenizers, .datasets): every source format, folders and globs,
dataset objects, streaming, caching, bit-exact loader resumption, tokenizer round trips and the error messages."""
import gzip
import io
import json
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import datasets
from bytropix.core import TASKS, ConfigError, DataError
from bytropix.data import datasets as D
from bytropix.data.corpus import cached_corpus_info, default_corpus_info, load_default_corpus
from bytropix.data.datasets import (BlockLoader, DataConfig, StreamingBlockLoader, load_text_dataset, prepare_data,
                                    tokenize_and_pack, val_blocks)
from bytropix.data.tokenizers import Tokenizer, TokenizerConfig, build_tokenizer, byte_tokenizer, train_tokenizer

datasets.disable_progress_bars()

PARAS = [f"Paragraph {i}: " + ' '.join(f"w{(i * 13 + j) % 97}" for j in range(25)) + (' é🙂' if i % 9 == 0 else '')
         for i in range(240)]


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "The same 240 documents in every supported format (and a folder, compressed and tab-separated variants)."
    d = tmp_path_factory.mktemp('src')
    (d / 'book.txt').write_text('\n\n'.join(PARAS), encoding='utf-8')
    (d / 'rows.jsonl').write_text(''.join(json.dumps({'id': i, 'body': p}) + '\n' for i, p in enumerate(PARAS)))
    (d / 'rows.json').write_text(json.dumps([{'body': p} for p in PARAS]))
    with gzip.open(d / 'rows.jsonl.gz', 'wt', encoding='utf-8') as f:
        for p in PARAS: f.write(json.dumps({'body': p}) + '\n')
    datasets.Dataset.from_dict({'body': PARAS}).to_csv(str(d / 'rows.csv'), index=False)
    datasets.Dataset.from_dict({'body': PARAS}).to_csv(str(d / 'rows.tsv'), index=False, sep='\t')
    datasets.Dataset.from_dict({'body': PARAS, 'n': list(range(len(PARAS)))}).to_parquet(str(d / 'rows.parquet'))
    (d / 'folder' / 'sub').mkdir(parents=True)
    for i in range(0, 240, 40):   # one document per file, in a nested folder
        for j, p in enumerate(PARAS[i:i + 40]):
            (d / 'folder' / ('sub' if i % 80 else '') / f'doc{i + j:03d}.md').write_text(p, encoding='utf-8')
    return d


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / 'cache')


def _docs(dd, col):
    return sorted(list(dd['train'][col]) + list(dd['validation'][col]))


@pytest.mark.parametrize('name,col,extra', [
    ('book.txt', 'text', {}), ('rows.jsonl', 'body', {}), ('rows.json', 'body', {}), ('rows.jsonl.gz', 'body', {}),
    ('rows.csv', 'body', {}), ('rows.tsv', 'body', {}), ('rows.parquet', 'body', {}),
    ('folder', 'text', {'sample_by': 'document'}), ('folder/**/*.md', 'text', {'sample_by': 'document'}),
    ('book.txt', 'content', {}),   # text files: the column is named by text_column
])
def test_every_format_partitions_the_documents(files, cache, name, col, extra):
    dd = load_text_dataset({'source': str(files / name), 'text_column': col, 'cache_dir': cache, **extra})
    assert isinstance(dd, datasets.DatasetDict) and set(dd) == {'train', 'validation'}
    assert _docs(dd, col) == sorted(PARAS)
    assert 2 <= len(dd['validation']) <= 30
    # the held-out documents depend only on their text: the same whatever the format
    ref = load_text_dataset({'source': str(files / 'book.txt'), 'cache_dir': cache})
    assert sorted(dd['validation'][col]) == sorted(ref['validation']['text'])


def test_format_override_and_sample_by(files, cache, tmp_path):
    (tmp_path / 'notes.log').write_text('\n\n'.join(PARAS[:100]))
    with pytest.raises(DataError, match=r'Unsupported file extension: `.*notes\.log`'):
        load_text_dataset({'source': str(tmp_path / 'notes.log'), 'cache_dir': cache})
    dd = load_text_dataset({'source': str(tmp_path / 'notes.log'), 'format': 'text', 'cache_dir': cache})
    assert _docs(dd, 'text') == sorted(PARAS[:100])
    lines = load_text_dataset({'source': str(files / 'book.txt'), 'sample_by': 'line', 'cache_dir': cache})
    assert len(lines['train']) + len(lines['validation']) == 2 * len(PARAS) - 1   # paragraphs + blank lines


def test_dataset_objects(cache):
    ds = datasets.Dataset.from_dict({'text': PARAS})
    dd = load_text_dataset(ds)
    assert _docs(dd, 'text') == sorted(PARAS)
    own = datasets.DatasetDict({'train': datasets.Dataset.from_dict({'text': PARAS[:200]}),
                                'validation': datasets.Dataset.from_dict({'text': PARAS[200:]})})
    dd = load_text_dataset(own)
    assert list(dd['validation']['text']) == PARAS[200:]   # a source's own validation split is kept
    test = datasets.DatasetDict({'train': own['train'], 'test': own['validation']})
    assert list(load_text_dataset(test, {'validation_split': 'test'})['validation']['text']) == PARAS[200:]
    it = load_text_dataset(ds.to_iterable_dataset())
    assert isinstance(it, datasets.IterableDatasetDict)
    assert sorted([r['text'] for r in it['train']] + [r['text'] for r in it['validation']]) == sorted(PARAS)
    p = prepare_data(ds, byte_tokenizer(), block_size=32, batch_size=4, config={'cache_dir': cache})
    assert p.description.startswith('the dataset') and next(p.train)[0].shape == (4, 32)


def test_errors_name_the_problem(files, cache, tmp_path):
    cfg = {'cache_dir': cache}
    with pytest.raises(DataError, match=r'missing\.txt` does not exist'):
        load_text_dataset({**cfg, 'source': str(tmp_path / 'missing.txt')})
    with pytest.raises(DataError, match='matched no files'):
        load_text_dataset({**cfg, 'source': str(tmp_path / '*.jsonl')})
    with pytest.raises(DataError, match=r"no text column `text`; available columns: \['id', 'body'\]"):
        load_text_dataset({**cfg, 'source': str(files / 'rows.jsonl')})
    with pytest.raises(DataError, match='Did you mean `body`'):
        load_text_dataset({**cfg, 'source': str(files / 'rows.jsonl'), 'text_column': 'bdy'})
    with pytest.raises(DataError, match='not text'):
        load_text_dataset({**cfg, 'source': str(files / 'rows.parquet'), 'text_column': 'n'})
    (tmp_path / 'empty.txt').write_text('')
    with pytest.raises(DataError, match='is empty'):
        prepare_data({**cfg, 'source': str(tmp_path / 'empty.txt')})
    (tmp_path / 'blank.jsonl').write_text('{"text": ""}\n{"text": null}\n')
    with pytest.raises(DataError, match='hold no text'):
        prepare_data({**cfg, 'source': str(tmp_path / 'blank.jsonl')})
    (tmp_path / 'mixed').mkdir(); (tmp_path / 'mixed' / 'a.txt').write_text('a'); (tmp_path / 'mixed' / 'b.csv').write_text('text\nb')
    with pytest.raises(DataError, match='mixes formats'):
        load_text_dataset({**cfg, 'source': str(tmp_path / 'mixed')})
    with pytest.raises(DataError, match='fewer than one block'):
        prepare_data({**cfg, 'source': str(files / 'book.txt')}, block_size=4096, batch_size=1)
    with pytest.raises(DataError, match='tokens per batch exceed the .* training tokens'):   # every batch would repeat the data
        prepare_data({**cfg, 'source': str(files / 'book.txt')}, block_size=4096)
    with pytest.raises(DataError, match="not a split of .* its splits are \\['train'\\]"):
        load_text_dataset(datasets.DatasetDict({'train': datasets.Dataset.from_dict({'text': PARAS})}), {'validation_split': 'dev'})
    with pytest.raises(ConfigError, match='Did you mean `parquet`'):
        DataConfig.from_dict({'format': 'parket'})


def test_tokenize_cache_and_fast_path(files, cache, monkeypatch):
    cfg = {'source': str(files / 'rows.jsonl'), 'text_column': 'body', 'cache_dir': cache}
    bpe = train_tokenizer(PARAS, 'bpe', vocab_size=400)
    a = prepare_data(cfg, bpe, block_size=32, batch_size=4, seed=1)
    assert a.vocab_size == bpe.vocab_size and a.train_packed.tokens.dtype == np.uint16 and a.bytes_per_token > 1.5
    # documents are separated by the end-of-text id; the text decodes back exactly
    docs = bpe.decode(np.asarray(a.train_packed.tokens).tolist()).split('<|endoftext|>')[:-1]
    assert docs == list(a.dataset['train']['body'])
    # the second preparation reads the token cache without loading the text at all
    monkeypatch.setattr(D, 'load_text_dataset', lambda *a, **k: pytest.fail('the text was loaded again'))
    b = prepare_data(cfg, bpe, block_size=32, batch_size=4, seed=1)
    assert np.array_equal(a.train_packed.tokens, b.train_packed.tokens) and a.bytes_per_token == b.bytes_per_token
    assert all(torch.equal(u, v) for u, v in zip(next(a.train), next(b.train)))
    monkeypatch.undo()
    # a changed file is noticed (its size and time are part of the key)
    (files / 'rows2.jsonl').write_text((files / 'rows.jsonl').read_text())
    c = prepare_data({**cfg, 'source': str(files / 'rows2.jsonl')}, bpe, block_size=32, batch_size=4)
    with open(files / 'rows2.jsonl', 'a') as f: f.write(json.dumps({'body': 'one more document ' * 20}) + '\n')
    d = prepare_data({**cfg, 'source': str(files / 'rows2.jsonl')}, bpe, block_size=32, batch_size=4)
    assert d.train_tokens + d.val_tokens > c.train_tokens + c.val_tokens


def test_parallel_tokenization_matches(files, cache):
    ds = load_text_dataset({'source': str(files / 'book.txt'), 'cache_dir': cache})['train']
    wp = train_tokenizer(PARAS, 'wordpiece', vocab_size=700)
    one = tokenize_and_pack(ds, wp, cache=False)
    two = tokenize_and_pack(ds, wp, num_proc=2, cache=False)
    assert np.array_equal(one.tokens, two.tokens) and one.n_bytes == two.n_bytes == sum(len(t.encode()) for t in ds['text'])


def test_byte_packing_is_the_text(files, cache):
    p = prepare_data({'source': str(files / 'book.txt'), 'cache_dir': cache}, byte_tokenizer(), block_size=64, batch_size=8)
    text = '\n\n'.join(p.dataset['train']['text']) + '\n\n'
    assert bytes(np.asarray(p.train_packed.tokens, np.uint8)) == text.encode() and p.bytes_per_token == 1.0


def test_max_tokens_and_validation_batches(files, cache):
    p = prepare_data({'source': str(files / 'book.txt'), 'cache_dir': cache, 'max_train_tokens': 3000, 'max_val_tokens': 700},
                     byte_tokenizer(), block_size=64, batch_size=4)
    assert (p.train_tokens, p.val_tokens) == (3000, 700)
    v1, v2 = list(p.val_batches()), list(p.val_batches())
    assert [x.shape[0] for x, _ in v1] == [4, 4, 2]   # (700 - 1) // 64 = 10 blocks
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(v1, v2))
    assert len(list(p.val_batches(2))) == 2
    x, y = v1[0]
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1, 0], y[0, -1])   # consecutive blocks share a token


def _save_load(state):
    buf = io.BytesIO(); torch.save(state, buf); buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize('batches_before', [0, 3, 17])
def test_block_loader_resume_is_bit_exact(batches_before):
    tokens = (np.arange(5000) * 7919 % 65521).astype(np.uint16)
    a = BlockLoader(tokens, block_size=48, batch_size=6, seed=11)
    for _ in range(batches_before): next(a)
    state = _save_load(a.state_dict())
    assert all(isinstance(v, int) for v in state.values())
    ref = [next(a) for _ in range(40)]           # 104 blocks per epoch: crosses two epoch boundaries
    b = BlockLoader(tokens, block_size=48, batch_size=6, seed=0)   # the seed comes from the state
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(ref, (next(b) for _ in range(40))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.dtype == torch.int64
    assert a.epoch >= 2 and a.state_dict() == b.state_dict()
    with pytest.raises(DataError, match='does not fit this data'):
        BlockLoader(tokens, block_size=48, batch_size=5).load_state_dict(state)


def test_block_loader_is_independent_of_global_rng():
    tokens = np.arange(3000, dtype=np.uint16)
    torch.manual_seed(0); a = next(BlockLoader(tokens, 32, 4, seed=5))[0]
    torch.manual_seed(1); torch.rand(100); b = next(BlockLoader(tokens, 32, 4, seed=5))[0]
    assert torch.equal(a, b)


def test_streaming_prepare_and_resume(files, cache):
    cfg = {'source': str(files / 'rows.jsonl'), 'text_column': 'body', 'streaming': True, 'max_val_tokens': 800,
           'max_train_tokens': 4000}
    tok = train_tokenizer(PARAS, 'unigram', vocab_size=400)
    p = prepare_data(cfg, tok, block_size=40, batch_size=3)
    assert isinstance(p.train, StreamingBlockLoader) and p.train_tokens is None and p.val_tokens == 800
    mem = prepare_data({**cfg, 'streaming': False, 'cache_dir': cache}, tok, block_size=40, batch_size=3)
    assert np.array_equal(np.asarray(p.val_packed.tokens), np.asarray(mem.val_packed.tokens)[:800])
    for _ in range(5): next(p.train)
    state = _save_load(p.train.state_dict())
    ref = [next(p.train) for _ in range(150)]    # several passes over the stream
    assert p.train.epoch >= 1
    q = prepare_data(cfg, tok, block_size=40, batch_size=3)
    q.train.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(ref, (next(q.train) for _ in range(150))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(DataError, match='same batch shape'):
        prepare_data(cfg, tok, block_size=40, batch_size=4).train.load_state_dict(state)


def test_default_corpus_and_lm_task(cache):
    from types import SimpleNamespace
    info = default_corpus_info('prose', max_bytes=400_000, cache_dir=f'{cache}/corpus')
    assert info['kind'] == 'prose' and info['python'] == '.'.join(map(str, sys.version_info[:3]))
    assert 0 < info['bytes']['validation'] <= 0.05 * sum(info['bytes'].values()) and set(info['origins']) == {'topics', 'docstrings'}
    dd = load_default_corpus('prose', max_bytes=400_000, cache_dir=f'{cache}/corpus')
    assert dd['train'].column_names == ['text', 'source'] and len(dd['validation']) == info['documents']['validation']
    assert cached_corpus_info('prose', max_bytes=400_000, cache_dir=f'{cache}/corpus') is not None
    run = SimpleNamespace(data=DataConfig(cache_dir=cache, corpus_kind='code', max_train_tokens=20_000),
                          tokenizer=TokenizerConfig(), train=SimpleNamespace(block_size=64, batch_size=4, seed=0))
    data = TASKS['lm'](run, None)
    assert (data.vocab_size, data.bytes_per_token, data.train_tokens) == (256, 1.0, 20_000)
    x, y = next(data.train)
    assert x.shape == (4, 64) and int(x.max()) < 256
    assert 'stdlib' in data.dataset['train']['source'][0]


# ---------------------------------------------------------------------------------------------- tokenizers

@pytest.fixture(scope='module')
def trained():
    return {k: train_tokenizer(PARAS * 2, k, vocab_size=600) for k in ('bpe', 'wordpiece', 'unigram')}


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_byte_round_trip(s):
    t = byte_tokenizer()
    assert t.encode(s) == list(s.encode('utf-8')) and t.decode(t.encode(s)) == s


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=('Cs',)), max_size=60))
def test_trained_round_trip(trained, s):
    for tok in trained.values():
        assert tok.decode(tok.encode(s)) == s


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-5, 1000), max_size=40))
def test_decode_never_fails(trained, ids):
    for tok in (byte_tokenizer(), *trained.values()):
        assert isinstance(tok.decode(ids), str)


def test_tokenizer_files(trained, tmp_path):
    for kind, tok in trained.items():
        (tmp_path / kind).mkdir()
        path = tok.save(tmp_path / kind)
        back = Tokenizer.load(tmp_path / kind)
        assert back == tok and back.kind == kind and back.eos_id == tok.eos_id and path.name == 'tokenizer.json'
    assert build_tokenizer(TokenizerConfig(path=str(tmp_path / 'bpe'))) == trained['bpe']
    with pytest.raises(DataError, match='No tokenizer file at'):
        Tokenizer.load(tmp_path / 'nothing')
    (tmp_path / 'cut.json').write_text(trained['bpe'].to_str()[:500])
    with pytest.raises(DataError, match='corrupt or truncated'):
        Tokenizer.load(tmp_path / 'cut.json')
    with pytest.raises(ConfigError, match='too small'):
        TokenizerConfig.from_dict({'kind': 'unigram', 'vocab_size': 257})
    with pytest.raises(ConfigError, match='needs texts'):
        build_tokenizer(TokenizerConfig(kind='bpe'))

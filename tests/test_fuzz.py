"""Hostile input, generated: config files and command-line overrides, and run directories whose files (config,
tokenizer, checkpoints, best, export, logs) were truncated, flipped, replaced or deleted. Every outcome of
`bytropix ...` is success, or exactly one `bytropix CMD: error: ...` line with exit status 2 — never a traceback.

The CLI runs in-process (`bytropix.cli.main`) for speed: an exception escaping `main` is a traceback for a user.
A few real subprocesses check the exit statuses. BYTROPIX_FUZZ=N runs N examples per property (default 40)."""
import io
import json
import os
import random
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

import bytropix.models.gpt  # noqa: F401
from bytropix.cli import main

ROOT = Path(__file__).resolve().parents[1]
N = int(os.environ.get('BYTROPIX_FUZZ', '40'))
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
WORDS = 'the quick brown fox jumps over a lazy dog while wizards judge boxing matches near old stone bridges'.split()


@pytest.fixture(scope='module')
def place(tmp_path_factory) -> Path:
    "A folder with a small text file (the data of the tiny runs) and its token cache."
    d = tmp_path_factory.mktemp('fuzz')
    rng = random.Random(0)
    (d / 'text.txt').write_text('\n\n'.join(' '.join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
                                            for _ in range(150)))
    (d / 'empty.txt').write_text('')
    (d / 'binary.txt').write_bytes(bytes(range(256)) * 40)
    return d


def tiny(out: Path, place: Path) -> list[str]:
    return [str(a) for a in ['--out_dir', out, '--data.source', place / 'text.txt', '--data.cache_dir', place / 'cache',
                             '--model.n_layer', 1, '--model.n_embd', 16, '--model.n_head', 2, '--train.batch_size', 2,
                             '--train.block_size', 16, '--train.steps', 4, '--train.eval_interval', 2, '--train.save_interval', 2,
                             '--train.eval_batches', 1, '--train.warmup_steps', 1, '--train.tensorboard', 'false',
                             '--train.num_threads', 1, '--train.sample_interval', 0, '--no-progress', '--sample-tokens', 0]]


def run(argv: list) -> tuple[int, str, str]:
    "`main(argv)` in-process: (status, stdout, stderr). An exception escaping `main` fails the test as it is."
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try: rc = main([str(a) for a in argv], out=out)
        except SystemExit as e: rc = e.code   # argparse's usage errors
    return rc, out.getvalue(), err.getvalue()


def assert_clean(rc, out: str, err: str, cmd: str) -> None:
    "Success, or exactly one `bytropix CMD: error:` line (argparse usage errors: its own two-line usage message)."
    assert 'Traceback' not in out + err, out + err
    if rc == 0: return
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    if lines and lines[0].startswith('usage: bytropix'):                  # argparse: usage line + one error line
        assert len(lines) == 2 and lines[1].startswith('bytropix ') and ': error: ' in lines[1], err
    else:
        assert len(lines) == 1 and lines[0].startswith(f'bytropix {cmd}: error: '), err


# ------------------------------------------------------------------------------------------------- config files, overrides
def hostile(*good, huge: bool = True):
    """Values a field may be given: good ones, wrong types, out-of-range and odd numbers, odd text. `huge=False` for
    fields that set how long a run takes (steps, tokens to sample, micro-batches): a legal 10¹² would just run long."""
    nums = (st.sampled_from([10**12, -10**9]), st.floats(allow_nan=True, allow_infinity=True)) if huge else \
           (st.sampled_from([-10**9]), st.floats(-3, 3) | st.sampled_from([float('nan'), float('inf'), -float('inf')]))
    return st.one_of(st.sampled_from(good), st.none(), st.booleans(), st.integers(-3, 3), *nums, st.text(max_size=8),
                     st.lists(st.integers(-2, 2), max_size=3), st.dictionaries(st.sampled_from(['a', 'lr']), st.integers(), max_size=2))

TRAIN = {'steps': hostile(1, 2, 3, huge=False), 'batch_size': hostile(1, 2, 4, 3000), 'block_size': hostile(8, 16, 4096),
         'lr': hostile(1e-3, 1e30, 0.0), 'min_lr': hostile(0.0, 1e-4), 'warmup_steps': hostile(0, 1, 5),
         'schedule': hostile('cosine', 'linear', 'step', 'constant', 'cosin'), 'weight_decay': hostile(0.0, 0.1),
         'betas': hostile([0.9, 0.99], [1.0, 0.5], [0.9]), 'eps': hostile(1e-8, 0.0), 'clip_grad': hostile(1.0, None, -1.0),
         'agc': hostile(None, 0.01), 'precision': hostile('fp32', 'bf16', 'fp16', 'fp8'), 'grad_accum': hostile(1, 2, huge=False),
         'eval_interval': hostile(0, 2), 'eval_batches': hostile(0, 1), 'save_interval': hostile(0, 2), 'keep_last': hostile(0, 1),
         'log_interval': hostile(1, 2), 'sample_interval': hostile(0, 2), 'sample_tokens': hostile(0, 4, huge=False),
         'sample_prompt': hostile('', 'Once upon a', '\n', '<|endoftext|>'), 'sample_top_k': hostile(None, 1, 0),
         'max_nonfinite': hostile(1, 3), 'device': hostile('cpu', 'auto', 'cuda', 'tpu:0'), 'seed': hostile(0, 7),
         'num_threads': hostile(None, 1), 'stpes': hostile(3)}
MODEL = {'n_layer': hostile(1, 2, 10**6), 'n_embd': hostile(16, 30, 10**7), 'n_head': hostile(2, 3, 0), 'n_kv_head': hostile(None, 1, 3),
         'style': hostile('llama', 'gpt2', 'lama'), 'vocab_size': hostile(64, 300), 'block_size': hostile(8, 16, 64),
         'dropout': hostile(0.0, 0.5, 1.5), 'tie_embeddings': hostile(True, False), 'sliding_window': hostile(None, 4),
         'rope_theta': hostile(10000.0, -1.0), 'multiple_of': hostile(16, 0), 'n_emdb': hostile(16)}
DATA = {'source': st.sampled_from(['{text}', '{empty}', '{binary}', '{place}/nowhere.txt', '{place}/*.md', '', '{place}']),
        'format': hostile(None, 'text', 'json', 'csv', 'parquet', 'arrow', 'txt'), 'text_column': hostile('text', 'body', ''),
        'sample_by': hostile('paragraph', 'line', 'document', 'word'), 'validation_fraction': hostile(0.05, 0.5, 1.0),
        'max_train_tokens': hostile(None, 100, 50_000), 'max_val_tokens': hostile(None, 10, 5_000), 'streaming': hostile(False, True),
        'num_proc': hostile(1, 2)}
TOKENIZER = {'kind': hostile('byte', 'bpe', 'unigram', 'wordpiece', 'bytes'), 'vocab_size': hostile(300, 260, 10, 10**9),
             'min_frequency': hostile(2, 0), 'path': st.sampled_from([None, '{place}/no.json', '{binary}', '{text}'])}
TOP = {'arch': hostile('gpt', 'gtp'), 'task': hostile('lm', 'llm', 'sudoku'), 'name': hostile(None, 'run', '2024'),
       'task_options': hostile({}, {'box': 2})}


@st.composite
def configs(draw):
    "A run config: some sections (some fields each, some keys misspelt or of the wrong kind), or a broken file."
    kind = draw(st.sampled_from(['yaml', 'yaml', 'yaml', 'json', 'garbage']))
    if kind == 'garbage':
        return 'yaml', draw(st.one_of(st.binary(max_size=60), st.sampled_from(
            [b'train:\n  lr: 1\n   steps: [2\n', b'- a\n- b\n', b'train: [1, 2]\n', b'model: 5\n', b'\xff\xfe\x00',
             b'train:\n  steps: 3\nname: caf\xe9\n', b'!!python/object:os.system {}\n', b'a: &x [*x]\n'])))
    d = {}
    for name, fields in (('train', TRAIN), ('model', MODEL), ('data', DATA), ('tokenizer', TOKENIZER)):
        if draw(st.booleans()):
            keys = draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True))
            d[name] = {k: draw(fields[k]) for k in keys}
    for k in draw(st.lists(st.sampled_from(sorted(TOP)), max_size=2, unique=True)): d[k] = draw(TOP[k])
    return kind, d


@st.composite
def override_lists(draw):
    "Command-line overrides: real fields with hostile values, dotted paths that go nowhere, odd spellings."
    out = []
    for _ in range(draw(st.integers(0, 3))):
        sec, fields = draw(st.sampled_from([('train', TRAIN), ('model', MODEL), ('data', DATA), ('tokenizer', TOKENIZER)]))
        key = draw(st.one_of(st.sampled_from(sorted(fields)), st.sampled_from(['x', 'lr.y', ''])))
        val = draw(st.one_of(st.sampled_from(['3e-4', '"2024"', '[1,2]', '{a: 1}', 'null', 'true', '-1', '1e400', 'nan',
                                              '', ':', '[', 'é', '--x']), st.text(max_size=6)))
        form = draw(st.sampled_from(['two', 'eq', 'flag']))
        path = f'--{sec}.{key}' if key else f'--{sec}.'
        out += [f'{path}={val}'] if form == 'eq' else ([path] if form == 'flag' else [path, val])
    return out


def _fill(v, place: Path):
    "Put the paths of this run's files into the `{text}`-style placeholders of the strategies."
    if isinstance(v, str):
        for k, p in (('{place}', place), ('{text}', place / 'text.txt'), ('{empty}', place / 'empty.txt'),
                     ('{binary}', place / 'binary.txt')): v = v.replace(k, str(p))
        return v
    if isinstance(v, dict): return {k: _fill(x, place) for k, x in v.items()}
    return v


@FUZZ
@given(cfg=configs(), over=override_lists(), case=st.integers(0, 10**9))
def test_config_files_and_overrides(place, tmp_path_factory, cfg, over, case):
    kind, content = cfg
    d = tmp_path_factory.mktemp('cfg')
    path = d / f'run.{kind}'
    if isinstance(content, bytes): raw = content
    elif kind == 'json': raw = json.dumps(_fill(content, place), default=str).encode()
    else: raw = yaml.safe_dump(_fill(content, place), allow_unicode=True).encode()
    path.write_bytes(raw)
    # the tiny-run settings first, then the fuzzed file and overrides (which win: they come later / from the file)
    base = [a for a in tiny(d / 'out', place) if a not in ('--no-progress',)]
    argv = ['train', path, '--no-progress', *_keep_small(base, raw), *[_fill(o, place) for o in over]]
    rc, out, err = run(argv)
    assert_clean(rc, out, err, 'train')


def _keep_small(base: list[str], raw: bytes) -> list[str]:
    "The tiny-run overrides, except those a config file sets (so the file's hostile values are what gets checked)."
    try: cfg = yaml.safe_load(raw) if raw.strip() else {}
    except Exception: cfg = {}
    if not isinstance(cfg, dict): return base
    keep, i = [], 0
    while i < len(base):
        a = base[i]
        sec, _, key = a[2:].partition('.')
        value_follows = i + 1 < len(base) and not base[i + 1].startswith('--')
        section = cfg.get(sec)
        if not (isinstance(section, dict) and key in section) or sec in ('out_dir',) or a == '--out_dir':
            keep += base[i:i + 1 + value_follows]
        i += 1 + value_follows
    return keep


# ------------------------------------------------------------------------------------------------- damaged run directories
@pytest.fixture(scope='module')
def trained(place, tmp_path_factory) -> Path:
    "A finished tiny run: config, tokenizer, checkpoints step-2 and step-4, best, export, logs."
    out = tmp_path_factory.mktemp('trained') / 'run'
    rc, o, e = run(['train', *tiny(out, place), '--train.sample_interval', 2, '--train.sample_tokens', 4])
    assert rc == 0, o + e
    return out


FILES = ['config.yaml', 'tokenizer.json', 'metrics.jsonl', 'samples.txt', 'checkpoints/step-4/model.safetensors',
         'checkpoints/step-4/optimizer.pt', 'checkpoints/step-4/state.json', 'checkpoints/step-2/state.json',
         'best/model.safetensors', 'best/state.json', 'export/config.json', 'export/model.safetensors',
         'export/tokenizer.json', 'export/README.md', '.lock']
DAMAGE = ['truncate', 'flip', 'random', 'empty', 'delete', 'latin1', 'json-value', 'directory', 'nan-weights']


def _damage(path: Path, how: str, rnd: random.Random) -> None:
    raw = path.read_bytes() if path.is_file() else b''
    if how == 'truncate': path.write_bytes(raw[:rnd.randrange(len(raw) + 1)])
    elif how == 'flip' and raw:
        b = bytearray(raw)
        for _ in range(rnd.randint(1, 4)): b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        path.write_bytes(bytes(b))
    elif how == 'random': path.write_bytes(bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 200))))
    elif how == 'empty': path.write_bytes(b'')
    elif how == 'delete': path.unlink(missing_ok=True)
    elif how == 'latin1': path.write_bytes(raw[:20] + 'caf\xe9 '.encode('latin-1') + raw[20:])
    elif how == 'directory': path.unlink(missing_ok=True); path.mkdir()
    elif how == 'nan-weights' and path.suffix == '.safetensors':   # a well-formed file of a diverged (or damaged) model
        from safetensors.torch import load_file, save_file
        w = load_file(str(path))
        k = rnd.choice(sorted(w))
        w[k] = w[k].clone().fill_(float('nan') if rnd.random() < 0.5 else float('inf'))
        save_file({n: t.contiguous() for n, t in w.items()}, str(path))
    elif how == 'json-value':   # valid JSON/YAML, wrong content: one value replaced by something of another kind
        try: obj = yaml.safe_load(raw.decode()) if path.suffix == '.yaml' else json.loads(raw)
        except Exception: return
        def walk(o, depth=0):
            if isinstance(o, dict) and o:
                k = rnd.choice(sorted(o, key=str))
                if depth < 2 and isinstance(o[k], (dict, list)) and rnd.random() < 0.6: walk(o[k], depth + 1)
                else: o[k] = rnd.choice([None, -1, 10**12, 'x', [1], {'a': 1}, 1.5, True])
            elif isinstance(o, list) and o: o[rnd.randrange(len(o))] = rnd.choice([None, 'x', {'a': 1}, -5])
        walk(obj)
        path.write_text(yaml.safe_dump(obj) if path.suffix == '.yaml' else json.dumps(obj))


COMMANDS = [lambda r, p: ['eval', r, '--max-batches', 1],
            lambda r, p: ['eval', r, '--checkpoint', 'latest', '--json'],
            lambda r, p: ['generate', r, '--prompt', 'the', '--max-new-tokens', 3, '--checkpoint', 'latest'],
            lambda r, p: ['generate', r / 'export', '--prompt', 'the', '--max-new-tokens', 3],
            lambda r, p: ['generate', r, '--prompt', 'the', '--max-new-tokens', 3, '--temperature', 0],
            lambda r, p: ['average', r, '--last', 2, '--out', r.parent / 'avg'],
            lambda r, p: ['train', '--resume', *tiny(r, p), '--train.steps', 6],
            lambda r, p: ['train', '--resume', 'best', *tiny(r, p), '--train.steps', 6]]


@FUZZ
@given(files=st.lists(st.sampled_from(FILES), min_size=1, max_size=2, unique=True),
       how=st.sampled_from(DAMAGE), command=st.integers(0, len(COMMANDS) - 1), seed=st.integers(0, 2**32 - 1))
def test_damaged_run_directories(trained, place, tmp_path_factory, files, how, command, seed):
    rnd = random.Random(seed)
    run_dir = tmp_path_factory.mktemp('damaged') / 'run'
    shutil.copytree(trained, run_dir)
    for f in files: _damage(run_dir / f, how, rnd)
    argv = COMMANDS[command](run_dir, place)
    rc, out, err = run(argv)
    assert_clean(rc, out, err, argv[0])


# ------------------------------------------------------------------------------------------------- real processes, exit codes
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.parametrize('damage', ['weights', 'tokenizer'])   # each a real process: the exit status the shell sees
def test_exit_status_of_a_real_process(trained, tmp_path, damage):
    run_dir = tmp_path / 'run'
    shutil.copytree(trained, run_dir)
    target = {'config': 'config.yaml', 'weights': 'checkpoints/step-4/model.safetensors',
              'state': 'checkpoints/step-4/state.json', 'tokenizer': 'tokenizer.json'}[damage]
    _damage(run_dir / target, 'truncate' if damage != 'config' else 'latin1', random.Random(1))
    if damage == 'weights': (run_dir / target).write_bytes((run_dir / target).read_bytes()[:100])
    p = subprocess.run([sys.executable, '-m', 'bytropix.cli', 'eval', str(run_dir), '--checkpoint', 'latest'],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert_clean(p.returncode, p.stdout, p.stderr, 'eval')
    assert p.returncode == 2


def test_exit_status_of_a_bad_config_file(tmp_path):
    (tmp_path / 'bad.yaml').write_bytes(b'train:\n  steps: [3\n')
    p = subprocess.run([sys.executable, '-m', 'bytropix.cli', 'train', str(tmp_path / 'bad.yaml')], env=ENV,
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith('bytropix train: error: ') and p.stderr.count('\n') == 1, p.stderr

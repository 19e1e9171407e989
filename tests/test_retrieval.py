"""N-gram retrieval (`retrieval:` in a run config): trained, fitted and evaluated by `bytropix train`, reused by
`bytropix eval` and `bytropix generate` (refitted for another checkpoint), and bad settings refused in one line."""
import json
from pathlib import Path

import pytest
import yaml

import bytropix.models  # noqa: F401  (registers every architecture)
from bytropix.cli import main
from bytropix.config import load_config
from bytropix.core import ConfigError
from bytropix.training.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--model.n_layer', '1', '--model.n_head', '2', '--model.n_embd', '32', '--train.batch_size', '4',
        '--train.block_size', '32', '--train.warmup_steps', '1', '--train.eval_batches', '4', '--train.sample_interval', '0',
        '--train.tensorboard', 'false', '--train.num_threads', '1', '--train.save_interval', '10',
        '--data.max_train_tokens', '60000', '--data.max_val_tokens', '4000']


@pytest.fixture(scope='module')
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('ret')/'run'
    cfg = out.parent/'cfg.yaml'
    d = yaml.safe_load((ROOT/'configs'/'default.yaml').read_text())   # the main job's recipe, tiny
    d['tokenizer'] = {'kind': 'bpe', 'vocab_size': 300}
    d['retrieval'] = {'kind': 'ngram', 'orders': [1, 2, 4, 8, 16], 'calibration_tokens': 4096}
    cfg.write_text(yaml.safe_dump(d))
    assert main(['train', str(cfg), '--out_dir', str(out), '--train.steps', '20', *TINY]) == 0
    return out


def test_train_logs_and_saves_the_mixture(run):
    recs = [json.loads(l) for l in (run/'metrics.jsonl').read_text().splitlines()]
    last = [r for r in recs if 'val/retrieval/bpb' in r]
    assert len(last) == 1 and last[0]['step'] == 20
    model_bpb = [r['val/bpb'] for r in recs if 'val/bpb' in r][-1]
    assert last[0]['val/retrieval/bpb'] < model_bpb          # the index knows the training text; 20 steps do not
    saved = json.loads(RunDir(run).retrieval_file.read_text())
    assert saved['step'] == 20 and saved['orders'] == [1, 2, 4, 8, 16] and len(saved['lambdas']) == 5


def test_eval_reuses_or_refits(run, capsys):
    f = RunDir(run).retrieval_file
    before = f.read_text()
    assert main(['eval', str(run), '--checkpoint', 'latest', '--json']) == 0
    r = json.loads(capsys.readouterr().out)
    assert r['retrieval/bpb'] < r['bpb'] and f.read_text() == before           # fitted at step 20: reused
    assert main(['eval', str(run), '--checkpoint', '10', '--json']) == 0       # another checkpoint: refitted and saved
    r10 = json.loads(capsys.readouterr().out)
    assert r10['step'] == 10 and json.loads(f.read_text())['step'] == 10 and r10['retrieval/bpb'] < r10['bpb']
    assert main(['eval', str(run), '--checkpoint', 'latest', '--json', '--no-retrieval']) == 0
    assert 'retrieval/bpb' not in json.loads(capsys.readouterr().out)


def test_damaged_retrieval_file_is_refitted(run, capsys):
    f = RunDir(run).retrieval_file
    for junk in (b'\xff\x00 not json', b'{"orders": [1, 2, 4, 8, 16], "lambdas": [[0.5]], "step": 20}'):
        f.write_bytes(junk)
        assert main(['eval', str(run), '--checkpoint', 'latest', '--json']) == 0
        r = json.loads(capsys.readouterr().out)
        assert r['retrieval/bpb'] < r['bpb'] and json.loads(f.read_text())['step'] == 20   # refitted, rewritten whole


def test_generate_samples_from_the_mixture(run, capsys):
    assert main(['generate', str(run), '--checkpoint', 'latest', '--prompt', 'def ', '--max-new-tokens', '24',
                 '--temperature', '0']) == 0
    mixed = capsys.readouterr()
    assert 'indexing the training split' in mixed.err and mixed.out.startswith('def ')
    assert main(['generate', str(run), '--checkpoint', 'latest', '--prompt', 'def ', '--max-new-tokens', '24',
                 '--temperature', '0', '--no-retrieval']) == 0
    alone = capsys.readouterr()
    assert 'indexing' not in alone.err and alone.out.startswith('def ')


@pytest.mark.parametrize('over, msg', [
    ({'retrieval': {'kind': 'ngram', 'orders': []}}, 'retrieval.orders'),
    ({'retrieval': {'kind': 'ngram', 'orders': [0, 2]}}, 'retrieval.orders'),
    ({'retrieval': {'kind': 'ngram', 'calibration_tokens': 0}}, 'retrieval.calibration_tokens'),
    ({'retrieval': {'kind': 'knn'}}, 'retrieval.kind'),
    ({'retrieval': {'kind': 'ngram', 'max_tokens': 1}}, 'retrieval.max_tokens'),
    ({'retrieval': {'kind': 'ngram'}, 'task': 'mdlm', 'model': {'causal': False}}, 'retrieval'),
    ({'retrieval': {'kind': 'ngram'}, 'data': {'streaming': True}}, 'retrieval'),
])
def test_bad_settings_are_refused(over, msg):
    with pytest.raises(ConfigError, match=msg.replace('.', r'\.')):
        load_config(ROOT/'configs'/'default.yaml', over)


def test_serve_answers_like_generate(run, capsys):
    "`bytropix serve` serves what `bytropix generate` samples — the mixture, batched through the model's KV cache — or, with `--no-retrieval`, the model alone."
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from bytropix.serving.server import BackgroundServer, ServerSettings, create_app, load_served
    from bytropix.training.retrieval import RetrievalLM
    want = {}
    for flag in ((), ('--no-retrieval',)):
        assert main(['generate', str(run), '--checkpoint', 'latest', '--prompt', 'def ', '--max-new-tokens', '24',
                     '--temperature', '0', *flag]) == 0
        want[bool(flag)] = capsys.readouterr().out
    mixed, alone = load_served('mixed', run, checkpoint='latest'), load_served('alone', run, checkpoint='latest', retrieval=False)
    assert isinstance(mixed.model, RetrievalLM) and mixed.engine.batched and not isinstance(alone.model, RetrievalLM)
    with BackgroundServer(create_app([mixed, alone], ServerSettings())) as s:
        def ask(model, prompt):
            r = httpx.post(s.url + '/v1/completions', timeout=120,
                           json={'model': model, 'prompt': prompt, 'max_tokens': 24, 'temperature': 0})
            return r.json()['choices'][0]['text']
        with ThreadPoolExecutor(3) as ex:   # prompts of different lengths share the ragged batch
            got = list(ex.map(lambda a: ask(*a), [('mixed', 'def '), ('mixed', 'import os\nimport sys\n\n'), ('alone', 'def ')]))
    assert want[False] in ('def ' + got[0], 'def ' + got[0] + '\n'), (want[False], got[0])
    assert want[True] in ('def ' + got[2], 'def ' + got[2] + '\n'), (want[True], got[2])


def test_run_directory_serves_its_mixture_without_the_training_data(tmp_path, capsys):
    """A retrieval run keeps the tokens it indexes: generate answers the same after the training text has moved; with
    that copy gone (or damaged) as well, generate says so in one line that points to --no-retrieval, which works."""
    text = tmp_path/'text.txt'
    text.write_text('\n'.join(f'line {i % 37} of a small text with some repeats {i % 11}' for i in range(3000)))
    cfg = tmp_path/'cfg.yaml'
    cfg.write_text(yaml.safe_dump({'tokenizer': {'kind': 'byte'}, 'data': {'source': str(text), 'sample_by': 'line'},
                                   'retrieval': {'kind': 'ngram', 'orders': [1, 2, 4, 8], 'calibration_tokens': 4096}}))
    run = tmp_path/'run'
    assert main(['train', str(cfg), '--out_dir', str(run), '--train.steps', '10', *TINY]) == 0
    rd = RunDir(run)
    assert rd.retrieval_tokens_file.is_file() and 'tokens_sha256' in json.loads(rd.retrieval_file.read_text())
    args = ['generate', str(run), '--prompt', 'line ', '--max-new-tokens', '12', '--temperature', '0']
    capsys.readouterr()
    assert main(args) == 0
    before = capsys.readouterr().out
    text.rename(tmp_path/'moved.txt')
    assert main(args) == 0 and capsys.readouterr().out == before          # from the run directory's own copy
    assert main(['eval', str(run), '--json']) == 2                        # eval needs the validation text itself
    assert 'text.txt' in capsys.readouterr().err
    kept = rd.retrieval_tokens_file.read_bytes()
    for damage in (kept[:-2], None):                                     # cut short, then gone
        if damage is None: rd.retrieval_tokens_file.unlink()
        else: rd.retrieval_tokens_file.write_bytes(damage)
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith('bytropix generate: error: n-gram retrieval indexes') and '--no-retrieval' in err[-1]
        assert 'Traceback' not in '\n'.join(err)
    assert main(args + ['--no-retrieval']) == 0 and capsys.readouterr().out.startswith('line ')
    (tmp_path/'moved.txt').rename(text)                                   # the text back: the copy is written again
    assert main(args) == 0 and capsys.readouterr().out == before and rd.retrieval_tokens_file.read_bytes() == kept

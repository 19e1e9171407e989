"The `bytropix` command: entry point, help, config files, train/resume, eval, generate, solve, average, tokenizer."
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bytropix.cli import main
from bytropix.config import RunConfig, load_config
from bytropix.models.base import BytropixModel, build_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}
TINY_LM = ['--model.n_layer', '1', '--model.n_embd', '32', '--model.n_head', '2', '--train.batch_size', '4',
           '--train.block_size', '32', '--train.eval_batches', '2', '--train.tensorboard', 'false', '--no-progress',
           '--data.max_train_tokens', '50000', '--data.max_val_tokens', '5000', '--train.warmup_steps', '2']


def run(*argv, capsys=None):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr() if capsys is not None else None
    return rc, (out.out + out.err) if out is not None else ''


def test_installed_entry_point_help():
    r = subprocess.run(['bytropix', '--help'], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('usage: bytropix')
    for cmd in ('train', 'eval', 'generate', 'solve', 'average', 'tokenizer', 'models'): assert cmd in r.stdout


@pytest.mark.parametrize('cmd', [['train'], ['eval'], ['generate'], ['solve'], ['average'], ['tokenizer', 'train'],
                                 ['models']])
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e: main([*cmd, '--help'])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: bytropix {' '.join(cmd)}") and len(text) > 100


def test_module_entry_point_and_version():
    r = subprocess.run([sys.executable, '-m', 'bytropix.cli', '--version'], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith('bytropix ')


def test_no_command_prints_help_and_fails(capsys):
    rc, text = run(capsys=capsys)
    assert rc == 2 and 'COMMAND' in text


def _flat(d: dict, prefix: str = '') -> dict:
    return {k2: v2 for k, v in d.items() for k2, v2 in (_flat(v, f'{prefix}{k}.').items() if isinstance(v, dict) and v
                                                        else [(f'{prefix}{k}', v)])}


def test_default_config_file_is_the_run_config_plus_the_recipe():
    # configs/default.yaml is RunConfig() written out, except the recipe's choices (marked `recipe` in the file)
    main_job = _flat(load_config(ROOT/'configs'/'default.yaml').resolved().to_dict())
    plain = _flat(RunConfig().resolved().to_dict())
    differ = {k for k in main_job.keys() | plain.keys() if main_job.get(k, 'absent') != plain.get(k, 'absent')}
    assert {k.split('.')[0] if k.startswith('retrieval') else k for k in differ} == {
        'model.mlp_act', 'tokenizer.kind', 'tokenizer.vocab_size', 'train.steps', 'train.schedule', 'train.compile',
        'retrieval'}, differ
    text = (ROOT/'configs'/'default.yaml').read_text()
    assert text.count('# recipe') == 7


@pytest.mark.parametrize('path', sorted((ROOT/'configs').glob('*.y*ml')), ids=lambda p: p.name)
def test_every_shipped_config_validates_and_builds(path):
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
    run_cfg = load_config(path)
    # shapes only (fake tensors): configs/tinyllama.yaml must not allocate 4 GB here; models whose initialisation
    # reads values (the puzzle models' truncated-normal init) are built for real
    try:
        with FakeTensorMode(): model = build_model(run_cfg.arch, run_cfg.model_config)
    except DataDependentOutputException:
        model = build_model(run_cfg.arch, run_cfg.model_config)
    assert model.num_parameters() > 0
    assert run_cfg.out_dir.startswith('runs/')


def test_models_lists_every_architecture(capsys):
    rc, text = run('models', capsys=capsys)
    assert rc == 0
    for arch in ('gpt', 'bdh', 'hrm', 'trm', 'wubu', 'wubu_bytes', 'puzzle_transformer'): assert f'`{arch}`' in text


def test_train_resume_eval_generate_average(tmp_path, capsys):
    out = tmp_path/'run'
    common = ['--out_dir', out, '--train.save_interval', '5', '--train.eval_interval', '5', '--train.keep_last', '0', *TINY_LM]
    rc, text = run('train', '--train.steps', '10', *common, '--sample-tokens', '20', capsys=capsys)
    assert rc == 0, text
    assert 'done: step 10' in text and '--- sample ---' in text
    # a second `train` into the same out_dir refuses instead of clobbering the run
    rc, text = run('train', '--train.steps', '10', *common, capsys=capsys)
    assert rc == 2 and '--resume' in text
    # resume with more steps continues from step 10
    rc, text = run('train', '--resume', '--train.steps', '15', *common, '--sample-tokens', '0', capsys=capsys)
    assert rc == 0, text
    assert 'done: step 15' in text and 'step 1/' not in text
    steps = [json.loads(l)['step'] for l in (out/'metrics.jsonl').read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 15

    rc, text = run('eval', out, '--json', '--checkpoint', 'latest', capsys=capsys)
    assert rc == 0, text
    r = json.loads(text)
    assert r['step'] == 15 and r['bpb'] > 0 and abs(r['ppl'] - torch.tensor(r['loss']).exp().item()) < 1e-3 * r['ppl']

    rc, a = run('generate', out/'export', '--prompt', 'import ', '--max-new-tokens', '15', '--temperature', '0', capsys=capsys)
    rc2, b = run('generate', out, '--checkpoint', 'latest', '--prompt', 'import ', '--max-new-tokens', '15',
                 '--temperature', '0', '--stream', capsys=capsys)
    assert rc == rc2 == 0 and a == b and a.startswith('import ')
    rc, c = run('generate', out/'export', '--prompt', 'import ', '--max-new-tokens', '15', '--seed', '3',
                '--num-samples', '2', '--top-p', '0.9', capsys=capsys)
    assert rc == 0 and c.count('import ') >= 2

    rc, text = run('average', out, '--last', '2', '--out', tmp_path/'avg', capsys=capsys)
    assert rc == 0, text
    avg = BytropixModel.from_pretrained(tmp_path/'avg')
    from safetensors.torch import load_file
    w = [load_file(out/'checkpoints'/f'step-{s}'/'model.safetensors') for s in (10, 15)]
    k = 'lm_head.weight' if 'lm_head.weight' in w[0] else sorted(w[0])[0]
    torch.testing.assert_close(avg.state_dict()[k], (w[0][k] + w[1][k]) / 2)
    assert (tmp_path/'avg'/'tokenizer.json').is_file() and 'average of 2' in (tmp_path/'avg'/'README.md').read_text()


def test_train_from_config_file_with_overrides_anywhere(tmp_path, capsys):
    cfg = tmp_path/'c.yaml'
    cfg.write_text('train:\n  steps: 3\n  eval_interval: 0\n')
    rc, text = run('train', '--out_dir', tmp_path/'r', cfg, *TINY_LM, '--sample-tokens', '0', capsys=capsys)
    assert rc == 0, text
    saved = load_config(tmp_path/'r'/'config.yaml')
    assert saved.train.steps == 3 and saved.model_config.n_embd == 32


def test_compile_without_a_compiler_trains_uncompiled_and_says_so(tmp_path):
    # `train.compile: true` on a machine whose C++ compiler does not work (CXX names none; a fresh Inductor cache, so
    # nothing compiled earlier is reused): one line that names the fix, then the run trains uncompiled to the end
    env = {**ENV, 'CXX': str(tmp_path/'no-such-g++'), 'TORCHINDUCTOR_CACHE_DIR': str(tmp_path/'inductor')}
    r = subprocess.run(['bytropix', 'train', '--out_dir', tmp_path/'r', '--train.steps', '2', '--train.eval_interval', '0',
                        '--train.compile', 'true', *TINY_LM, '--sample-tokens', '0'],
                       capture_output=True, text=True, env=env, timeout=600)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text
    said = [l for l in text.splitlines() if l.startswith('train.compile:')]
    assert len(said) == 1 and 'C++ compiler' in said[0] and 'train.compile: false' in said[0], text
    assert 'Traceback' not in text and 'done: step 2' in text, text


@pytest.mark.parametrize('argv, msg', [
    (['train', '--train.lr', '-1'], 'lr'),
    (['train', '--model.n_embd', '30', '--model.n_head', '4'], 'n_head'),
    (['train', 'missing.yaml'], 'does not exist'),
    (['train', 'a.yaml', 'b.yaml'], 'one config file'),
    (['train', '--arch', 'gtp'], 'gpt'),
    (['eval', 'nowhere'], 'not a training run'),
    (['generate', 'nowhere', '--prompt', 'x'], 'does not exist'),
    (['tokenizer', 'train', 'no/such/file.txt', '--out', 'x.json'], 'no/such/file.txt'),
    (['tokenizer', 'train', '--kind', 'bpe', '--vocab-size', '10'], 'vocab_size'),
    (['tokenizer', 'train', '--kind', 'bytes'], 'byte'),
])
def test_bad_input_is_one_clear_error(argv, msg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, text = run(*argv, capsys=capsys)
    assert rc == 2
    assert msg in text and 'Traceback' not in text
    assert not (tmp_path/'runs').exists() or not any((tmp_path/'runs').rglob('*.safetensors'))


@pytest.mark.parametrize('argv, msg', [
    (['average', 'r', '--last', '1'], 'argument --last: 1 is out of range: use a value ≥ 2'),
    (['generate', 'r', '--temperature', '-0.5'], 'argument --temperature: -0.5 is out of range'),
    (['solve', 'r', '--n', '0'], 'argument --n: 0 is out of range'),
    (['tokenizer', 'train', '--max-bytes', '0'], 'argument --max-bytes: 0 is out of range'),
])
def test_numbers_out_of_range_are_usage_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) as e: main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_tokenizer_train_on_files(tmp_path, capsys):
    d = tmp_path/'texts'; d.mkdir()
    for i in range(3):
        (d/f'{i}.jsonl').write_text('\n'.join(json.dumps({'body': f"record {j}: tokenizers learn frequent pieces of text {i * j}"})
                                             for j in range(300)))
    rc, text = run('tokenizer', 'train', d, '--text-column', 'body', '--kind', 'unigram', '--vocab-size', '300',
                   '--out', f'{tmp_path}/out/', capsys=capsys)
    assert rc == 0, text
    from bytropix.data.tokenizers import Tokenizer
    tok = Tokenizer.load(tmp_path/'out'/'tokenizer.json')
    assert tok.kind == 'unigram' and tok.vocab_size <= 300 and 'tokens per byte' in text
    rc, text = run('tokenizer', 'train', d, '--text-column', 'text', capsys=capsys)
    assert rc == 2 and 'body' in text   # the missing column is named, with the columns that exist


@pytest.fixture(scope='module')
def sudoku_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('sudoku')/'run'
    rc = main(['train', 'configs/trm-sudoku.yaml' if Path('configs/trm-sudoku.yaml').exists() else str(ROOT/'configs'/'trm-sudoku.yaml'),
               '--out_dir', str(out), '--task_options.box', '2', '--task_options.n_train', '64', '--task_options.n_test', '8',
               '--task_options.cache_dir', str(out.parent/'cache'), '--train.block_size', '16', '--train.batch_size', '8',
               '--train.steps', '4', '--train.eval_interval', '0', '--train.tensorboard', 'false', '--no-progress',
               '--model.n_embd', '32', '--model.n_head', '2'])
    assert rc == 0
    return out


def test_solve_held_out_and_given_puzzles(sudoku_run, capsys):
    capsys.readouterr()
    rc, text = run('solve', sudoku_run, '--n', '2', capsys=capsys)
    assert rc == 0, text
    assert text.count('== held-out puzzle') == 2 and 'solved ' in text and '/2 held-out puzzles exactly' in text
    rc, text = run('solve', sudoku_run, '--puzzle', '1.3.\\n..1.\\n.1..\\n4.2.', capsys=capsys)
    assert rc == 0, text
    assert text.startswith('puzzle:') and 'model:' in text
    rc, text = run('solve', sudoku_run, '--puzzle', '1.3', capsys=capsys)
    assert rc == 2 and '16 cells' in text
    rc, text = run('solve', sudoku_run, '--file', sudoku_run/'no-such-puzzle.txt', capsys=capsys)
    assert rc == 2 and 'no-such-puzzle.txt does not exist' in text and 'Traceback' not in text
    (sudoku_run.parent/'p.txt').write_text('1.3.\n..1.\n.1..\n4.2.\n')
    rc, text = run('solve', sudoku_run, '--file', sudoku_run.parent/'p.txt', capsys=capsys)
    assert rc == 0 and text.startswith('puzzle:')
    rc, text = run('generate', sudoku_run, '--prompt', 'x', capsys=capsys)
    assert rc == 2 and 'bytropix solve' in text


def test_solve_refuses_a_language_model(tmp_path, capsys):
    out = tmp_path/'lm'
    assert main(['train', '--out_dir', str(out), '--train.steps', '2', '--train.eval_interval', '0', '--sample-tokens', '0',
                 *TINY_LM]) == 0
    capsys.readouterr()
    rc, text = run('solve', out, capsys=capsys)
    assert rc == 2 and 'bytropix generate' in text

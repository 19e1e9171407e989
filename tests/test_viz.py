"`bytropix plot`: every kind as PNG and as HTML from trained runs, rendered headless; bad input is one clear line."
import os

os.environ.setdefault('MPLBACKEND', 'Agg')   # headless: before anything imports matplotlib

from pathlib import Path

import pytest

from bytropix.cli import main

TEXT = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog, then reads the manual page {i}."
                   for i in range(400))
TINY = {'gpt': ['--model.n_layer', '2', '--model.n_embd', '32', '--model.n_head', '2'],
        'wubu': ['--model.n_layer', '1', '--model.n_embd', '32', '--model.n_head', '2', '--model.level_dims', '[16, 8]',
                 '--model.boundary_points', '[3, 2]'],
        'bdh': ['--model.n_layer', '2', '--model.n_embd', '32', '--model.n_head', '2',
                '--model.mlp_internal_dim_multiplier', '8', '--model.dropout', '0.0']}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "Three tiny trained runs (gpt, wubu, bdh) on a small text, 8 steps each."
    root = tmp_path_factory.mktemp('viz')
    (root/'text.txt').write_text(TEXT, encoding='utf-8')
    out = {}
    for arch, model in TINY.items():
        out[arch] = root/arch
        rc = main(['train', '--arch', arch, *model, '--data.source', str(root/'text.txt'), '--data.cache_dir', str(root/'cache'),
                   '--out_dir', str(out[arch]), '--train.steps', '8', '--train.batch_size', '4', '--train.block_size', '32',
                   '--train.log_interval', '2', '--train.eval_interval', '4', '--train.eval_batches', '1',
                   '--train.warmup_steps', '1', '--train.sample_interval', '0', '--train.tensorboard', 'false', '--no-progress'])
        assert rc == 0
    return out


def plot(*argv, capsys):
    rc = main(['plot', *[str(a) for a in argv]])
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.mark.parametrize('kind, arch', [('curves', 'gpt'), ('wubu', 'wubu'), ('disk', 'wubu'), ('attention', 'gpt'),
                                        ('attention', 'wubu'), ('attention', 'bdh'), ('bdh', 'bdh')])
@pytest.mark.parametrize('suffix', ['png', 'html'])
def test_every_kind_renders(runs, tmp_path, capsys, kind, arch, suffix):
    f = tmp_path/f'{kind}.{suffix}'
    rc, text = plot(runs[arch], '--kind', kind, '--out', f, '--plotlyjs', 'cdn', capsys=capsys)
    assert rc == 0, text
    assert f'wrote {f}' in text
    data = f.read_bytes()
    if suffix == 'png':
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5_000
        from PIL import Image
        w, h = Image.open(f).size
        assert w > 300 and h > 200
    else:
        html = data.decode()
        assert '<html>' in html and 'plotly-graph-div' in html and 'Plotly.newPlot' in html
        assert 'src="https://cdn.plot.ly' in html and len(html) < 2_000_000   # the CDN variant: plotly.js not embedded
    assert [p.name for p in tmp_path.iterdir()] == [f.name]               # no temporaries left


def test_curves_overlay_runs_and_inline_plotlyjs(runs, tmp_path, capsys):
    f = tmp_path/'curves.html'
    rc, text = plot(runs['gpt'], runs['wubu'], runs['bdh'], '--kind', 'curves', '--keys', 'train/loss,val/bpb', '--out', f,
                    capsys=capsys)
    assert rc == 0, text
    html = f.read_text()
    assert all(f'"name":"{a}"' in html for a in ('gpt', 'wubu', 'bdh'))     # one line per run
    assert 'src="https://cdn.plot.ly' not in html and len(html) > 1_000_000   # plotly.js inline: opens offline


def test_model_kinds_take_layer_head_and_text(runs, tmp_path, capsys):
    f = tmp_path/'a.png'
    rc, text = plot(runs['bdh'], '--kind', 'bdh', '--layer', '0', '--head', '1', '--text', 'for x in range(3): print(x)',
                    '--checkpoint', 'latest', '--out', f, capsys=capsys)
    assert rc == 0, text and f.is_file()
    rc, text = plot(runs['gpt']/'export', '--kind', 'attention', '--layer', '-1', '--head', '0', '--out', f, capsys=capsys)
    assert rc == 0, text                                                    # an exported model works too


@pytest.mark.parametrize('argv, message', [
    (['{gpt}', '--kind', 'bdh', '--out', '{tmp}/x.png'], "this run's model is `gpt`"),
    (['{gpt}', '--kind', 'disk', '--out', '{tmp}/x.png'], 'draws WuBu levels'),
    (['{gpt}', '--kind', 'wubu', '--out', '{tmp}/x.png'], 'No WuBu geometry'),
    (['{gpt}', '{bdh}', '--kind', 'attention', '--out', '{tmp}/x.png'], 'draws one model; pass one run (got 2)'),
    (['{gpt}', '--out', '{tmp}/x.jpg'], 'use a file ending in .png, .svg, .pdf, .html'),
    (['{gpt}', '--keys', 'val/acc', '--out', '{tmp}/x.png'], 'No run logged val/acc'),
    (['{tmp}', '--out', '{tmp}/x.png'], 'has no metrics.jsonl'),
    (['{tmp}/nope', '--kind', 'attention', '--out', '{tmp}/x.png'], 'does not exist'),
    (['{gpt}', '--kind', 'attention', '--layer', '5', '--out', '{tmp}/x.png'], '--layer 5: the model has 2 attention layers'),
    (['{bdh}', '--kind', 'bdh', '--head', '7', '--out', '{tmp}/x.png'], '--head 7: the model has 2 heads'),
    (['{gpt}', '--kind', 'attention', '--text', 'a', '--out', '{tmp}/x.png'], 'too short'),
])
def test_bad_input_is_one_clear_error(runs, tmp_path, capsys, argv, message):
    args = [a.format(tmp=tmp_path, **runs) for a in argv]
    rc, text = plot(*args, capsys=capsys)
    assert rc == 2 and message in text, text
    assert text.strip().count('\n') == 0 and text.startswith('bytropix plot: error:'), text   # one line, no traceback
    assert not (tmp_path/'x.png').exists() and not (tmp_path/'x.jpg').exists()

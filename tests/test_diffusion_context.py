"Context length: the train.block_size_schedule curriculum (short → long windows, resumable) and RoPE scaling at evaluation."
import signal

import pytest
import torch

from bytropix.config import load_config
from bytropix.core import ConfigError
from bytropix.training.run import RunDir
from bytropix.training.trainer import Trainer, TrainingInterrupted

SCHEDULE = [[0, 8], [3, 16], [5, 32]]


def _run(out, steps, save_interval=0, schedule=SCHEDULE):
    d = {'arch': 'gpt', 'out_dir': str(out), 'model': dict(n_layer=1, n_embd=32, n_head=2),
         'data': dict(max_train_tokens=20_000, max_val_tokens=3_000),
         'train': dict(steps=steps, batch_size=2, block_size=32, block_size_schedule=schedule, warmup_steps=1,
                       eval_interval=0, eval_batches=1, save_interval=save_interval, sample_interval=0,
                       tensorboard=False, seed=3)}
    return load_config(None, d)


def test_curriculum_shapes_and_resume(tmp_path):
    "Each step sees the scheduled window length (the same tokens per step); a run resumed mid-curriculum matches."
    shapes = []
    tr = Trainer(_run(tmp_path/'a', 6), log=None, progress=False)
    tr.setup()
    fwd = tr.model.forward
    tr.model.forward = lambda x, y=None: (shapes.append(tuple(x.shape)), fwd(x, y))[1]
    tr.fit()
    assert shapes[:6] == [(8, 8)] * 3 + [(4, 16)] * 2 + [(2, 32)], shapes
    ref = {k: v.clone() for k, v in tr.model.state_dict().items()}
    stop = lambda t, step, rec: setattr(t, '_stop', signal.SIGTERM) if step == 4 else None   # as a SIGTERM after step 4
    with pytest.raises(TrainingInterrupted):
        Trainer(_run(tmp_path/'b', 6), callbacks=[stop], log=None, progress=False).fit()
    assert RunDir(tmp_path/'b').checkpoint_dir(4).is_dir()
    shapes.clear()
    res = Trainer(_run(tmp_path/'b', 6), resume=True, log=None, progress=False)
    res.setup()
    fwd = res.model.forward
    res.model.forward = lambda x, y=None: (shapes.append(tuple(x.shape)), fwd(x, y))[1]
    res.fit()
    assert shapes[:2] == [(4, 16), (2, 32)], shapes          # resumed at step 4: steps 5 and 6 only
    for k, v in res.model.state_dict().items(): assert torch.equal(v, ref[k]), k


@pytest.mark.parametrize('schedule, words', [([[0, 12]], 'must divide train.block_size=32'),
                                             ([[5, 8]], 'start at 0'), ([[0, 8], [2, 64]], 'must divide')])
def test_bad_curriculum_is_refused(tmp_path, schedule, words):
    with pytest.raises(ConfigError, match=words): _run(tmp_path, 4, schedule=schedule)
    with pytest.raises(ConfigError, match='applies to tasks lm, mdlm and mlm, not `dpo`'):
        load_config(None, {'task': 'dpo', 'train': {'block_size_schedule': [[0, 64]]}})


def test_rope_scaling_on_trained_models():
    "scale_rope reaches every rotary module (GPT, MLA GPT, WuBu); factor 1 changes nothing; learned positions refuse."
    from bytropix.layers.rope import scale_rope
    from bytropix.models.base import build_model
    ids = torch.randint(0, 64, (1, 40))
    for arch, kw in [('gpt', {}), ('gpt', dict(attention='mla', kv_lora_rank=8, rope_head_dim=8)), ('wubu', dict(level_dims=[8, 4]))]:
        m = build_model(arch, dict(vocab_size=64, block_size=16, n_layer=1, n_embd=32, n_head=2, **kw)).eval()
        with torch.no_grad():
            base = m(ids).logits
            assert scale_rope(m, 'ntk:1') >= 1 and torch.equal(m(ids).logits, base)
            scale_rope(m, 'pi:4'); assert not torch.allclose(m(ids).logits, base)
            scale_rope(m, None); assert torch.equal(m(ids).logits, base)
    g2 = build_model('gpt', dict(vocab_size=64, block_size=16, n_layer=1, n_embd=32, n_head=2, style='gpt2'))
    with pytest.raises(ConfigError, match='no rotary position embeddings'): scale_rope(g2, 'pi:2')


def test_eval_beyond_the_training_length_from_the_cli(tmp_path, capsys):
    "bytropix eval --block-size L --rope-scaling pi:s|ntk:s; learned positions and bad specs refuse with one line."
    import json
    from bytropix.cli import main
    tiny = ['--model.n_layer', '1', '--model.n_embd', '32', '--model.n_head', '2', '--train.batch_size', '4',
            '--train.block_size', '16', '--train.eval_batches', '1', '--train.tensorboard', 'false', '--no-progress',
            '--data.max_train_tokens', '20000', '--data.max_val_tokens', '3000', '--train.steps', '10',
            '--train.warmup_steps', '1', '--sample-tokens', '0']
    for name, extra in (('rope', []), ('learned', ['--model.style', 'gpt2'])):
        assert main(['train', '--arch', 'gpt', '--out_dir', str(tmp_path/name), *tiny, *extra]) == 0
    capsys.readouterr()
    losses = {}
    for spec in (None, 'pi:4', 'ntk:4'):
        assert main(['eval', str(tmp_path/'rope'), '--block-size', '64', '--json', *(['--rope-scaling', spec] if spec else [])]) == 0
        losses[spec] = json.loads(capsys.readouterr().out)['loss']
    assert len(set(losses.values())) == 3, losses          # the scaling reaches the model
    for argv, words in [(['learned', '--block-size', '64'], 'learned positions for block_size=16'),
                        (['learned', '--rope-scaling', 'pi:2'], 'no rotary position embeddings'),
                        (['rope', '--rope-scaling', 'yarn:2'], 'Unknown RoPE scaling')]:
        assert main(['eval', str(tmp_path/argv[0]), *argv[1:]]) == 2
        err = capsys.readouterr().err
        assert words in err and 'Traceback' not in err, err

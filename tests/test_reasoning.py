"HRM, TRM and the puzzle transformer: one-step gradients, halting, Q targets, persistence, learning, trainer."
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bytropix.models.base import BytropixModel, build_model
from bytropix.models.reasoning import HRM, TRM, HRMConfig, PuzzleTransformer, TRMConfig, count_saved_tensors

SMALL = dict(vocab_size=6, block_size=16, n_embd=32, n_head=2, multiple_of=16, halt_max_steps=3)


def _data(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 6, (b, 16), generator=g), torch.randint(1, 6, (b, 16), generator=g)


def test_registry_builds_all_three():
    for arch, extra in [('hrm', {}), ('trm', {}), ('puzzle_transformer', {'n_layer': 2})]:
        kw = {k: v for k, v in SMALL.items() if arch != 'puzzle_transformer' or not k.startswith('halt')}
        m = build_model(arch, {**kw, **extra})
        ids, tgt = _data()
        out = m(ids, tgt)
        assert out.logits.shape == (4, 16, 6) and torch.isfinite(out.loss)
        assert 0 <= float(out.aux['metric/exact_accuracy']) <= 1 and 'metric/token_accuracy' in out.aux


@pytest.mark.parametrize('nt', [(1, 1), (2, 3), (4, 4)])
def test_hrm_one_step_gradient_memory_is_independent_of_NT(nt):
    ids, tgt = _data()
    def saved(N, T):
        torch.manual_seed(0)
        m = HRM(HRMConfig(**{**SMALL, 'H_layers': 1, 'L_layers': 1, 'H_cycles': N, 'L_cycles': T, 'halt_max_steps': 1}))
        return count_saved_tensors(lambda: m(ids, tgt).loss.backward())
    assert saved(*nt) == saved(1, 1)


def test_trm_memory_independent_of_recursions_not_of_latent_updates():
    ids, tgt = _data()
    def saved(**kw):
        torch.manual_seed(0)
        m = TRM(TRMConfig(**{**SMALL, 'halt_max_steps': 1, **kw}))
        return count_saved_tensors(lambda: m(ids, tgt).loss.backward())[0]
    assert saved(H_cycles=1) == saved(H_cycles=4)
    assert saved(L_cycles=3) > saved(L_cycles=1)


def test_halting_at_eval_and_exploration_in_training():
    ids, tgt = _data()
    for cls, cfg in [(HRM, HRMConfig(**SMALL)), (TRM, TRMConfig(**SMALL))]:
        torch.manual_seed(0)
        m = cls(cfg).eval()
        with torch.no_grad():
            assert float(m(ids, tgt).aux['steps']) == 3.0           # initial head: never halts
            m.q_head.bias.fill_(5.0)
            if cls is HRM: m.q_head.bias[1] = -5.0
            assert float(m(ids, tgt).aux['steps']) == 1.0           # confident: halts after one segment
            m.config.halt_at_eval = False
            assert float(m(ids, tgt).aux['steps']) == 3.0
        m.train(); m.config.halt_exploration_prob = 1.0
        assert float(m(ids, tgt).aux['steps']) >= 2.0               # exploration: at least 2 segments


def test_hrm_q_targets_follow_the_paper():
    "Continue target: sigmoid(max Q) of the next segment; at M_max sigmoid(Q_halt) of the next segment."
    torch.manual_seed(0)
    m = HRM(HRMConfig(**{**SMALL, 'halt_max_steps': 2, 'halt_exploration_prob': 0.0, 'q_loss_weight': 1.0}))
    with torch.no_grad():
        m.q_head.weight.normal_(0, 0.01); m.q_head.bias.copy_(torch.tensor([-3.0, 2.0]))  # continue at segment 1
    ids, tgt = _data()
    out = m(ids, tgt)
    assert float(out.aux['steps']) == 2.0
    with torch.no_grad():  # replay the three segments by hand
        x = m.embed(ids)
        c = m.initial_carry(4, x)
        c1, _, q1 = m.segment(c, x)
        c2, _, q2 = m.segment(c1, x)
        _, _, q3 = m.segment(c2, x)
        expected = (F.binary_cross_entropy_with_logits(q1[:, 1], torch.sigmoid(q2.max(1).values), reduction='sum') +
                    F.binary_cross_entropy_with_logits(q2[:, 1], torch.sigmoid(q3[:, 0]), reduction='sum')) / 4
    assert math.isclose(float(out.aux['loss/q_continue']), float(expected), rel_tol=1e-4)
    # layer passes: 2 segments + 1 extra target segment per puzzle
    assert float(out.aux['compute/layer_passes']) == 3 * m.layers_per_segment


def test_save_load_round_trip(tmp_path):
    ids, _ = _data()
    for i, m in enumerate([HRM(HRMConfig(**SMALL)), TRM(TRMConfig(**{**SMALL, 'mixer': 'mlp'})),
                           build_model('puzzle_transformer', {k: v for k, v in SMALL.items() if not k.startswith('halt')})]):
        m.save_pretrained(tmp_path / str(i))
        m2 = BytropixModel.from_pretrained(tmp_path / str(i))
        assert type(m2) is type(m)
        assert torch.equal(m2.solve(ids), m.solve(ids))
        with pytest.raises(NotImplementedError, match='solve'):
            m2.generate(ids, 3)


def test_tiny_training_improves_exact_accuracy():
    from bytropix.data.puzzles import PuzzleLoader, SudokuTaskConfig, augment_sudoku, load_puzzles
    sets = load_puzzles('sudoku', SudokuTaskConfig(box=2, difficulty='easy', min_givens=14, n_train=200, n_test=64), cache=False)
    xt, yt = torch.tensor(sets['test'].inputs).long(), torch.tensor(sets['test'].targets).long()
    torch.manual_seed(0)
    m = HRM(HRMConfig(vocab_size=6, block_size=16, n_embd=32, n_head=2, multiple_of=16, H_layers=1, L_layers=1,
                      H_cycles=1, L_cycles=2, halt_max_steps=2))
    def acc():
        m.eval()
        with torch.no_grad(): a = float(m(xt, yt).aux['metric/exact_accuracy'])
        m.train(); return a
    before = acc()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    ld = PuzzleLoader(sets['train'].inputs, sets['train'].targets, 32, augment=lambda x, y, g: augment_sudoku(x, y, g, box=2))
    for _ in range(150):
        x, y = next(ld)
        opt.zero_grad(); m(x, y).loss.backward(); opt.step()
    assert before < 0.1 and acc() > 0.5


def test_trainer_runs_hrm_end_to_end(tmp_path):
    trainer = pytest.importorskip('bytropix.training.trainer')
    from bytropix.config import load_config
    run = load_config(str(Path(__file__).resolve().parents[1] / 'configs' / 'hrm-sudoku.yaml'), [
        'train.steps=3', 'train.eval_interval=0', 'train.save_interval=0', 'train.log_interval=1', 'train.eval_batches=2',
        'train.tensorboard=false', 'task_options.box=2', 'task_options.difficulty=hard', 'task_options.n_train=64',
        'task_options.n_test=16', f'task_options.cache_dir={tmp_path / "cache"}', 'train.block_size=16',
        f'out_dir={tmp_path / "run"}'])
    metrics = trainer.Trainer(run).fit()
    assert (tmp_path / 'run' / 'metrics.jsonl').is_file()
    assert any('exact_accuracy' in k for k in metrics), metrics

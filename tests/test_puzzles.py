"Puzzle generators, solvers, augmentations, datasets, loader and tasks (bytropix.data.puzzles)."
import io
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from bytropix.core import TASKS, ConfigError, DataError
from bytropix.data import puzzles as P


def _brute_count(grid, box):
    "Count solutions by plain backtracking without heuristics (reference for tiny grids)."
    g = P.sudoku_geometry(box)
    cells = list(np.asarray(grid).reshape(-1))
    def ok(c, v):
        return all(cells[e] != v for u in g.cell_units[c] for e in g.units[u] if e != c)
    def rec(i):
        if i == g.cells: return 1
        if cells[i]: return rec(i + 1)
        n = 0
        for v in range(1, g.n + 1):
            if ok(i, v):
                cells[i] = v; n += rec(i + 1); cells[i] = 0
        return n
    return rec(0)


def test_solver_counts_match_brute_force_on_4x4():
    rnd = random.Random(0)
    for _ in range(30):
        sol = P.random_sudoku_grid(rnd, 2)
        puzzle = sol.copy()
        puzzle[rnd.sample(range(16), rnd.randint(6, 14))] = 0
        n = _brute_count(puzzle, 2)
        assert P.solve_sudoku(puzzle, limit=1000, box=2).n_solutions == n
        assert P.solve_sudoku(puzzle, limit=2, box=2).n_solutions == min(n, 2)


@pytest.mark.parametrize('box,difficulty', [(2, 'hard'), (3, 'easy'), (3, 'medium'), (3, 'hard')])
def test_generated_puzzles_are_unique_and_consistent(box, difficulty):
    rnd = random.Random(box)
    for _ in range(5):
        puzzle, sol, guesses = P.generate_sudoku(rnd, box, difficulty)
        res = P.solve_sudoku(puzzle, limit=2, box=box)
        assert res.n_solutions == 1 and np.array_equal(res.solution, sol)
        assert P.is_valid_sudoku_solution(sol, box)
        assert ((puzzle == 0) | (puzzle == sol)).all()
        assert res.guesses == guesses


def test_hard_puzzles_are_minimal_and_guess_threshold_holds():
    rnd = random.Random(7)
    puzzle, sol, guesses = P.generate_sudoku(rnd, 3, 'hard', min_guesses=10)
    assert guesses >= 10
    for c in np.flatnonzero(puzzle):  # removing any given breaks uniqueness
        q = puzzle.copy(); q[c] = 0
        assert P.solve_sudoku(q, 2).n_solutions == 2


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([2, 3]))
def test_augmentations_preserve_validity_and_map_solutions(seed, box):
    rnd = random.Random(seed)
    puzzle, sol, _ = P.generate_sudoku(rnd, box, 'medium' if box == 3 else 'hard')
    x = torch.tensor(puzzle[None], dtype=torch.long).repeat(3, 1)
    y = torch.tensor(sol[None], dtype=torch.long).repeat(3, 1)
    xa, ya = P.augment_sudoku(x, y, torch.Generator().manual_seed(seed), box=box)
    for i in range(3):
        assert P.is_valid_sudoku_solution(ya[i].numpy(), box)
        res = P.solve_sudoku(xa[i].numpy(), limit=2, box=box)
        assert res.n_solutions == 1 and np.array_equal(res.solution, ya[i].numpy().astype(np.int8))
        assert int((xa[i] == 0).sum()) == int((x[i] == 0).sum())


def test_bfs_is_optimal_and_targets_are_unique_shortest_paths():
    rnd = random.Random(1)
    for size, loops in [(9, 0.0), (15, 0.3), (30, 0.1)]:
        inp, tgt, L = P.generate_maze(rnd, size, loops)
        g = inp.reshape(size, size)
        s, t = int(np.flatnonzero(inp == P.MAZE_START)[0]), int(np.flatnonzero(inp == P.MAZE_GOAL)[0])
        dist, count = P.maze_bfs(g, s)
        assert np.array_equal(dist, P._relax_distances(g, s))
        assert dist[t] == L and count[t] == 1
        assert (tgt == P.MAZE_PATH).sum() == L - 1
        assert P.maze_path_is_shortest(inp, tgt)
        # a single wrong cell is not a shortest path
        bad = tgt.copy(); bad[np.flatnonzero(tgt == P.MAZE_PATH)[0]] = P.MAZE_OPEN
        assert not P.maze_path_is_shortest(inp, bad)


def test_maze_min_path_len_and_augmentation():
    inp, tgt, L = P.generate_maze(random.Random(2), 21, 0.1, min_path_len=60)
    assert L >= 60
    x, y = torch.tensor(inp[None]).long().repeat(8, 1), torch.tensor(tgt[None]).long().repeat(8, 1)
    xa, ya = P.augment_maze(x, y, torch.Generator().manual_seed(0))
    assert all(P.maze_path_is_shortest(a.numpy(), b.numpy()) for a, b in zip(xa, ya))


def test_datasets_are_deterministic_cached_and_disjoint(tmp_path):
    cfg = P.SudokuTaskConfig(box=2, difficulty='hard', n_train=200, n_test=50, cache_dir=str(tmp_path))
    a = P.load_puzzles('sudoku', cfg)
    b = P.load_puzzles('sudoku', cfg, cache=False)
    assert np.array_equal(a['train'].inputs, b['train'].inputs) and np.array_equal(a['test'].targets, b['test'].targets)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == '.npz'
    assert not ({r.tobytes() for r in a['train'].inputs} & {r.tobytes() for r in a['test'].inputs})
    files[0].write_bytes(b'garbage')  # a corrupt cache is regenerated
    c = P.load_puzzles('sudoku', cfg)
    assert np.array_equal(c['train'].inputs, a['train'].inputs)
    other = P.load_puzzles('sudoku', cfg.replace(seed=1), cache=False)
    assert not np.array_equal(other['train'].inputs, a['train'].inputs)


def test_loader_resumes_bit_exactly_and_validation_is_deterministic():
    sets = P.load_puzzles('sudoku', P.SudokuTaskConfig(box=2, n_train=30, n_test=10), cache=False)
    aug = lambda x, y, g: P.augment_sudoku(x, y, g, box=2)
    ld = P.PuzzleLoader(sets['train'].inputs, sets['train'].targets, 8, seed=3, augment=aug)
    for _ in range(5): next(ld)
    buf = io.BytesIO(); torch.save(ld.state_dict(), buf); buf.seek(0)
    expected = [next(ld) for _ in range(6)]
    ld2 = P.PuzzleLoader(sets['train'].inputs, sets['train'].targets, 8, seed=0, augment=aug)
    ld2.load_state_dict(torch.load(buf, weights_only=True))
    for (x1, y1), (x2, y2) in zip(expected, [next(ld2) for _ in range(6)]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.dtype == torch.int64
    v = [torch.cat(z) for z in zip(*P.puzzle_batches(sets['test'].inputs, sets['test'].targets, 4))]
    assert v[0].shape == (10, 16)
    with pytest.raises(DataError, match='same task options'):
        ld2.load_state_dict({**ld.state_dict(), 'n': 31})


def test_tasks_are_registered_with_options_and_checks(tmp_path):
    from types import SimpleNamespace
    for name in ('sudoku', 'maze'):
        assert name in TASKS and TASKS[name].needs_tokenizer is False
    run = SimpleNamespace(task_options={'size': 9, 'n_train': 20, 'n_test': 5, 'cache_dir': str(tmp_path)},
                          train=SimpleNamespace(block_size=81, batch_size=4, seed=0))
    data = TASKS['maze'](run, tokenizer=object())
    assert (data.vocab_size, data.seq_len, data.bytes_per_token) == (P.MAZE_VOCAB_SIZE, 81, None)
    x, y = next(data.train)
    assert x.shape == (4, 81) and set(x.unique().tolist()) <= {1, 2, 3, 4}
    assert sum(len(b[0]) for b in data.val_batches()) == 5
    with pytest.raises(ConfigError, match='train.block_size: 81'):
        TASKS['maze'](SimpleNamespace(task_options=run.task_options, train=SimpleNamespace(block_size=64, batch_size=4, seed=0)))
    with pytest.raises(ConfigError, match='difficulty'):
        P.SudokuTaskConfig.from_dict({'difficulty': 'extreme'})


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet='0123456789.|-+ \nABCxyz#', max_size=120))
def test_puzzle_text_is_parsed_or_refused_clearly(text):
    "Any text given to `bytropix solve` becomes a puzzle or a DataError — never another exception."
    for parse in (lambda: P.parse_sudoku(text, 3), lambda: P.parse_sudoku(text, 2), lambda: P.parse_maze(text, 5)):
        try: t = parse()
        except DataError: continue
        assert t.dtype == torch.long

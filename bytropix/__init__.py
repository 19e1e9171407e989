"""Notebook-first PyTorch library for hyperbolic, brain-inspired and modern language models

Modules:

- `bytropix.config`: One typed, validated config for a training run: architecture, model, task, data, tokenizer and training settings, read from YAML or JSON with dotted command-line overrides.
- `bytropix.data.corpus`: A deterministic text corpus built from what every Python installation carries — the interpreter's documentation topics and the standard library's sources — so the default training run needs no download.
- `bytropix.data.datasets`: Text sources (the default corpus, files, folders, globs, any `datasets` object), deterministic validation splits, cached parallel tokenization and packing, and resumable block loaders for language-model training.
- `bytropix.data.puzzles`: Sudoku and maze generators with exact solvers, validity-preserving augmentations, token encodings, cached deterministic datasets, a resumable puzzle loader and the `sudoku`/`maze` training tasks.
- `bytropix.data.tokenizers`: One `Tokenizer` class for the byte-level default and for BPE, WordPiece and Unigram vocabularies trained with the HuggingFace `tokenizers` library; saved as a standard `tokenizer.json`.
- `bytropix.layers.blocks`: The pre-norm block the decoders share (GPT, the byte models' local stacks), GPT-2's initialisation, and the decoding state of a stack of attention blocks.
- `bytropix.layers.hyperbolic`: Möbius and HNN++ linear layers, hyperbolic MLR, embeddings on the ball (Riemannian Adam), and attention by hyperbolic distance with Einstein midpoints.
- `bytropix.layers.rotations`: Learnable rotations of a tangent space: SO(n) through the matrix exponential of a skew-symmetric matrix, and blockwise unit-quaternion rotations for dimensions divisible by 4.
- `bytropix.layers.wubu`: Nested Poincaré balls with learnable geometry, linked by tangent-space rotations: the WuBu block, and the decoder block (attention + WuBu) the WuBu models stack.
- `bytropix.models.base`: The architecture registry, the config and output every model shares, and one implementation of saving, loading and generation for all of them.
- `bytropix.models.reasoning`: Puzzle models that reason by recurrence in latent space, with deep supervision and learned halting — HRM, TRM — and a non-recurrent baseline (`arch: hrm | trm | puzzle_transformer`).
- `bytropix.models.wubu_bytes`: Bytes → a local encoder → patches cut where a small causal byte model is uncertain → the WuBu stack over patches → a local decoder predicting the next bytes (`arch: wubu_bytes`).
- `bytropix.training.optim`: AdamW for Euclidean weights, Riemannian Adam for points on a manifold, one learning-rate schedule for both, global-norm and adaptive gradient clipping.
- `bytropix.training.trainer`: One training loop for every architecture and task: mixed precision, gradient accumulation and clipping, schedules, non-finite step skipping, evaluation, samples, TensorBoard, checkpoints and bit-exact resumption."""

__version__ = "0.0.1"

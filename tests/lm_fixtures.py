"In-memory language-model data for trainer tests: fixed token rows served in order, resumably."
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch


class SeqLoader:
    "Rows of a fixed (N, T+1) tensor in order, B at a time (so batch 2b = two consecutive batches of b); resumable."
    def __init__(self, rows: torch.Tensor, batch_size: int):
        self.rows, self.B, self.i = rows, batch_size, 0

    def __iter__(self): return self

    def __next__(self):
        r = self.rows[(self.i * self.B + torch.arange(self.B)) % len(self.rows)]
        self.i += 1
        return r[:, :-1], r[:, 1:]

    def state_dict(self): return {'i': self.i}
    def load_state_dict(self, s): self.i = int(s['i'])


@dataclass
class TokenData:
    "What the trainer reads from a prepared task: a train loader, validation batches, vocabulary, bytes per token."
    train: Any
    val_batches: Callable
    vocab_size: int
    bytes_per_token: Optional[float] = 1.0

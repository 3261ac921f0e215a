"""Alphabets and one-hot encoding.

A sequence becomes integer tokens ``(B, L)`` and then a float one-hot tensor ``(B, L, C)``:
each of the C letters of the alphabet is one channel, an ambiguous letter (protein ``X``, nucleic
``N``) is uniform over the channels, and padding is all zeros and masked out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from lyra.errors import LyraError


class InvalidSequenceError(LyraError, ValueError):
    """A sequence holds a character its alphabet does not know."""


@dataclass(frozen=True)
class Alphabet:
    name: str
    letters: str  # one channel each, in this order
    ambiguous: str = ""  # encoded as uniform over all channels

    @property
    def size(self) -> int:
        return len(self.letters)

    @property
    def uniform_token(self) -> int:
        return self.size

    @property
    def pad_token(self) -> int:
        return self.size + 1

    def _lookup(self) -> np.ndarray:
        table = np.full(256, -1, dtype=np.int16)
        for i, ch in enumerate(self.letters):
            table[ord(ch)] = i
        for ch in self.ambiguous:
            table[ord(ch)] = self.uniform_token
        return table

    def encode(self, sequence: str, name: str | None = None) -> np.ndarray:
        """One sequence -> int64 tokens (L,). Raises InvalidSequenceError naming the sequence and character."""
        raw = np.frombuffer(sequence.encode("latin-1", errors="replace"), dtype=np.uint8)
        tokens = _LOOKUPS[self.name][raw]
        bad = np.flatnonzero(tokens < 0)
        if bad.size or not sequence.isascii():
            i = int(bad[0]) if bad.size else next(i for i, c in enumerate(sequence) if not c.isascii())
            label = f"sequence {name!r}" if name is not None else f"sequence {_abbrev(sequence)!r}"
            raise InvalidSequenceError(
                f"{label}: character {sequence[i]!r} at position {i + 1} is not in the "
                f"{self.name} alphabet ({self.letters}{self.ambiguous})"
            )
        return tokens.astype(np.int64)

    def encode_batch(
        self, sequences: Sequence[str], names: Sequence[str] | None = None, length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sequences -> right-padded tokens (B, L) and a boolean mask (B, L), True on real residues."""
        fast = self._encode_joined(sequences, length)
        if fast is not None:
            return fast
        encoded = [self.encode(s, None if names is None else names[i]) for i, s in enumerate(sequences)]
        L = length if length is not None else max((len(t) for t in encoded), default=0)
        tokens = np.full((len(encoded), L), self.pad_token, dtype=np.int64)
        mask = np.zeros((len(encoded), L), dtype=bool)
        for i, t in enumerate(encoded):
            if len(t) > L:
                label = f"sequence {names[i]!r}" if names is not None else f"sequence {i + 1}"
                raise InvalidSequenceError(f"{label} has length {len(t)} > padded length {L}")
            tokens[i, : len(t)] = t
            mask[i, : len(t)] = True
        return tokens, mask

    def _encode_joined(self, sequences: Sequence[str], length: int | None) -> tuple[np.ndarray, np.ndarray] | None:
        """`encode_batch` of valid sequences in one table lookup over their concatenation (a library of
        150k variants in 0.1 s instead of 3 s); None when any sequence needs the per-sequence path,
        which names the offending sequence."""
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))  # (B,)
        L = length if length is not None else int(lengths.max(initial=0))
        joined = "".join(sequences)
        if (lengths > L).any() or not joined.isascii():
            return None
        flat = _LOOKUPS[self.name][np.frombuffer(joined.encode("ascii"), dtype=np.uint8)]  # (sum(lengths),)
        if (flat < 0).any():
            return None
        mask = np.arange(L) < lengths[:, None]  # (B, L)
        tokens = np.full((len(lengths), L), self.pad_token, dtype=np.int64)  # (B, L)
        tokens[mask] = flat  # row-major: each row's residues in order
        return tokens, mask

    def embedding(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(C + 2, C) rows: one-hot letters, then the uniform row, then the all-zero padding row."""
        eye = torch.eye(self.size, dtype=dtype)
        uniform = torch.full((1, self.size), 1.0 / self.size, dtype=dtype)
        pad = torch.zeros((1, self.size), dtype=dtype)
        return torch.cat([eye, uniform, pad])

    def one_hot(self, tokens: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Tokens (B, L) -> float one-hot (B, L, C)."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        return self.embedding(dtype).to(tokens.device)[tokens]  # (B, L, C)

    def decode(self, tokens: Iterable[int]) -> str:
        chars = self.letters + (self.ambiguous[:1] or "?")
        return "".join(chars[t] for t in tokens if t != self.pad_token)


def _abbrev(s: str, n: int = 30) -> str:
    return s if len(s) <= n else s[:n] + "..."


PROTEIN = Alphabet("protein", "ACDEFGHIKLMNPQRSTVWY", ambiguous="X")
DNA = Alphabet("dna", "ACGT", ambiguous="N")
RNA = Alphabet("rna", "ACGU", ambiguous="N")
ALPHABETS = {a.name: a for a in (PROTEIN, DNA, RNA)}
_LOOKUPS = {a.name: a._lookup() for a in ALPHABETS.values()}


def get_alphabet(name: str) -> Alphabet:
    try:
        return ALPHABETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown alphabet {name!r}; expected one of {sorted(ALPHABETS)}") from None


def encode(
    sequences: Sequence[str], alphabet: str | Alphabet = "protein", names: Sequence[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences -> (one-hot (B, L, C) float32, mask (B, L) bool), right-padded to the longest."""
    ab = alphabet if isinstance(alphabet, Alphabet) else get_alphabet(alphabet)
    tokens, mask = ab.encode_batch(sequences, names)
    return ab.one_hot(tokens), torch.from_numpy(mask)

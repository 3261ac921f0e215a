"""Predicted pairwise epistasis: which positions and mutations of the picks to pair, and the ensemble's
epsilon_ij = f(ij) - f(i) - f(j) + f(wt) for each pair (the table behind report/epistasis.png)."""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from lyra.data.variants import Mutation, apply_mutations, parse_mutations

Predict = Callable[[Sequence[str]], np.ndarray]  # sequences -> (n,): the ensemble mean of the target


def top_positions(mutation_strings: Sequence[str], k: int, separators: str = ":,;") -> list[int]:
    """The k most frequently mutated positions among the picks (ties: lower position first)."""
    counts: dict[int, int] = {}
    for text in mutation_strings:
        for m in parse_mutations(text, separators=separators):
            counts[m.position] = counts.get(m.position, 0) + 1
    return sorted(sorted(counts, key=lambda p: (-counts[p], p))[:k])


def pick_mutations(mutation_strings: Sequence[str], positions: Sequence[int], max_per_position: int = 4,
                   separators: str = ":,;") -> list[Mutation]:
    """The mutations the picks make at `positions`: per position the `max_per_position` most frequent
    (ties: alphabetical), sorted by position then residue."""
    counts: dict[Mutation, int] = {}
    wanted = set(positions)
    for text in mutation_strings:
        for m in parse_mutations(text, separators=separators):
            if m.position in wanted:
                counts[m] = counts.get(m, 0) + 1
    chosen = []
    for p in positions:
        at_p = sorted((m for m in counts if m.position == p), key=lambda m: (-counts[m], m.mt))
        chosen.extend(at_p[:max_per_position])
    return sorted(chosen, key=lambda m: (m.position, m.mt))


def predicted_epistasis(predict_fn: Predict, wild_type: str, mutations: Sequence[Mutation],
                        first_position: int = 1) -> pd.DataFrame:
    """epsilon_ij = f(ij) - f(i) - f(j) + f(wt) for every pair of `mutations` at distinct positions.

    `predict_fn(sequences) -> (n,)` is the ensemble mean of the target. The wild type, the singles and
    the doubles are predicted in one batch.
    """
    mutations = list(mutations)
    pairs = [(a, b) for a, b in combinations(mutations, 2) if a.position != b.position]
    seqs = [wild_type] + [apply_mutations(wild_type, [m], first_position) for m in mutations]
    seqs += [apply_mutations(wild_type, [a, b], first_position) for a, b in pairs]
    f = np.asarray(predict_fn(seqs), dtype=np.float64).reshape(-1)  # (1 + n_singles + n_pairs,)
    f_wt, f_single = f[0], dict(zip(mutations, f[1: 1 + len(mutations)]))
    rows = []
    for (a, b), f_ab in zip(pairs, f[1 + len(mutations):]):
        rows.append({"mutation_i": str(a), "mutation_j": str(b), "position_i": a.position, "position_j": b.position,
                     "f_wt": f_wt, "f_i": f_single[a], "f_j": f_single[b], "f_ij": f_ab,
                     "epsilon": f_ab - f_single[a] - f_single[b] + f_wt})
    columns = ["mutation_i", "mutation_j", "position_i", "position_j", "f_wt", "f_i", "f_j", "f_ij", "epsilon"]
    return pd.DataFrame(rows, columns=columns)


def epistasis_of_picks(predict_fn: Predict, wild_type: str, mutation_strings: Sequence[str], n_positions: int,
                       max_per_position: int, first_position: int = 1) -> tuple[pd.DataFrame, list[int]]:
    """(epistasis table, positions) over the picks' `n_positions` most mutated positions and, at each,
    their `max_per_position` most frequent mutations."""
    positions = top_positions(mutation_strings, n_positions)
    chosen = pick_mutations(mutation_strings, positions, max_per_position)
    return predicted_epistasis(predict_fn, wild_type, chosen, first_position), positions

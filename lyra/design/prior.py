"""Evolutionary prior: zero-shot variant scores from a multiple sequence alignment of homologs.

A campaign's first plate is a few hundred variants, mostly dead; what the family tolerates is known
before any measurement. We fit a Potts model (EVmutation: Hopf et al. 2017) to the user's alignment by
pseudo-likelihood and score a variant by its energy change from the wild type,

    dE(x) = sum_i [h_i(x_i) - h_i(wt_i)] + sum_{i<j} [J_ij(x_i, x_j) - J_ij(wt_i, wt_j)]

(a site-independent model, `model="independent"`, keeps only the h term). No weights are downloaded:
the alignment is an input file (A2M / aligned FASTA, e.g. from jackhmmer or the EVcouplings server),
and fitting takes seconds for a domain-sized alignment.

A2M: the first record is the target. Upper-case letters and '-' are match columns, lower-case letters
and '.' are insertions and are dropped. Only columns where the target has an upper-case residue are
modelled (the "focus" columns); mutations elsewhere score 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lyra.errors import ConfigError, DataError
from lyra.schema import schema_fields

GAP = "-"
MAX_POTTS_BYTES = 8 * 2**30  # refuse Potts fits that would need more memory than a typical job has
# prior.sign -> LyraConfig.prior_sign: is a family-like variant expected to score higher (fitness,
# brightness, binding enrichment) or lower (Kd, EC50)? "learn" lets the training variants decide.
PRIOR_SIGNS = {"learn": 0, "positive": 1, "negative": -1}


@dataclass
@schema_fields("prior")
class PriorConfig:
    """The `prior:` section; defaults, types and bounds come from lyra/schema.yaml."""

    msa: str | None
    model: str
    identity: float
    sign: str  # read where the model config is made (PRIOR_SIGNS)


@dataclass
class PottsPrior:
    """A fitted prior over the wild type's positions (0-based, the wild type's own indexing); the
    independent model is the Potts model with J = 0."""
    alphabet: str             # residues the model knows; tokens index this string
    wild_type: str
    positions: np.ndarray     # (L,) wild-type index of each modelled column
    single: np.ndarray        # (L, q) dE of each single mutant (0 at the wild type)
    pair: np.ndarray | None   # (L, L, q, q) epistatic correction of a double mutant (0 if either is WT);
                              # None for the site-independent model
    n_sequences: int
    n_effective: float

    def score_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """dE of each variant; `tokens` (N, len(wild_type)) index into `alphabet` (gap excluded)."""
        cols = tokens[:, self.positions]                                       # (N, L)
        L = len(self.positions)
        score = self.single[np.arange(L), cols].sum(axis=1)                    # (N,)
        if self.pair is None:
            return score.astype(np.float32)
        # Only columns that vary in this chunk can carry an epistatic term: a combinatorial library
        # touches a handful of sites, so this stays cheap whatever the protein length.
        wt_cols = self._wt_tokens()
        varying = np.flatnonzero((cols != wt_cols).any(axis=0))
        for a, i in enumerate(varying):
            for j in varying[a + 1:]:
                score += self.pair[i, j, cols[:, i], cols[:, j]]               # (N,)
        return score.astype(np.float32)

    def score_sequences(self, sequences: list[str]) -> np.ndarray:
        """dE of each sequence (all of the wild type's length)."""
        bad = next((s for s in sequences if len(s) != len(self.wild_type)), None)
        if bad is not None:
            raise DataError(f"prior: a sequence has length {len(bad)}, the wild type {len(self.wild_type)}")
        index = {c: k for k, c in enumerate(self.alphabet)}
        try:
            tokens = np.array([[index[c] for c in s] for s in sequences], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"prior: residue {exc} is not in the alignment's alphabet") from None
        return self.score_tokens(tokens)

    def _wt_tokens(self) -> np.ndarray:
        return np.array([self.alphabet.index(self.wild_type[p]) for p in self.positions])


def read_a2m(path: str | Path) -> tuple[str, list[str]]:
    """(target row with insertions kept, match-column rows of every record including the target)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the alignment ({exc.strerror})") from None
    records: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(">"):
            records.append([])
        elif line and records:
            records[-1].append(line)
    if len(records) < 2:
        raise DataError(f"{path}: an alignment needs the target and at least one homolog, found {len(records)} records")
    rows = ["".join(r) for r in records]
    target = rows[0]
    match = ["".join(c for c in r if c.isupper() or c == GAP) for r in rows]
    n = len(match[0])
    for k, m in enumerate(match):
        if len(m) != n:
            raise DataError(f"{path}: record {k + 1} has {len(m)} match columns, the target {n} (not an A2M alignment?)")
    return target, match


def locate_focus(target: str, wild_type: str, path: str | Path) -> np.ndarray:
    """Wild-type index of each match column where the target has a residue."""
    residues = "".join(c for c in target if c.isalpha()).upper()
    start = wild_type.find(residues)
    if start < 0:
        raise DataError(f"{path}: the alignment's first record (the target) is not a stretch of the wild type")
    positions, k = [], start
    for c in target:
        if c.isupper():
            positions.append(k)
        if c.isalpha():
            k += 1
    return np.array(positions)


def sequence_weights(msa: np.ndarray, identity: float = 0.8, block: int = 256) -> np.ndarray:
    """1 / (number of sequences at >= `identity` to each): redundant homologs count once.
    Compared in blocks of rows, so memory stays (block, S, L) for alignments of any depth."""
    x = torch.from_numpy(msa)                                                  # (S, L)
    neighbours = torch.cat([
        ((x[b: b + block, None, :] == x[None, :, :]).float().mean(-1) >= identity).sum(1)  # (block,)
        for b in range(0, len(x), block)
    ])
    return (1.0 / neighbours.float()).numpy()


def fit_potts(msa: np.ndarray, weights: np.ndarray, q: int, lambda_h: float = 0.01,
              lambda_j: float = 0.01, max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-likelihood Potts fit (L-BFGS), L2 as EVcouplings: lambda_J scaled by (q-1)(L-1).

    Memory is about 25 copies of J, (L q)^2 float32 each: fine for a domain (54 columns: 130 MB),
    too much for a whole protein (500 columns: 11 GB), where the independent model is the choice.
    """
    S, L = msa.shape
    need = 25 * (L * q) ** 2 * 4
    if need > MAX_POTTS_BYTES:
        raise ConfigError(f"prior.model: a Potts model of {L} alignment columns needs about {need / 2**30:.0f} GB; "
                          "use prior.model: independent, or align only the region you mutate")
    x = torch.nn.functional.one_hot(torch.from_numpy(msa), q).float()         # (S, L, q)
    w = torch.from_numpy(weights).float()                                      # (S,)
    h = torch.zeros(L, q, requires_grad=True)
    J = torch.zeros(L, q, L, q, requires_grad=True)
    mask = (1 - torch.eye(L))[:, None, :, None]                                # no self-coupling
    lam_j = lambda_j * (q - 1) * (L - 1)
    opt = torch.optim.LBFGS([h, J], max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        Js = 0.5 * (J + J.permute(2, 3, 0, 1)) * mask                         # (L, q, L, q)
        logits = h + torch.einsum("iajb,sjb->sia", Js, x)                      # (S, L, q)
        nll = -(torch.log_softmax(logits, -1) * x).sum((1, 2))                 # (S,)
        loss = (w * nll).sum() + lambda_h * (h ** 2).sum() + lam_j * (Js ** 2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        Js = (0.5 * (J + J.permute(2, 3, 0, 1)) * mask).permute(0, 2, 1, 3)   # (L, L, q, q)
    return h.detach().double().numpy(), Js.double().numpy()


def mutant_tables(h: np.ndarray, J: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Potts fields h (L, q) and couplings J (L, L, q, q) -> the exact dE of any variant as
    single[i, a] (one mutation in the wild-type background) plus pair[i, j, a, b] over mutated pairs."""
    L, q = h.shape
    ar = np.arange(L)
    cross = np.einsum("ijab,jb->ia", J, np.eye(q)[wt])                         # (L, q): sum_j J_ij(a, wt_j)
    single = h - h[ar, wt][:, None] + cross - cross[ar, wt][:, None]           # (L, q)
    # J_ij(a, b) - J_ij(a, wt_j) - J_ij(wt_i, b) + J_ij(wt_i, wt_j): 0 when either residue is the wild type
    Ja_wt = J[ar[:, None], ar[None, :], :, wt[None, :]]                        # (L, L, q): J_ij(a, wt_j)
    Jwt_b = J[ar[:, None], ar[None, :], wt[:, None], :]                        # (L, L, q): J_ij(wt_i, b)
    Jww = J[ar[:, None], ar[None, :], wt[:, None], wt[None, :]]                # (L, L)
    pair = J - Ja_wt[..., :, None] - Jwt_b[..., None, :] + Jww[..., None, None]  # (L, L, q, q)
    return single, pair


def fit_prior(msa_path: str | Path, wild_type: str, alphabet: str, model: str = "independent",
              identity: float = 0.8) -> PottsPrior:
    """Fit the prior of `model` ("potts" | "independent") on the alignment at `msa_path`."""
    if model not in ("potts", "independent"):
        raise ConfigError(f"prior.model: unknown model {model!r} (potts | independent)")
    target, match = read_a2m(msa_path)
    positions = locate_focus(target, wild_type, msa_path)
    focus = [k for k, c in enumerate(match[0]) if c != GAP]  # match columns where the target has a residue
    symbols = alphabet + GAP
    index = {c: k for k, c in enumerate(symbols)}
    # Homologs with a residue outside the alphabet (X, B, Z, ...) in a modelled column are left out.
    rows = [[index[r[k]] for k in focus] for r in match if all(r[k] in index for k in focus)]
    if len(rows) < 2:
        raise DataError(f"{msa_path}: no homolog left with only {alphabet} residues in the modelled columns")
    msa = np.array(rows, dtype=np.int64)                                       # (S, L)
    q, L = len(symbols), msa.shape[1]
    weights = sequence_weights(msa, identity)
    if model == "independent":
        counts = np.zeros((L, q))
        np.add.at(counts, (np.repeat(np.arange(L)[None], len(msa), 0), msa), weights[:, None])
        h = np.log((counts + 0.5) / (counts + 0.5).sum(1, keepdims=True))
        J = None
    else:
        h, J = fit_potts(msa, weights, q)
    wt = np.array([index.get(wild_type[p], -1) for p in positions])
    if (wt < 0).any():
        p = positions[np.flatnonzero(wt < 0)[0]]
        raise DataError(f"prior: the wild type's residue {wild_type[p]!r} at position {p + 1} is not in the alphabet {alphabet}")
    if J is None:
        single, pair = h - h[np.arange(L), wt][:, None], None
    else:
        single, pair = mutant_tables(h, J, wt)
    # The gap symbol is never a variant's residue; score tokens index the alphabet without it.
    return PottsPrior(alphabet=alphabet, wild_type=wild_type, positions=positions,
                      single=single[:, :-1].astype(np.float32),
                      pair=None if pair is None else pair[:, :, :-1, :-1].astype(np.float32),
                      n_sequences=len(msa), n_effective=float(weights.sum()))


def site_table(prior: PottsPrior, letters: str) -> np.ndarray:
    """(len(wild_type), len(letters)) single-mutant dE per wild-type position and letter, the model's
    per-site prior table: 0 at unmodelled positions and for letters the alignment does not know."""
    table = np.zeros((len(prior.wild_type), len(letters)), dtype=np.float32)
    for k, c in enumerate(letters):
        if c in prior.alphabet:
            table[prior.positions, k] = prior.single[:, prior.alphabet.index(c)]
    return table


def _alignment(cfg: PriorConfig, wild_type: str | None) -> Path:
    """The checks shared by fitting and by the campaign's up-front check: a wild type and a file."""
    if not wild_type:
        raise ConfigError("prior.msa: the prior scores variants of a wild type; set data.wild_type")
    path = Path(cfg.msa)
    if not path.is_file():
        raise ConfigError(f"prior.msa: no such file: {path} (it does not exist or is a directory)")
    return path


def check_alignment(section: dict, wild_type: str | None) -> None:
    """Cheap up-front check of `prior.msa` (no fit): the file exists, is A2M, and its target is in the wild type."""
    path = _alignment(PriorConfig.from_dict(section), wild_type)
    locate_focus(read_a2m(path)[0], wild_type, path)


def prior_from_config(section: dict | None, wild_type: str | None, letters: str) -> PottsPrior | None:
    """The config's `prior` section (paths resolved) -> the fitted prior, or None when `prior.msa` is unset."""
    cfg = PriorConfig.from_dict(section)
    if not cfg.msa:
        return None
    return fit_prior(_alignment(cfg, wild_type), wild_type, letters, model=cfg.model, identity=float(cfg.identity))


def prior_table(section: dict | None, wild_type: str | None, letters: str) -> np.ndarray | None:
    """The config's `prior` section -> the model's per-site table, or None when `prior.msa` is unset."""
    prior = prior_from_config(section, wild_type, letters)
    return None if prior is None else site_table(prior, letters)

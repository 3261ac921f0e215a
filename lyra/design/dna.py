"""The DNA to order: each pick as the wild type's coding sequence with only its mutated codons changed.

`data.wild_type_dna` is the wild type's gene (a FASTA file). It must translate, codon by codon with the
standard genetic code, to the campaign's wild type (`data.wild_type`), optionally followed by one stop
codon. For each pick, every position where its residue differs from the wild type gets the host's most
used codon for the new residue (`rank.codon_table`, a table of the `python_codon_tables` package), unless
that codon would create a recognition site of one of the user's cloning enzymes (`rank.avoid_sites`,
Biopython's `Bio.Restriction` names) on either strand: then the next most used codon is tried, and a
residue none of whose codons avoids every site is an error naming the pick and the position. Every
other codon, the stop included, is the wild type's own, so a pick's gene differs from the wild-type
gene exactly at its mutated codons. A site the wild-type gene has already is its own: the log warns of
it, and a pick keeps it unless a mutation happens to change it.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lyra.design.rank import RankConfig
from lyra.errors import ConfigError, DataError

log = logging.getLogger("lyra.design.dna")


# --- settings ------------------------------------------------------------------------------------------


def codon_table_names() -> dict[str, str]:
    """Short name -> the package's table name, e.g. 'e_coli' -> 'e_coli_316407' (the package's own
    tables only: a taxonomy id would make it download one, and cluster nodes are often offline)."""
    import python_codon_tables

    return {re.sub(r"_\d+$", "", name): name for name in sorted(python_codon_tables.available_codon_tables_names)}


def _table_name(name: str) -> str:
    names = codon_table_names()
    if name in names:
        return names[name]
    if name in names.values():
        return name
    close = difflib.get_close_matches(str(name), list(names), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"rank.codon_table: unknown table {name!r}{hint}; one of {', '.join(names)}")


@lru_cache(maxsize=None)
def codon_preferences(name: str) -> dict[str, tuple[str, ...]]:
    """Residue ('*' for stop) -> its codons, most used first in the host (equal use: alphabetical, so
    the choice never depends on the table's order)."""
    import python_codon_tables

    table = python_codon_tables.get_codons_table(_table_name(name))
    return {aa: tuple(sorted(codons, key=lambda c: (-codons[c], c))) for aa, codons in table.items()}


def restriction_enzymes(names: Iterable[str]) -> list:
    """Biopython's enzymes for `rank.avoid_sites`, in the order given; an unknown name is an error."""
    from Bio import Restriction

    known = {str(e): e for e in Restriction.AllEnzymes}
    out = []
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(str(name), list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"rank.avoid_sites: {name!r} is not an enzyme of Biopython's Bio.Restriction{hint}")
        out.append(known[name])
    return out


@dataclass
class DnaConfig:
    """The DNA keys of the rank section (rank.codon_table, rank.avoid_sites). Build it with `from_rank`,
    which checks them against the schema through `RankConfig`, and that the table and enzymes exist."""

    codon_table: str
    avoid_sites: tuple[str, ...]

    @classmethod
    def from_rank(cls, rank: RankConfig | Mapping[str, Any] | None) -> "DnaConfig":
        rank = rank if isinstance(rank, RankConfig) else RankConfig.from_dict(rank)
        cfg = cls(rank.codon_table, tuple(rank.avoid_sites))
        codon_preferences(cfg.codon_table)
        restriction_enzymes(cfg.avoid_sites)
        return cfg


# --- the wild type's gene ------------------------------------------------------------------------------


def _standard_code() -> tuple[dict[str, str], frozenset[str]]:
    from Bio.Data.CodonTable import standard_dna_table

    return standard_dna_table.forward_table, frozenset(standard_dna_table.stop_codons)


def _translate(codon: str) -> str:
    forward, stops = _standard_code()
    return "*" if codon in stops else forward.get(codon, "?")


def read_gene(path: str | Path) -> str:
    """The first record of a FASTA file, upper case, nucleotides only (A, C, G, T)."""
    from lyra.data.variants import read_wild_type

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.wild_type_dna: no such file: {path}")
    try:
        dna = read_wild_type(str(path.resolve()))
    except ValueError as e:
        raise ConfigError(f"data.wild_type_dna: {e}") from None
    bad = re.search(r"[^ACGT]", dna)
    if bad:
        raise ConfigError(f"data.wild_type_dna: {path}: nucleotide {bad.start() + 1} is {bad.group()!r}; "
                          "a coding sequence holds A, C, G and T only")
    return dna


def check_gene(dna: str, wild_type: str, first_position: int = 1, source: str = "data.wild_type_dna") -> str:
    """`dna` if it codes for `wild_type` (a trailing stop codon allowed); else a one-line error naming
    the first codon that does not, or the length that is wrong."""
    for i in range(min(len(dna) // 3, len(wild_type))):
        codon, residue = dna[3 * i: 3 * i + 3], wild_type[i]
        if _translate(codon) != residue:
            forward, _ = _standard_code()
            expected = sorted(c for c, aa in forward.items() if aa == residue)
            raise ConfigError(
                f"{source}: codon {i + 1} (nucleotides {3 * i + 1}-{3 * i + 3}) is {codon}, which codes for "
                f"{_translate(codon)}, but the wild type has {residue}{i + first_position} "
                f"({'/'.join(expected) or 'no codon'}); the gene must code for data.wild_type from its first codon"
            )
    n = 3 * len(wild_type)
    if len(dna) == n + 3 and _translate(dna[n:]) != "*":
        raise ConfigError(f"{source}: codon {len(wild_type) + 1} (nucleotides {n + 1}-{n + 3}) is {dna[n:]}, "
                          f"not a stop codon: the gene runs past the wild type's {len(wild_type)} residues")
    if len(dna) not in (n, n + 3):
        raise ConfigError(
            f"{source}: {len(dna)} nucleotides, but the wild type's {len(wild_type)} residues take "
            f"{3 * len(wild_type)} (or {3 * len(wild_type) + 3} with a stop codon)"
        )
    return dna


def site_hits(dna: str, enzymes: Sequence) -> list[tuple[str, int]]:
    """(enzyme, 1-based start) of every recognition site in `dna`, either strand."""
    return sorted((str(e), m.start() + 1) for e in enzymes for m in e.compsite.finditer(dna))


def _new_site(before: str, after: str, start: int, enzymes: Sequence) -> str | None:
    """The first enzyme with a site in `after` that overlaps after[start:start + 3] and is not in `before`
    (the same sequence with the old codon), on either strand; else None. A site of the wild-type gene
    that a codon keeps is the gene's own (ranking_genes warns of it), not one the codon makes."""
    for enzyme in enzymes:
        lo, hi = max(0, start - enzyme.size + 1), start + 3 + enzyme.size - 1  # a site inside touches the codon
        old = {(m.start(), m.lastgroup) for m in enzyme.compsite.finditer(before[lo:hi])}
        if any((m.start(), m.lastgroup) not in old for m in enzyme.compsite.finditer(after[lo:hi])):
            return str(enzyme)
    return None


# --- the picks' genes ----------------------------------------------------------------------------------


@dataclass
class PickGene:
    dna: str
    codons: list[str]  # the new codon of each mutation, 'T28P:CCG', in position order


def _with(dna: str, i: int, codon: str) -> str:
    return dna[: 3 * i] + codon + dna[3 * i + 3:]


def pick_gene(gene: str, wild_type: str, sequence: str, preferences: Mapping[str, Sequence[str]],
              enzymes: Sequence = (), first_position: int = 1, label: str = "pick") -> PickGene:
    """The wild-type gene with a new codon at each position where `sequence` differs from the wild type:
    the most used codon for its residue that makes no site of `enzymes` there.

    Positions are filled left to right, each codon checked against the sequence as it stands, so the
    result has no site that the wild-type gene does not have (a site spanning two new codons is seen
    when the second is chosen). A codon passed over because of a wild-type neighbour that a later
    mutation replaces is then tried again, so each new codon is the most used one the final gene allows.
    """
    if len(sequence) != len(wild_type):
        raise DataError(f"{label}: {len(sequence)} residues against the wild type's {len(wild_type)}; "
                        "only substitutions can be written into the wild-type gene")
    mutated = [i for i, (w, s) in enumerate(zip(wild_type, sequence)) if w != s]
    name = {i: f"{wild_type[i]}{i + first_position}{sequence[i]}" for i in mutated}
    dna = gene
    for i in mutated:
        codons = preferences.get(sequence[i])
        if not codons:
            raise DataError(f"{label}: {name[i]}: the codon table has no codon for {sequence[i]!r}")
        blocked = []
        for codon in codons:
            site = _new_site(dna, _with(dna, i, codon), 3 * i, enzymes)
            if site is None:
                break
            blocked.append(f"{codon} ({site})")
        else:
            raise DataError(f"{label}: no codon for {name[i]} (position {i + first_position}) avoids the sites of "
                            f"rank.avoid_sites: {', '.join(blocked)}")
        dna = _with(dna, i, codon)
    improved = bool(enzymes)
    while improved:  # ends: each change moves a codon up its residue's list
        improved = False
        for i in mutated:
            codons = preferences[sequence[i]]
            better = codons[: codons.index(dna[3 * i: 3 * i + 3])]
            codon = next((c for c in better if _new_site(dna, _with(dna, i, c), 3 * i, enzymes) is None), None)
            if codon is not None:
                dna, improved = _with(dna, i, codon), True
    return PickGene(dna, [f"{name[i]}:{dna[3 * i: 3 * i + 3]}" for i in mutated])


def back_translate(protein: str, preferences: Mapping[str, Sequence[str]], enzymes: Sequence = ()) -> str:
    """A coding sequence for `protein`: each residue's most used codon that makes no site of `enzymes`
    with the codons before it. Used for the demo's gene; a real campaign has its own."""
    dna = ""
    for i, residue in enumerate(protein):
        codon = next((c for c in preferences[residue] if _new_site(dna, dna + c, 3 * i, enzymes) is None), None)
        if codon is None:
            raise DataError(f"back-translation: no codon for {residue}{i + 1} avoids the sites of "
                            f"{', '.join(map(str, enzymes))}")
        dna += codon
    return dna


def ranking_genes(picks, gene: str, wild_type: str, cfg: DnaConfig, first_position: int = 1) -> list[PickGene]:
    """One gene per pick (rows of the ranking, columns rank, variant_id, sequence), in rank order."""
    preferences = codon_preferences(cfg.codon_table)
    enzymes = restriction_enzymes(cfg.avoid_sites)
    for name, start in site_hits(gene, enzymes):
        log.warning("data.wild_type_dna has a %s site at nucleotide %d; picks keep it unless a mutation "
                    "changes it", name, start)
    return [pick_gene(gene, wild_type, str(r.sequence), preferences, enzymes, first_position,
                      label=f"rank {r.rank} ({r.variant_id})")
            for r in picks.itertuples(index=False)]


def write_genes(picks, genes: Sequence[PickGene], path: str | Path, cfg: DnaConfig) -> Path:
    """ranking_dna.fasta: '>rank<k>|<variant_id>|codons=<mutation>:<new codon>,...|codon_table=<name>',
    then the gene on one line (as ranking.fasta)."""
    from lyra.io import write_text

    lines = []
    for r, g in zip(picks.itertuples(index=False), genes):
        lines.append(f">rank{r.rank}|{r.variant_id}|codons={','.join(g.codons)}|codon_table={cfg.codon_table}")
        lines.append(g.dna)
    write_text(path, "\n".join(lines) + "\n")
    return Path(path)

"""Mutation strings, wild types and residue numbering.

A variant is written the way DMS tables and ProteinGym write it: ``A24G`` (wild-type residue, position,
mutant residue), multi-mutants joined by ``:``, ``,`` or ``;``, and ``WT`` / ``_wt`` / empty for the wild
type. Positions are numbered as the user numbers the wild type: ``first_position`` is the number of its
first residue (0 for METL's avGFP, 1 for most, 126 for a domain cut out of a longer protein).

Functions here raise plain ``ValueError`` with a message about the mutation only; the dataset reader adds
the file and row.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

WILD_TYPE_TOKENS = frozenset({"", "wt", "_wt", "wildtype", "wild_type", "wild-type", "nan"})

# wild-type residue, position (may be negative with an offset numbering), mutant residue.
# '*' and '-' are accepted here so that stop codons and deletions get a specific error later.
_TOKEN = re.compile(r"([A-Z*])(-?\d+)([A-Z*\-])")


class Mutation(NamedTuple):
    wt: str
    position: int  # numbered as the user numbers the wild type (see first_position)
    mt: str

    def __str__(self) -> str:
        return f"{self.wt}{self.position}{self.mt}"


def is_wild_type_token(text: object) -> bool:
    """True for the spellings of 'no mutation': WT, wt, _wt, empty, None, NaN."""
    if text is None:
        return True
    if isinstance(text, float) and math.isnan(text):
        return True
    return str(text).strip().lower() in WILD_TYPE_TOKENS


def parse_mutations(
    text: str | None,
    wild_type: str | None = None,
    first_position: int = 1,
    separators: str = ":,;",
) -> list[Mutation]:
    """``"A24G:S30R"`` -> ``[Mutation('A', 24, 'G'), Mutation('S', 30, 'R')]``; the wild type -> ``[]``.

    With `wild_type`, each position must lie on it and its residue must match the mutation's wild-type
    letter. Raises ValueError naming the offending token.
    """
    return MutationParser(wild_type, first_position, separators)(text)


class MutationParser:
    """``parse_mutations`` with the wild type and numbering fixed; each distinct token is parsed and checked
    once, so a 150k-row table costs one dictionary lookup per mutation."""

    def __init__(self, wild_type: str | None = None, first_position: int = 1, separators: str = ":,;"):
        self.wild_type, self.first_position, self.separators = wild_type, first_position, separators
        self._split = re.compile(f"[{re.escape(separators)}]") if separators else None
        self._tokens: dict[str, Mutation] = {}

    def __call__(self, text: str | None) -> list[Mutation]:
        if is_wild_type_token(text):
            return []
        text = str(text)
        parts = self._split.split(text) if self._split is not None else [text]
        mutations: list[Mutation] = []
        for token in parts:
            m = self._tokens.get(token)
            if m is None:
                token_clean = token.strip()
                if not token_clean:  # tolerate "A24G;" and "A24G; ;S30R"
                    continue
                m = self._token(token_clean, text)
                self._tokens[token] = m
            mutations.append(m)
        if len(mutations) > 1 and len({m.position for m in mutations}) < len(mutations):
            seen: set[int] = set()
            dup = next(m.position for m in mutations if m.position in seen or seen.add(m.position))
            raise ValueError(f"position {dup} is mutated twice in {text!r}")
        return mutations

    def _token(self, token: str, text: str) -> Mutation:
        match = _TOKEN.fullmatch(token.replace(" ", "").upper())
        if match is None:
            hint = f"; separators are {self.separators!r}" if any(c in token for c in ":,;/|+ ") else ""
            raise ValueError(f"cannot parse mutation {token!r} in {text!r} (expected e.g. 'A24G'{hint})")
        m = Mutation(match.group(1), int(match.group(2)), match.group(3))
        if self.wild_type is not None:
            check_on_wild_type(m, self.wild_type, self.first_position)
        return m

    def sequence(self, text: str | None) -> str:
        """The wild type with the mutations in `text` applied."""
        if self.wild_type is None:
            raise ValueError("a wild type is needed to build sequences from mutations")
        seq = bytearray(self.wild_type.encode("ascii"))
        for m in self(text):
            seq[m.position - self.first_position] = ord(m.mt)
        return seq.decode("ascii")


def check_on_wild_type(mutation: Mutation, wild_type: str, first_position: int = 1) -> None:
    """Raise ValueError if the mutation's position is off the wild type or its wt letter differs."""
    i = mutation.position - first_position
    last = first_position + len(wild_type) - 1
    if not 0 <= i < len(wild_type):
        raise ValueError(
            f"mutation {mutation}: position {mutation.position} is outside the wild type "
            f"(positions {first_position}..{last}; check data.first_position)"
        )
    if wild_type[i] != mutation.wt:
        raise ValueError(
            f"mutation {mutation}: the wild type has {wild_type[i]} at position {mutation.position}, "
            f"not {mutation.wt} (check data.wild_type and data.first_position)"
        )


def apply_mutations(wild_type: str, mutations: Sequence[Mutation], first_position: int = 1) -> str:
    """The wild type with the mutations applied (each checked against the wild type)."""
    seq = bytearray(wild_type.encode("ascii"))
    for m in mutations:
        check_on_wild_type(m, wild_type, first_position)
        seq[m.position - first_position] = ord(m.mt)
    return seq.decode("ascii")


def format_mutations(mutations: Sequence[Mutation]) -> str:
    """Canonical form: sorted by position, joined with ':'; '' for the wild type."""
    return ":".join(str(m) for m in sorted(mutations, key=lambda m: m.position))


def diff_mutations(wild_type: str, sequence: str, first_position: int = 1) -> list[Mutation]:
    """The substitutions that turn `wild_type` into `sequence` (equal lengths only)."""
    if len(sequence) != len(wild_type):
        raise ValueError(
            f"sequence of length {len(sequence)} cannot be compared with the wild type of length {len(wild_type)}"
        )
    return [
        Mutation(w, i + first_position, s) for i, (w, s) in enumerate(zip(wild_type, sequence)) if w != s
    ]


def mutation_strings(wild_type: str, sequences: Sequence[str], first_position: int = 1) -> list[str]:
    """`format_mutations(diff_mutations(wild_type, s, first_position))` for each sequence, compared all at
    once (a 150k-variant library in a fraction of a second); every sequence must have the wild type's length."""
    L = len(wild_type)
    for s in sequences:
        if len(s) != L:
            diff_mutations(wild_type, s, first_position)  # raises, with its message
    joined = "".join(sequences)
    if not (joined.isascii() and wild_type.isascii()):
        return [format_mutations(diff_mutations(wild_type, s, first_position)) for s in sequences]
    letters = np.frombuffer(joined.encode("ascii"), dtype=np.uint8).reshape(len(sequences), L)  # (n, L)
    rows, cols = np.nonzero(letters != np.frombuffer(wild_type.encode("ascii"), dtype=np.uint8))  # row-major
    label: dict[tuple[int, int], str] = {}
    out: list[list[str]] = [[] for _ in sequences]
    for r, c, m in zip(rows.tolist(), cols.tolist(), letters[rows, cols].tolist()):
        text = label.get((c, m))
        if text is None:
            text = label[c, m] = f"{wild_type[c]}{c + first_position}{chr(m)}"
        out[r].append(text)
    return [":".join(parts) for parts in out]


# A wild type spelled out in the config: residue letters, possibly wrapped over lines.
_SEQUENCE_TEXT = re.compile(r"[A-Za-z\s]+")


def wild_type_is_path(value: object) -> bool:
    """True when a `data.wild_type` value names a file, False when it is the sequence itself.

    Decided from the text alone, so a 500-residue sequence is never handed to the filesystem (whose
    name-length limit would raise OSError): letters and whitespace only are a sequence; anything else
    ('/', '.', '~', 'package:', digits, '_') is a path, and a missing file is reported as such.
    """
    text = str(value).strip()
    return bool(text) and not _SEQUENCE_TEXT.fullmatch(text)


def read_wild_type(value: str, base_dir: str | os.PathLike | None = None) -> str:
    """The wild type from a FASTA file (its first record) or from the literal sequence in `value`.

    Which of the two is decided by ``wild_type_is_path``. Relative paths are resolved against `base_dir`
    (the working directory when a config runs through `lyra` or Snakemake). The result is upper case with
    whitespace removed; its letters are checked against the alphabet by the caller.
    """
    value = str(value).strip()
    if not value:
        raise ValueError("the wild type is empty")
    if not wild_type_is_path(value):
        return re.sub(r"\s+", "", value).upper()
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    try:
        found = path.is_file()
    except OSError:  # e.g. a name over the filesystem's length limit: no such file
        found = False
    if not found:
        shown = str(path) if len(str(path)) <= 200 else f"{str(path)[:100]}..."
        hint = "" if any(c in value for c in "/\\.~") else "; a sequence given inline takes letters only"
        raise ValueError(f"wild-type file not found: {shown}{hint}")
    return _first_fasta_record(path)


def _first_fasta_record(path: Path) -> str:
    """First record of a FASTA file; a file without any '>' header is read as one bare sequence."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    chunks: list[str] = []
    n_headers = 0
    with opener(path, "rt", encoding="utf-8-sig") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith(">"):
                n_headers += 1
                if n_headers > 1:
                    break
            elif line and not line.startswith(";"):
                chunks.append(line)
    seq = "".join(chunks).upper()
    if not seq:
        raise ValueError(f"wild-type file {path} holds no sequence")
    return seq

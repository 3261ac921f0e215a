"""Mutation strings, numbering and wild types (lyra.data.variants)."""

from __future__ import annotations

import numpy as np
import pytest

from lyra.data.variants import (
    Mutation,
    MutationParser,
    apply_mutations,
    diff_mutations,
    format_mutations,
    mutation_strings,
    parse_mutations,
    read_wild_type,
)

WT = "MKTAYIAKQR"  # positions 1..10


def test_parse_single_and_multi_with_every_separator():
    assert parse_mutations("K2A") == [Mutation("K", 2, "A")]
    expected = [Mutation("K", 2, "A"), Mutation("Y", 5, "F")]
    for text in ("K2A:Y5F", "K2A,Y5F", "K2A;Y5F", " K2A ; Y5F ", "k2a:y5f", "K2A;Y5F;"):
        assert parse_mutations(text, WT) == expected, text


@pytest.mark.parametrize("text", ["WT", "wt", "_wt", "", "  ", None, float("nan"), "wild-type"])
def test_wild_type_spellings(text):
    assert parse_mutations(text, WT) == []


def test_validation_messages():
    with pytest.raises(ValueError, match="the wild type has K at position 2, not A"):
        parse_mutations("A2G", WT)
    with pytest.raises(ValueError, match=r"position 11 is outside the wild type \(positions 1..10"):
        parse_mutations("K2A:L11A", WT)
    with pytest.raises(ValueError, match="position 0 is outside"):
        parse_mutations("M0A", WT)
    with pytest.raises(ValueError, match="cannot parse mutation 'K2'"):
        parse_mutations("K2", WT)
    with pytest.raises(ValueError, match="separators are ':'"):
        parse_mutations("K2A/Y5F", WT, separators=":")
    with pytest.raises(ValueError, match="position 2 is mutated twice"):
        parse_mutations("K2A:K2R", WT)


def test_offset_numbering():
    # METL's avGFP strings are 0-based; a domain can start at 126; a signal peptide can make it negative
    assert apply_mutations(WT, parse_mutations("K1A", WT, first_position=0), first_position=0) == "MATAYIAKQR"
    assert parse_mutations("K127A", WT, first_position=126) == [Mutation("K", 127, "A")]
    assert apply_mutations(WT, [Mutation("M", -3, "V")], first_position=-3) == "VKTAYIAKQR"
    with pytest.raises(ValueError, match="positions 126..135"):
        parse_mutations("K2A", WT, first_position=126)


def test_apply_format_diff_round_trip():
    muts = parse_mutations("Y5F;K2A", WT)
    seq = apply_mutations(WT, muts)
    assert seq == "MATAFIAKQR"
    assert format_mutations(muts) == "K2A:Y5F"  # canonical: sorted by position, ':'
    assert format_mutations([]) == ""
    assert diff_mutations(WT, seq) == [Mutation("K", 2, "A"), Mutation("Y", 5, "F")]
    assert diff_mutations(WT, WT) == []
    assert format_mutations(diff_mutations(WT, seq, first_position=0)) == "K1A:Y4F"
    with pytest.raises(ValueError, match="length"):
        diff_mutations(WT, seq[:-1])
    with pytest.raises(ValueError, match="not A"):
        apply_mutations(WT, [Mutation("A", 2, "G")])


def test_parser_caches_but_still_checks():
    parser = MutationParser(WT)
    assert parser.sequence("K2A") == parser.sequence("K2A") == "MATAYIAKQR"
    assert parser.sequence("WT") == WT
    with pytest.raises(ValueError, match="mutated twice"):
        parser("K2A:K2A")  # cached token, still a duplicate
    assert str(Mutation("K", 2, "A")) == "K2A"


def test_read_wild_type(tmp_path):
    fasta = tmp_path / "wt.fasta"
    fasta.write_text(">first some description\nMKTA\nyiak\n>second\nGGGG\n")
    assert read_wild_type(str(fasta)) == "MKTAYIAK"  # first record, upper case
    assert read_wild_type("wt.fasta", base_dir=tmp_path) == "MKTAYIAK"
    assert read_wild_type(" mkta yiak ") == "MKTAYIAK"  # a literal sequence
    with pytest.raises(ValueError, match="not found"):
        read_wild_type("missing.fasta", base_dir=tmp_path)
    with pytest.raises(ValueError, match="not found"):
        read_wild_type("data/wt.fa")
    empty = tmp_path / "empty.fasta"
    empty.write_text(">nothing\n")
    with pytest.raises(ValueError, match="no sequence"):
        read_wild_type(str(empty))
    plain = tmp_path / "wt.txt"
    plain.write_text("MKTA\n")
    assert read_wild_type(str(plain)) == "MKTA"


def test_mutation_strings_of_many_sequences_equal_one_at_a_time():
    rng = np.random.default_rng(0)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    seqs = ["".join(np.where(rng.random(len(WT)) < 0.3, rng.choice(letters, len(WT)), list(WT))) for _ in range(300)]
    seqs.append(WT)
    for first in (1, 0, 40):
        expected = [format_mutations(diff_mutations(WT, s, first_position=first)) for s in seqs]
        assert mutation_strings(WT, seqs, first_position=first) == expected
    assert mutation_strings(WT, [WT]) == [""]
    with pytest.raises(ValueError, match="cannot be compared with the wild type"):
        mutation_strings(WT, [WT, WT[:-1]])

"""Alphabets: one-hot encoding, ambiguous letters, padding masks, invalid characters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lyra.data.alphabet import DNA, PROTEIN, RNA, InvalidSequenceError, encode, get_alphabet


def test_protein_one_hot_follows_letter_order():
    x, mask = encode(["ACDY", "WV"], "protein")
    assert x.shape == (2, 4, 20) and x.dtype == torch.float32
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]
    order = PROTEIN.letters
    for pos, ch in enumerate("ACDY"):
        row = x[0, pos]
        assert row.sum() == 1 and row[order.index(ch)] == 1
    assert x[1, 0, order.index("W")] == 1 and x[1, 1, order.index("V")] == 1
    assert PROTEIN.decode(PROTEIN.encode("MKWVX")) == "MKWVX"


@pytest.mark.parametrize("name,seq", [("dna", "ACGTGCA"), ("rna", "ACGUUGCA")])
def test_nucleic_one_hot(name, seq):
    ab = get_alphabet(name.upper())  # case-insensitive name
    x, mask = encode([seq], ab)
    assert x.shape == (1, len(seq), 4) and mask.all()
    assert x[0].argmax(-1).tolist() == [ab.letters.index(c) for c in seq]
    assert (x[0].sum(-1) == 1).all()
    assert ab.decode(ab.encode(seq)) == seq


def test_ambiguous_letters_are_uniform_rows():
    x, _ = encode(["AXC"], "protein")
    torch.testing.assert_close(x[0, 1], torch.full((20,), 0.05))
    for ab in (DNA, RNA):
        x, _ = encode(["ANC"], ab)
        torch.testing.assert_close(x[0, 1], torch.full((4,), 0.25))
        assert x[0, 0].sum() == 1


def test_padding_rows_are_zero_and_masked():
    x, mask = encode(["ACGT", "A", "AC"], "dna")
    assert x.shape == (3, 4, 4)
    assert mask.sum(1).tolist() == [4, 1, 2]
    assert (x[~mask] == 0).all()
    assert (x[mask].sum(-1) == 1).all()
    tokens, m = DNA.encode_batch(["AC"], length=5)
    assert tokens.shape == (1, 5) and m.tolist() == [[True, True, False, False, False]]
    assert (tokens[0, 2:] == DNA.pad_token).all()


def test_batch_longer_than_length_is_refused():
    with pytest.raises(InvalidSequenceError, match="'long one' has length 4 > padded length 2"):
        DNA.encode_batch(["AC", "ACGT"], names=["short", "long one"], length=2)


@pytest.mark.parametrize(
    "alphabet,seq,bad,pos",
    [("protein", "ACDB", "B", 4), ("protein", "AC*D", "*", 3), ("dna", "ACGU", "U", 4),
     ("rna", "ACGT", "T", 4), ("protein", "ACé", "é", 3), ("dna", "AC\u2603", "\u2603", 3),
     ("protein", "AC D", " ", 3)],
)
def test_invalid_character_names_sequence_and_character(alphabet, seq, bad, pos):
    with pytest.raises(InvalidSequenceError) as exc:
        encode(["ACDE" if alphabet == "protein" else "ACGN", seq], alphabet, names=["ok", "variant_7"])
    msg = str(exc.value)
    assert "'variant_7'" in msg and repr(bad) in msg and f"position {pos}" in msg
    assert "\n" not in msg
    # without names the sequence itself is shown
    with pytest.raises(InvalidSequenceError) as exc:
        get_alphabet(alphabet).encode(seq)
    assert f"sequence {seq!r}" in str(exc.value)


def test_lowercase_is_rejected():
    # the data layer upper-cases before encoding; the alphabet itself is strict
    with pytest.raises(InvalidSequenceError, match="'a' at position 1"):
        PROTEIN.encode("acd", name="lower")
    with pytest.raises(InvalidSequenceError):
        DNA.encode("ACgT")


def test_unknown_alphabet():
    with pytest.raises(ValueError, match="unknown alphabet 'amino'"):
        get_alphabet("amino")


def test_empty_inputs():
    assert PROTEIN.encode("").shape == (0,)
    x, mask = encode([], "protein")
    assert x.shape == (0, 0, 20) and mask.shape == (0, 0)


def test_one_hot_from_numpy_tokens():
    tokens = np.array([[0, DNA.uniform_token, DNA.pad_token]])
    x = DNA.one_hot(tokens)
    torch.testing.assert_close(x[0], torch.tensor([[1.0, 0, 0, 0], [0.25] * 4, [0.0] * 4]))


def test_batch_encoding_equals_one_sequence_at_a_time():
    """encode_batch's one-lookup path gives what encode gives sequence by sequence (ambiguous letters,
    padding, an empty sequence), and a bad letter still names its sequence."""
    protein = get_alphabet("protein")
    seqs = ["ACDX", "MK", "", "WWWWY", "Q"]
    tokens, mask = protein.encode_batch(seqs, length=6)
    for i, s in enumerate(seqs):
        assert tokens[i, : len(s)].tolist() == protein.encode(s).tolist()
        assert (tokens[i, len(s):] == protein.pad_token).all() and mask[i].sum() == len(s)
    with pytest.raises(InvalidSequenceError, match="'AZ1': character 'Z' at position 2"):
        protein.encode_batch(["AC", "AZ1"])

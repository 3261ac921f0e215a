"""Design libraries: sizes without enumerating, lazy sharded enumeration, exclusions, file validation."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from lyra.data.alphabet import PROTEIN
from lyra.errors import ConfigError, DataError
from lyra.design.library import LibraryConfig, iter_library, library_size, parse_positions
from lyra.data.variants import Mutation, apply_mutations, format_mutations

GB1_WT = "MQYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"  # 2GI9, 56 aa
GB1_SITES = [39, 40, 41, 54]
AA = PROTEIN.letters
WT = "MKTAYIAKQR"  # a small wild type for brute-force comparisons


def combinatorial(**kw) -> LibraryConfig:
    return LibraryConfig(kind="combinatorial", **kw)


def stream(cfg, wild_type=WT, n_shards=1, chunk_size=7, exclude=None, first_position=1):
    """(global index, sequence, mutation string, n_mutations) of every variant, over all shards."""
    rows = []
    for shard in range(n_shards):
        for chunk in iter_library(cfg, wild_type, first_position, "protein", shard=shard, n_shards=n_shards,
                                  chunk_size=chunk_size, exclude=exclude):
            assert chunk.tokens.shape == (len(chunk), len(wild_type))
            rows += list(zip(chunk.index.tolist(), chunk.sequences().tolist(), chunk.mutations().tolist(),
                             chunk.n_mutations.tolist()))
    return rows


def brute_force(wild_type, sites: dict[int, str], max_mut=None, exactly=None, include_wt=False, first_position=1):
    """Every variant by itertools over the small test libraries: sequence -> canonical mutation string."""
    out = {}
    positions = sorted(sites)
    for combo in itertools.product(*(sites[p] for p in positions)):
        muts = [Mutation(wild_type[p - first_position], p, r) for p, r in zip(positions, combo)
                if r != wild_type[p - first_position]]
        if max_mut is not None and len(muts) > max_mut:
            continue
        if exactly is not None and len(muts) != exactly:
            continue
        if not muts and not include_wt:
            continue
        out[apply_mutations(wild_type, muts, first_position)] = format_mutations(muts)
    return out


# --- sizes -------------------------------------------------------------------------------------------


def test_gb1_sizes_are_counted_without_enumerating():
    assert library_size(combinatorial(positions=GB1_SITES, include_wild_type=True), GB1_WT) == 160_000
    assert library_size(combinatorial(positions=GB1_SITES), GB1_WT) == 159_999  # the WT skipped by default
    capped = combinatorial(positions=GB1_SITES, max_mutations=2, include_wild_type=True)
    assert library_size(capped, GB1_WT) == 1 + 4 * 19 + 6 * 19**2 == 2_243
    # a size far beyond int64 is still counted exactly (and then rejected by the cap, not enumerated)
    huge = combinatorial(positions="1-56", max_size=10**9)
    assert library_size(huge, GB1_WT) == 20**56 - 1


def test_saturation_and_pairs_sizes():
    assert library_size(LibraryConfig(kind="saturation", positions="10-50"), GB1_WT) == 41 * 19
    assert library_size(LibraryConfig(kind="saturation"), GB1_WT) == 56 * 19  # no positions: all
    assert library_size(LibraryConfig(kind="saturation", positions="10-50", include_wild_type=True), GB1_WT) == 780
    assert library_size(LibraryConfig(kind="pairs", positions=[39, 40, 41, 54]), GB1_WT) == 6 * 19**2
    # residues limited to AFILMVWY: V39 and V54 keep 7 mutants, D40 and G41 all 8
    pairs = LibraryConfig(kind="pairs", positions=[39, 40, 41, 54], residues="AFILMVWY")
    assert library_size(pairs, GB1_WT) == 7 * 8 + 7 * 8 + 7 * 7 + 8 * 8 + 8 * 7 + 8 * 7


def test_size_cap_rejects_with_the_key_and_the_size():
    cfg = combinatorial(positions=GB1_SITES, max_size=100_000)
    with pytest.raises(ConfigError, match=r"library: 159,999 variants exceed library.max_size = 100,000"):
        next(iter_library(cfg, GB1_WT))


# --- enumeration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_shards", [1, 3])
def test_combinatorial_covers_every_variant_once_across_shards(n_shards):
    sites = {2: "KAW", 5: AA, 8: "KQL"}  # K2 and K8 are wild type letters here
    cfg = combinatorial(positions=sites, include_wild_type=True)
    rows = stream(cfg, n_shards=n_shards)
    indices = [r[0] for r in rows]
    assert sorted(indices) == list(range(3 * 20 * 3))  # disjoint, complete, every index once
    expected = brute_force(WT, sites, include_wt=True)
    assert len(rows) == len(expected) == library_size(cfg, WT)
    for _, seq, muts, n_mut in rows:
        assert expected[seq] == muts
        assert n_mut == (muts.count(":") + 1 if muts else 0)


@pytest.mark.parametrize("n_shards", [1, 4])
def test_capped_combinatorial_matches_itertools(n_shards):
    sites = {p: "ACDEFK" for p in (1, 3, 4, 6, 9)}
    cfg = combinatorial(positions=sites, max_mutations=2)
    rows = stream(cfg, n_shards=n_shards, chunk_size=11)
    expected = brute_force(WT, sites, max_mut=2)
    assert len(rows) == len(expected) == library_size(cfg, WT)
    assert {seq: m for _, seq, m, _ in rows} == expected
    assert len({seq for _, seq, _, _ in rows}) == len(rows)


def test_forced_sites_without_the_wild_type_residue():
    sites = {2: "AW", 4: "ACDT", 7: "AK"}  # WT: K2 not allowed (always mutated), A4 and A7 allowed
    for cap in (None, 2):
        cfg = combinatorial(positions=sites, max_mutations=cap)
        rows = stream(cfg)
        expected = brute_force(WT, sites, max_mut=cap)
        assert {seq: m for _, seq, m, _ in rows} == expected
        assert len(rows) == library_size(cfg, WT)
        assert all(m.startswith("K2") for _, _, m, _ in rows)


def test_saturation_and_pairs_match_itertools():
    sat = LibraryConfig(kind="saturation", positions="3-6", residues="ACDEFGHIKLMNPQRSTVWY")
    rows = stream(sat, n_shards=2)
    assert {s: m for _, s, m, _ in rows} == brute_force(WT, {p: AA for p in range(3, 7)}, exactly=1)
    pairs = LibraryConfig(kind="pairs", positions=[2, 5, 9, 10], residues="GPW")
    rows = stream(pairs, n_shards=3, chunk_size=5)
    expected = brute_force(WT, {p: "GPW" + WT[p - 1] for p in (2, 5, 9, 10)}, exactly=2)
    assert {s: m for _, s, m, _ in rows} == expected and len(rows) == len(expected) == library_size(pairs, WT)


def test_tokens_decode_to_sequences_and_numbering_follows_first_position():
    cfg = LibraryConfig(kind="saturation", positions="101-102", residues="GW")
    rows = stream(cfg, first_position=100)  # WT[1] = K is numbered 101
    assert [m for _, _, m, _ in rows] == ["K101G", "K101W", "T102G", "T102W"]
    assert [s for _, s, _, _ in rows][0] == "MGTAYIAKQR"
    chunk = next(iter_library(cfg, WT, 100, "protein"))
    assert chunk.tokens.dtype == np.uint8
    assert PROTEIN.decode(chunk.tokens[1]) == "MWTAYIAKQR"
    assert chunk.variant_ids().tolist() == ["K101G", "K101W", "T102G", "T102W"]


def test_wild_type_is_named_wt_when_included():
    cfg = combinatorial(positions={2: "KA"}, include_wild_type=True)
    chunk = next(iter_library(cfg, WT))
    assert chunk.mutations().tolist() == ["", "K2A"]
    assert chunk.variant_ids().tolist() == ["WT", "K2A"]
    assert chunk.n_mutations.tolist() == [0, 1]


def test_exclude_measured_by_sequence_or_mutation_string():
    cfg = combinatorial(positions={2: "KAW", 5: "YFG"}, include_wild_type=True)
    measured = ["MATAYIAKQR", "K2W:Y5F", "WT"]
    rows = stream(cfg, exclude=measured, n_shards=2, chunk_size=3)
    seqs = {s for _, s, _, _ in rows}
    assert len(rows) == 9 - 3
    assert "MATAYIAKQR" not in seqs and "MWTAFIAKQR" not in seqs and WT not in seqs
    assert "MATAFIAKQR" in seqs


# --- positions and configs ----------------------------------------------------------------------------


def test_parse_positions_forms_and_errors():
    assert parse_positions("3-5, 8", WT) == [3, 4, 5, 8]
    assert parse_positions([9, "1-2"], WT) == [1, 2, 9]
    assert parse_positions({"4": "A", 2: "C"}, WT) == [2, 4]
    with pytest.raises(ConfigError, match=r"library.positions: position 11 is outside the wild type \(positions 1..10"):
        parse_positions([11], WT)
    with pytest.raises(ConfigError, match="listed twice"):
        parse_positions("2-4,3", WT)
    with pytest.raises(ConfigError, match=r"library.residues: residue 'Z'"):
        library_size(LibraryConfig(kind="saturation", residues="AZ"), WT)


def test_from_dict_unknown_key_and_spec():
    with pytest.raises(ConfigError, match=r"unknown config key 'library.postions' \(did you mean 'library.positions'\?\)"):
        LibraryConfig.from_dict({"kind": "saturation", "postions": [1]})
    with pytest.raises(ConfigError, match=r"'library.kind': 'random' is not one of"):
        LibraryConfig(kind="random")
    with pytest.raises(ConfigError, match=r"'library.residues': '' should be non-empty"):
        LibraryConfig(residues="")
    with pytest.raises(ConfigError, match=r"'library.n_shards': 0 is less than the minimum of 1"):
        LibraryConfig(n_shards=0)
    with pytest.raises(ConfigError, match="library.path: required for library.kind 'file'"):
        LibraryConfig(kind="file")
    cfg = LibraryConfig.from_dict({"spec": "gb1_four_site", "n_shards": 8})
    assert cfg.kind == "combinatorial" and cfg.positions == GB1_SITES and cfg.n_shards == 8
    assert library_size(cfg, GB1_WT) == 160_000
    doubles = LibraryConfig.from_dict({"spec": "gb1_four_site_doubles.yaml"})
    assert library_size(doubles, GB1_WT) == 2_243
    with pytest.raises(ConfigError, match="library.spec"):
        LibraryConfig.from_dict({"spec": "no_such_library"})


# --- file libraries -----------------------------------------------------------------------------------


def test_file_library_streams_its_rows(tmp_path: Path):
    path = tmp_path / "lib.csv"
    path.write_text("mutations\nK2A\nK2W:Y5F\nWT\n")
    cfg = LibraryConfig(kind="file", path=str(path))
    assert library_size(cfg, WT) == 2  # the wild type row is skipped by default
    chunks = list(iter_library(cfg, WT, exclude=["K2A"]))
    assert [c.mutations().tolist() for c in chunks] == [["K2W:Y5F"]]
    assert chunks[0].sequences().tolist() == ["MWTAFIAKQR"]
    fasta = tmp_path / "lib.fasta"
    fasta.write_text(">a\nMKTAY\n>b\nMKTAW\n")
    chunk = next(iter_library(LibraryConfig(kind="file", path=str(fasta)), None))
    assert chunk.variant_ids().tolist() == ["a", "b"] and chunk.sequences().tolist() == ["MKTAY", "MKTAW"]


def test_file_library_errors_name_the_file_and_row(tmp_path: Path):
    bad_wt = tmp_path / "bad_wt.csv"
    bad_wt.write_text("mutations\nK2A\nA2W\n")
    with pytest.raises(DataError, match=r"bad_wt.csv, row 3: .*wild type has K at position 2, not A"):
        library_size(LibraryConfig(kind="file", path=str(bad_wt)), WT)
    bad_residue = tmp_path / "bad_residue.csv"
    bad_residue.write_text("sequence\nMKTAYIAKQR\nMKTAYIAKQB\n")
    with pytest.raises(DataError, match=r"bad_residue.csv, row 3: character 'B' at position 10"):
        library_size(LibraryConfig(kind="file", path=str(bad_residue)), WT)
    dup = tmp_path / "dup.csv"
    dup.write_text("mutations\nK2A\nT3G\nK2A\n")
    with pytest.raises(DataError, match=r"dup.csv, row 4: variant repeats row 2"):
        library_size(LibraryConfig(kind="file", path=str(dup)), WT)


def test_enumeration_is_lazy_for_ten_million_variants():
    import time

    cfg = LibraryConfig.from_dict({"spec": "gb1_ten_million"})
    assert library_size(cfg, GB1_WT) == 10_000_000
    t = time.perf_counter()
    firsts = [next(iter_library(cfg, GB1_WT, shard=k, n_shards=4, chunk_size=1000)) for k in range(4)]
    assert time.perf_counter() - t < 5  # nothing close to 10M rows is built
    assert [c.index[0] for c in firsts] == [0, 2_500_000, 5_000_000, 7_500_000]
    assert all(len(c) == 1000 and c.tokens.shape == (1000, 56) for c in firsts)
    # mixed radix, last site fastest: index 7,500,000 = digits 7,5,0,0,0,0,0 over the residues ADEFGKLVWY
    assert firsts[3].mutations()[0] == "D40K:G41A:W43A:Y45A:F52A:V54A"  # digit 7 at V39 is V: no mutation

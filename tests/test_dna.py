"""The DNA to order: each pick is the wild-type gene with only its mutated codons changed, each new codon
the host's most used one that makes no site of the user's cloning enzymes; the rank stage writes it with
the plate map and the measured values of picks measured already."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from Bio.Seq import Seq

from lyra.design.dna import (DnaConfig, back_translate, check_gene, codon_preferences, pick_gene, restriction_enzymes,
                      site_hits)
from lyra.errors import ConfigError, DataError
from test_rank import WT, random_scores

ENZYMES = ["BsaI", "BbsI"]
SITES = {"BsaI": "GGTCTC", "BbsI": "GAAGAC"}


def gene_of(protein: str = WT) -> str:
    return back_translate(protein, codon_preferences("e_coli"), restriction_enzymes(ENZYMES))


def no_site(dna: str) -> bool:
    """No recognition site on either strand, searched directly (not through Bio.Restriction)."""
    strands = (dna, str(Seq(dna).reverse_complement()))
    return not any(site in s for s in strands for site in SITES.values())


def test_most_used_codon_and_the_next_where_it_makes_a_site():
    prefs = codon_preferences("e_coli")
    assert prefs["K"][0] == "AAA" and prefs["L"][0] == "CTG" and prefs["*"][0] == "TAA"
    assert list(codon_preferences("s_cerevisiae")) == list(prefs) and prefs != codon_preferences("s_cerevisiae")
    gene = gene_of()
    assert str(Seq(gene).translate()) == WT and no_site(gene)
    # A8W with the wild type's S9 = TCT and R10 = CGT after it: TGG|TCT|C.. is a BsaI site, and W has one codon
    wt, gene = "MKTAYIAASRQ", "ATGAAAACCGCGTATATTGCGGCGTCTCGTCAG"
    one = pick_gene(gene, wt, wt[:3] + "G" + wt[4:], prefs, restriction_enzymes(ENZYMES))
    assert one.dna == gene[:9] + prefs["G"][0] + gene[12:] and one.codons == ["A4G:GGC"]  # the top codon
    with pytest.raises(DataError, match=r"rank 3 \(A8W\): no codon for A8W \(position 8\) avoids the sites of "
                                        r"rank.avoid_sites: TGG \(BsaI\)"):
        pick_gene(gene, wt, wt[:7] + "W" + wt[8:], prefs, restriction_enzymes(ENZYMES), label="rank 3 (A8W)")
    # the same pick with a residue of several codons takes the next one: GGT|CTC would be BsaI
    gene2 = "ATGAAAACCGCGTATATTGCGGCGCTCCGTCAG"  # ... A8 GCG, L9 CTC
    wt2 = "MKTAYIAALRQ"
    prefs_g = {**prefs, "G": ("GGT", "GGC")}  # a host whose most used glycine codon is GGT
    two = pick_gene(gene2, wt2, wt2[:7] + "G" + wt2[8:], prefs_g, restriction_enzymes(["BsaI"]))
    assert two.codons == ["A8G:GGC"] and no_site(two.dna)
    assert pick_gene(gene2, wt2, wt2[:7] + "G" + wt2[8:], prefs_g, []).codons == ["A8G:GGT"]  # no enzymes


def sites(dna: str) -> set[tuple[str, int]]:
    """(site, start) of every recognition site on either strand, found by plain string search."""
    rc = str(Seq(dna).reverse_complement())
    hits = set()
    for site in SITES.values():
        hits |= {(site, i) for i in range(len(dna)) if dna.startswith(site, i)}
        hits |= {(site + "_rc", len(dna) - i - len(site)) for i in range(len(rc)) if rc.startswith(site, i)}
    return hits


# A gene where the most used codons often make sites: D as GAC (E's GAA before it makes BbsI's GAAGAC),
# V as GTC and S as TCT (a codon ending in G before them makes BsaI's GGTCTC, as A4's GCG already does).
PRONE_WT = "MKDAVSLDGVSQDTRDEVSAD"
PRONE_GENE = "".join({"D": "GAC", "V": "GTC", "S": "TCT"}.get(a) or codon_preferences("e_coli")[a][0] for a in PRONE_WT)


@pytest.mark.parametrize("wt, gene", [(WT, None), (PRONE_WT, PRONE_GENE)], ids=["clean", "prone"])
def test_every_pick_translates_differs_only_at_mutated_codons_and_adds_no_site(wt, gene):
    rng = np.random.default_rng(1)
    prefs, enzymes = codon_preferences("e_coli"), restriction_enzymes(ENZYMES)
    gene = gene or gene_of(wt)
    assert (no_site(gene), len(sites(gene))) == ((True, 0) if wt == WT else (False, 1))
    detours = 0
    for _ in range(300):
        seq = list(wt)
        for i in rng.choice(len(wt), size=rng.integers(1, 6), replace=False):
            seq[i] = rng.choice(list("ACDEFGHIKLMNPQRSTVWY"))
        seq = "".join(seq)
        try:
            got = pick_gene(gene, wt, seq, prefs, enzymes)
        except DataError as e:  # W (TGG) and M (ATG) have one codon: some contexts leave them none
            assert "avoids the sites of rank.avoid_sites" in str(e) and wt == PRONE_WT
            continue
        assert str(Seq(got.dna).translate()) == seq
        changed = {i // 3 for i, (a, b) in enumerate(zip(gene, got.dna)) if a != b}
        assert changed == {i for i, (a, b) in enumerate(zip(wt, seq)) if a != b}
        assert sites(got.dna) <= sites(gene)  # none on either strand but the wild-type gene's own
        for i in sorted(changed):  # the most used codon, unless it would make a site in this gene
            codon = got.dna[3 * i: 3 * i + 3]
            detours += codon != prefs[seq[i]][0]
            for better in prefs[seq[i]][: prefs[seq[i]].index(codon)]:
                assert not sites(got.dna[: 3 * i] + better + got.dna[3 * i + 3:]) <= sites(got.dna)
    assert detours == 0 if wt == WT else detours > 10


def test_a_wrong_gene_names_its_first_mismatching_codon():
    gene = gene_of()
    assert check_gene(gene, WT) == gene and check_gene(gene + "TAA", WT) == gene + "TAA"
    bad = gene[:12] + "GCT" + gene[15:]  # codon 5: Y -> A
    with pytest.raises(ConfigError, match=r"codon 5 \(nucleotides 13-15\) is GCT, which codes for A, but the wild "
                                          r"type has Y5 \(TAC/TAT\)"):
        check_gene(bad, WT)
    with pytest.raises(ConfigError, match=r"but the wild type has Y105"):  # numbered like the wild type
        check_gene(bad, WT, first_position=101)
    with pytest.raises(ConfigError, match=r"codon 2 \(nucleotides 4-6\) is ATG, which codes for M, but the wild type "
                                          r"has K2 \(AAA/AAG\)"):
        check_gene("ATG" + gene, WT)  # an extra start codon shifts the frame
    with pytest.raises(ConfigError, match=r"codon 4 \(nucleotides 10-12\) is TAA, which codes for \*"):
        check_gene(gene[:9] + "TAA" + gene[12:], WT)
    with pytest.raises(ConfigError, match=r"57 nucleotides, but the wild type's 20 residues take 60 \(or 63 with a stop"):
        check_gene(gene[:-3], WT)
    with pytest.raises(ConfigError, match=r"codon 21 \(nucleotides 61-63\) is AAA, not a stop codon"):
        check_gene(gene + "AAA", WT)


def test_settings_are_checked():
    assert DnaConfig.from_rank({"codon_table": "h_sapiens", "avoid_sites": ["BsaI"]}).codon_table == "h_sapiens"
    assert codon_preferences("e_coli_316407") == codon_preferences("e_coli")
    with pytest.raises(ConfigError, match=r"rank.codon_table: unknown table 'e_colli' \(did you mean 'e_coli'\?\)"):
        DnaConfig.from_rank({"codon_table": "e_colli"})
    with pytest.raises(ConfigError, match=r"rank.avoid_sites: 'BsaJ' is not an enzyme of Biopython's Bio.Restriction"):
        DnaConfig.from_rank({"avoid_sites": ["BsaI", "BsaJ"]})
    assert site_hits("AAGGTCTCAAGAGACC", restriction_enzymes(["BsaI"])) == [("BsaI", 3), ("BsaI", 11)]


# --- the rank stage ------------------------------------------------------------------------------------


def dataset_with(path: Path, measured: dict[str, float]) -> Path:
    """A dataset.parquet holding the wild type and `measured` (mutations -> fitness)."""
    from lyra.data.variants import apply_mutations, parse_mutations

    rows = [{"variant_id": "WT", "sequence": WT, "fitness": 0.0}]
    rows += [{"variant_id": m, "sequence": apply_mutations(WT, parse_mutations(m, WT)), "fitness": y}
             for m, y in measured.items()]
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    meta = {"alphabet": "protein", "wild_type": WT, "first_position": 1, "targets": ["fitness"], "task": "regression"}
    pq.write_table(table.replace_schema_metadata({b"lyra": json.dumps(meta).encode()}), path)
    return path


def test_the_rank_stage_writes_the_plate_the_genes_and_measured_values(tmp_path):
    from lyra.campaign.config import resolve_config
    from lyra.campaign.stages import rank

    scores = random_scores(tmp_path, n=300, seed=0)
    (tmp_path / "wt_dna.fasta").write_text(">wt gene\n" + gene_of() + "TAA\n")
    config = resolve_config({
        "campaign": "toy",
        "data": {"path": "m.csv", "wild_type": WT, "target_column": "fitness", "wild_type_dna": "wt_dna.fasta"},
        "rank": {"top_n": 100, "fill": "row", "controls": [{"variant": "WT", "wells": 2}, {"variant": "T3A"}],
                 "avoid_sites": ENZYMES},
    }, base_dir=tmp_path)
    table = pd.read_parquet(scores)
    first = table.loc[(table["mean"] + table["std"]).idxmax(), "mutations"]  # rank 1 by UCB
    dataset = dataset_with(tmp_path / "dataset.parquet", {first: 1.25, "K2A": 9.0})  # K2A: not in the library
    out = tmp_path / "out"
    rank(config, scores, out / "ranking.csv", out / "ranking.fasta", dataset=dataset,
         plate=out / "plate.csv", dna=out / "ranking_dna.fasta")

    ranking = pd.read_csv(out / "ranking.csv", keep_default_na=False, na_values=[""])
    assert len(ranking) == 100 and ranking.columns[-1] == "measured_fitness"
    measured = ranking.set_index("mutations")["measured_fitness"]
    assert measured[first] == 1.25 and measured.drop(first).isna().all()
    assert "1.250000" in (out / "ranking.csv").read_text()  # the same float format as the other columns

    plate = pd.read_csv(out / "plate.csv", keep_default_na=False, na_values=[""])
    assert len(plate) == 2 * 96 and set(plate["plate"]) == {1, 2}  # 93 picks + 3 controls per plate
    assert plate["well"].tolist()[:13] == [f"A{c}" for c in range(1, 13)] + ["B1"]
    assert plate.loc[plate["content"] == "control", "well"].tolist() == ["H10", "H11", "H12"] * 2
    assert plate.loc[plate["content"] == "pick", "rank"].tolist() == list(range(1, 101))

    lines = (out / "ranking_dna.fasta").read_text().splitlines()
    headers, genes = lines[::2], lines[1::2]
    assert len(genes) == 100
    wt_gene = gene_of() + "TAA"
    for row, header, dna in zip(ranking.itertuples(), headers, genes):
        assert header.startswith(f">rank{row.rank}|{row.variant_id}|codons=") and header.endswith("|codon_table=e_coli")
        codons = dict(c.split(":") for c in header.split("|")[2].removeprefix("codons=").split(","))
        assert list(codons) == row.mutations.split(":")
        assert all(dna[3 * int(m[1:-1]) - 3: 3 * int(m[1:-1])] == c for m, c in codons.items())
        assert header.count(">") == 1
        assert str(Seq(dna).translate()) == row.sequence + "*"
        changed = {i // 3 for i, (a, b) in enumerate(zip(wt_gene, dna)) if a != b}
        assert changed == {i for i, (a, b) in enumerate(zip(WT, row.sequence)) if a != b}
        assert no_site(dna)

    # a gene that does not code for the wild type: one line, and nothing written
    (tmp_path / "wt_dna.fasta").write_text(">wt gene\n" + gene_of()[:12] + "GCT" + gene_of()[15:] + "\n")
    with pytest.raises(ConfigError, match=r"data.wild_type_dna \(.*wt_dna.fasta\): codon 5 \(nucleotides 13-15\) is GCT"):
        rank(config, scores, tmp_path / "again" / "ranking.csv", tmp_path / "again" / "ranking.fasta")
    assert not (tmp_path / "again").exists()

    # without data.wild_type_dna: no genes, and no stale file from an earlier setting
    config["data"]["wild_type_dna"] = None
    rank(config, scores, out / "ranking.csv", out / "ranking.fasta", dataset=dataset)
    assert (out / "plate.csv").exists() and not (out / "ranking_dna.fasta").exists()


def test_demo_gene_codes_for_the_demo_wild_type():
    from lyra.data.variants import read_wild_type

    root = Path(__file__).resolve().parents[1]
    wt = read_wild_type(str(root / "resources" / "cr6261_wt.fasta"))
    gene = read_wild_type(str(root / "resources" / "cr6261_wt_dna.fasta"))
    assert check_gene(gene, wt) == gene and not site_hits(gene, restriction_enzymes(["BsaI"]))


def test_the_gene_is_a_declared_input_checked_before_any_job_and_in_the_manifest(tmp_path, monkeypatch):
    from lyra.campaign.config import STAGE_SECTIONS, load_config
    from lyra.campaign.manifest import build_manifest
    from lyra.campaign.checks import check_campaign, stage_inputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text("mutant,fitness\nWT,1.0\nT3A,0.5\nY5F,1.5\n")
    (tmp_path / "wt_dna.fasta").write_text(">wt\n" + gene_of() + "\n")
    text = ("campaign: toy\ndata: {path: m.csv, mutations_column: mutant, wild_type: " + WT
            + ", target_column: fitness, wild_type_dna: wt_dna.fasta}\n"
            "rank: {controls: [{variant: WT, wells: 2}], avoid_sites: [BsaI]}\n")
    (tmp_path / "c.yaml").write_text(text)
    config = load_config(tmp_path / "c.yaml")
    check_campaign(config)
    assert "data" in STAGE_SECTIONS["rank"]
    assert stage_inputs(config)["rank"] == [str(tmp_path / "wt_dna.fasta")]
    outputs = [r["role"] for r in build_manifest(tmp_path / "results" / "toy", config)["outputs"]]
    inputs = {r["role"]: r for r in build_manifest(tmp_path / "results" / "toy", config)["inputs"]}
    assert {"plate.csv", "ranking_dna.fasta"} <= set(outputs) and inputs["wild_type_dna"]["sha256"]

    (tmp_path / "wt_dna.fasta").write_text(">wt\n" + gene_of()[:-3] + "TGG\n")
    with pytest.raises(ConfigError, match=r"codon 20 \(nucleotides 58-60\) is TGG, which codes for W, but the wild "
                                          r"type has S20"):
        check_campaign(config)
    (tmp_path / "c.yaml").write_text(text.replace("BsaI", "BsaX1"))
    with pytest.raises(ConfigError, match="rank.avoid_sites: 'BsaX1' is not an enzyme"):
        check_campaign(load_config(tmp_path / "c.yaml"))
    (tmp_path / "c.yaml").write_text(text.replace("variant: WT", "variant: T3Q:A2K"))
    with pytest.raises(ConfigError, match=r"rank.controls\[0\].variant: mutation A2K: the wild type has K at position 2"):
        check_campaign(load_config(tmp_path / "c.yaml"))

    # without the gene: no DNA output, no input for the rank stage
    (tmp_path / "c.yaml").write_text(text.replace(", wild_type_dna: wt_dna.fasta", ""))
    config = load_config(tmp_path / "c.yaml")
    assert stage_inputs(config)["rank"] == []
    outputs = [r["role"] for r in build_manifest(tmp_path / "results" / "toy", config)["outputs"]]
    assert "plate.csv" in outputs and "ranking_dna.fasta" not in outputs

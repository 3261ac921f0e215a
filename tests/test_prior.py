"""Evolutionary prior (lyra/prior.py): A2M reading, the exact Potts energy change, the model's prior term,
training with it, the campaign config, and its zero-shot signal on the real GB1 alignment."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lyra.data.alphabet import get_alphabet
from lyra.errors import ConfigError, DataError
from lyra.model.lyra import Lyra
from lyra.design.prior import fit_prior, locate_focus, mutant_tables, prior_table, read_a2m
from lyra.learn.checkpoints import load_checkpoint, predict_sequences
from lyra.learn.train import TrainConfig, train_model

AA = get_alphabet("protein").letters
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WT = "MKVLAGTWE"


def write_a2m(path: Path, target: str, homologs: list[str]) -> Path:
    path.write_text("".join(f">s{k}\n{s}\n" for k, s in enumerate([target, *homologs])))
    return path


def homologs(n: int = 60, seed: int = 0) -> list[str]:
    """WT-like sequences: position 2 (V) conserved, position 5 (G) free, positions 6/7 covarying (TW or SF)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = list(WT)
        s[5] = AA[rng.integers(20)]
        if rng.random() < 0.5:
            s[6], s[7] = "S", "F"
        if rng.random() < 0.3:
            s[0] = AA[rng.integers(20)]
        out.append("".join(s))
    return out


def test_read_a2m_keeps_match_columns_and_locates_them_on_the_wild_type(tmp_path):
    # the target is WT[1:]; its lower-case K and T are unmodelled columns, '.' and 's' insertions
    path = write_a2m(tmp_path / "a.a2m", "kVLAGtWE", [".VLAG.WE", ".I-AGsWE"])
    target, match = read_a2m(path)
    assert match == ["VLAGWE", "VLAGWE", "I-AGWE"]
    assert list(locate_focus(target, WT, path)) == [2, 3, 4, 5, 7, 8]


@pytest.mark.parametrize("text, message", [
    (">t\nVLAG\n", "at least one homolog"),
    (">t\nVLAG\n>h\nVLA\n", "record 2 has 3 match columns"),
])
def test_malformed_alignment_is_one_line_error(tmp_path, text, message):
    path = tmp_path / "bad.a2m"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as e:
        read_a2m(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_target_not_in_wild_type_is_an_error(tmp_path):
    path = write_a2m(tmp_path / "a.a2m", "WWWW", ["WWWW"])
    with pytest.raises(DataError, match="not a stretch of the wild type"):
        fit_prior(path, WT, AA)


def test_mutant_tables_give_the_exact_energy_change():
    """single + pair over mutated pairs == E(variant) - E(wt) for any variant, with random h and J."""
    rng = np.random.default_rng(0)
    L, q = 5, 4
    h = rng.normal(size=(L, q))
    J = rng.normal(size=(L, L, q, q))
    J = 0.5 * (J + J.transpose(1, 0, 3, 2))
    J[np.arange(L), np.arange(L)] = 0
    wt = rng.integers(q, size=L)

    def energy(x):
        return h[np.arange(L), x].sum() + sum(J[i, j, x[i], x[j]] for i in range(L) for j in range(i + 1, L))

    single, pair = mutant_tables(h, J, wt)
    for x in itertools.islice(itertools.product(range(q), repeat=L), 0, None, 7):
        x = np.array(x)
        mut = np.flatnonzero(x != wt)
        dE = single[mut, x[mut]].sum() + sum(pair[i, j, x[i], x[j]] for a, i in enumerate(mut) for j in mut[a + 1:])
        assert dE == pytest.approx(energy(x) - energy(wt), abs=1e-9)


@pytest.mark.parametrize("model", ["independent", "potts"])
def test_prior_learns_conservation_and_coupling(tmp_path, model):
    path = write_a2m(tmp_path / "fam.a2m", WT, homologs())
    prior = fit_prior(path, WT, AA, model=model)
    scores = dict(zip(["wt", "conserved", "free", "pair_ok", "pair_broken"], prior.score_sequences(
        [WT, WT[:2] + "P" + WT[3:], WT[:5] + "D" + WT[6:], WT[:6] + "SF" + WT[8:], WT[:6] + "SW" + WT[8:]])))
    assert scores["wt"] == 0
    # a never-seen residue at a conserved site is far worse than a change at a free site
    assert scores["conserved"] < scores["free"] - 2.0 and abs(scores["free"]) < 1.5
    if model == "potts":  # only couplings know that S goes with F at 6/7
        assert scores["pair_ok"] > scores["pair_broken"] + 1.0
    table = prior_table({"msa": str(path), "model": model}, WT, AA)
    assert table.shape == (len(WT), 20) and (table[np.arange(len(WT)), [AA.index(c) for c in WT]] == 0).all()


def test_prior_table_needs_a_wild_type_and_a_file(tmp_path):
    assert prior_table({"msa": None}, WT, AA) is None
    with pytest.raises(ConfigError, match="data.wild_type"):
        prior_table({"msa": "x.a2m"}, None, AA)
    with pytest.raises(ConfigError, match="does not exist"):
        prior_table({"msa": str(tmp_path / "missing.a2m")}, WT, AA)


def test_model_prior_term_is_beta_times_standardised_table_score():
    torch.manual_seed(0)
    model = Lyra(d_input=20, d_model=8, d_state=4, prior_length=6).eval()
    table = torch.randn(6, 20)
    model.prior_table.copy_(table)
    model.prior_mu.fill_(0.5)
    model.prior_sigma.fill_(2.0)
    x = torch.nn.functional.one_hot(torch.randint(20, (3, 6)), 20).float()  # (B, L, C)
    with torch.no_grad():
        base = model(x)
        model.prior_beta.fill_(1.5)
        with_prior = model(x)
    expected = 1.5 * ((x * table).sum((1, 2)) - 0.5) / 2.0
    torch.testing.assert_close(with_prior - base, expected.unsqueeze(-1))
    with pytest.raises(ValueError, match="length 6"):
        model(x[:, :5])


@pytest.mark.parametrize("sign", [1, -1])
def test_prior_weight_held_to_its_sign(sign):
    model = Lyra(d_input=20, d_model=8, d_state=4, prior_length=6, prior_sign=sign)
    assert float(model.prior_weight().detach()) == pytest.approx(sign * math.log(2))  # softplus(0)
    for raw in (-30.0, -1.0, 0.0, 4.0):
        model.prior_beta.data.fill_(raw)
        assert sign * float(model.prior_weight().detach()) >= 0
    model.prior_beta.data.fill_(0.0)
    model.prior_table.copy_(torch.randn(6, 20))
    x = torch.nn.functional.one_hot(torch.randint(20, (4, 6)), 20).float()
    model(x).sum().backward()
    assert model.prior_beta.grad is not None and float(model.prior_beta.grad.abs()) > 0
    with pytest.raises(ConfigError, match="prior_sign"):
        Lyra(d_input=20, prior_length=6, prior_sign=2)


def _frame(n=120, seed=0):
    """Variants of WT whose fitness follows the conservation the alignment shows."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    seqs, ys = [], []
    for _ in range(n):
        s = list(WT)
        for p in rng.choice(len(WT), 2, replace=False):
            s[p] = AA[rng.integers(20)]
        seqs.append("".join(s))
        ys.append(-2.0 * (s[2] != "V") + (s[5] in "GAS") + rng.normal(scale=0.2))
    split = np.array(["train"] * 80 + ["valid"] * 20 + ["test"] * 20)
    return pd.DataFrame({"variant_id": [f"v{i}" for i in range(n)], "sequence": seqs, "fitness": ys, "split": split})


def test_training_with_a_prior_round_trips_through_the_checkpoint(tmp_path):
    torch.set_num_threads(1)
    table = prior_table({"msa": str(write_a2m(tmp_path / "f.a2m", WT, homologs()))}, WT, AA)
    frame = _frame()
    meta = {"alphabet": "protein", "targets": ["fitness"], "task": "regression", "classes": None, "wild_type": WT}
    cfg = TrainConfig(max_epochs=15, patience=100, batch_size=16, lr=5e-3, device="cpu")
    tiny = {"d_model": 8, "d_state": 4, "pgc_expansions": [0.5], "n_s4d": 1}
    out = train_model(frame, meta, tiny, cfg, seed=0, checkpoint_path=tmp_path / "m.pt", prior_table=table)
    model, info = load_checkpoint(out.checkpoint_path)
    assert info["model_config"]["prior_length"] == len(WT)
    torch.testing.assert_close(model.prior_table, torch.from_numpy(table))
    # standardised on the training rows only
    tokens, _ = get_alphabet("protein").encode_batch(frame["sequence"][frame["split"] == "train"].tolist())
    raw = table[np.arange(len(WT)), tokens].sum(1)
    assert float(model.prior_mu) == pytest.approx(raw.mean(), rel=1e-5)
    assert float(model.prior_beta.detach()) > 0.05  # the data agree with the family: the prior is used, with the right sign
    from lyra.learn.evaluate import evaluate_ensemble

    metrics = evaluate_ensemble([out.checkpoint_path], frame, meta)
    assert metrics["per_seed"][0]["prior_beta"] == [pytest.approx(float(model.prior_beta.detach()))]
    again = predict_sequences(model, info, frame["sequence"].tolist())
    assert again.shape == (len(frame), 1) and np.isfinite(again).all()
    # every variant must have the wild type's length
    bad = frame.copy()
    bad.loc[0, "sequence"] = WT + "A"
    with pytest.raises(DataError, match="wild type's length 9"):
        train_model(bad, meta, tiny, cfg, seed=0, checkpoint_path=tmp_path / "b.pt", prior_table=table)


def test_prior_sign_stops_contrary_training_variants_from_inverting_the_prior(tmp_path):
    """Training variants that contradict the family (fitness = minus the first test's) invert a free
    beta; prior.sign: positive keeps it >= 0, and metrics.json reports the weight actually used."""
    from lyra.learn.evaluate import evaluate_ensemble

    torch.set_num_threads(1)
    table = prior_table({"msa": str(write_a2m(tmp_path / "f.a2m", WT, homologs()))}, WT, AA)
    frame = _frame()
    frame["fitness"] = -frame["fitness"]
    meta = {"alphabet": "protein", "targets": ["fitness"], "task": "regression", "classes": None, "wild_type": WT}
    cfg = TrainConfig(max_epochs=15, patience=100, batch_size=16, lr=5e-3, device="cpu")
    tiny = {"d_model": 8, "d_state": 4, "pgc_expansions": [0.5], "n_s4d": 1}
    beta = {}
    for sign in (0, 1):
        out = train_model(frame, meta, {**tiny, "prior_sign": sign}, cfg, seed=0,
                          checkpoint_path=tmp_path / f"s{sign}.pt", prior_table=table)
        beta[sign] = evaluate_ensemble([out.checkpoint_path], frame, meta)["per_seed"][0]["prior_beta"][0]
    assert beta[0] < -0.05  # free: the data say the family is wrong, and the weight turns negative
    assert 0 <= beta[1] < math.log(2)  # held positive: shrunk towards zero from its start, not inverted


def test_campaign_config_checks_the_alignment(tmp_path):
    from lyra.campaign.config import resolve_config
    from lyra.campaign.checks import check_campaign

    root = Path(__file__).resolve().parents[1]
    raw = yaml.safe_load((root / "config" / "config.yaml").read_text())
    raw["data"]["wild_type"] = str(root / "resources" / "cr6261_wt.fasta")
    raw["prior"] = {"msa": str(tmp_path / "missing.a2m")}
    config = resolve_config(raw, base_dir=root)
    assert config["prior"]["model"] == "independent" and config["prior"]["identity"] == 0.8
    with pytest.raises(ConfigError, match="prior.msa: no such file"):
        check_campaign(config)
    write_a2m(tmp_path / "missing.a2m", "WWWWWWWW", ["WWWWWWWW"])
    with pytest.raises(DataError, match="not a stretch of the wild type"):
        check_campaign(config)
    with pytest.raises(ConfigError, match="prior.model"):
        resolve_config({**raw, "prior": {"msa": "x", "model": "esm"}}, base_dir=root)
    # prior.sign reaches the model config of tuning and training, and only with an alignment
    from lyra.campaign.settings import model_params

    assert config["prior"]["sign"] == "learn" and model_params(config, {"d_model": 8})["prior_sign"] == 0
    signed = resolve_config({**raw, "prior": {"msa": "x.a2m", "sign": "negative"}}, base_dir=root)
    assert model_params(signed, {"d_model": 8}) == {"d_model": 8, "prior_sign": -1}
    assert "prior_sign" not in model_params(resolve_config({**raw, "prior": {"sign": "positive"}}, base_dir=root), {})
    with pytest.raises(ConfigError, match="prior.sign"):
        resolve_config({**raw, "prior": {"msa": "x", "sign": "up"}}, base_dir=root)


@pytest.mark.skipif(not (SHARED / "gb1_wu2016").is_dir(), reason="../shared/data not found")
def test_gb1_alignment_prior_ranks_the_four_site_landscape():
    """Zero-shot, from 385 aligned sequences only: the GB1 landscape's order is partly known before any measurement."""
    import pandas as pd
    from scipy.stats import spearmanr

    d = SHARED / "gb1_wu2016"
    wt = "".join(l.strip() for l in (d / "2GI9.fasta").read_text().splitlines() if not l.startswith(">"))
    data = pd.read_csv(d / "Gb1Dataset.csv", encoding="utf-8-sig").sample(20000, random_state=0)
    seqs = [wt[:38] + v[:3] + wt[41:53] + v[3] + wt[54:] for v in data["Variants"]]
    prior = fit_prior(d / "GB1_Alignment.a2m", wt, AA, model="independent")
    assert prior.n_sequences > 300 and len(prior.positions) == 54
    rho = spearmanr(prior.score_sequences(seqs), data["Fitness"])[0]
    assert rho > 0.15  # measured 0.216 on all 149,361 variants


@pytest.mark.slow
def test_campaign_with_a_prior_runs_every_stage(tmp_path, monkeypatch):
    """`lyra run` on the demo data with prior.msa set: the models carry the prior, the library is ranked."""
    import json

    from lyra.campaign.config import load_config
    from lyra.campaign.run import run_campaign
    from lyra.data.variants import read_wild_type

    root = Path(__file__).resolve().parents[1]
    wt = read_wild_type(str(root / "resources" / "cr6261_wt.fasta"))
    rng = np.random.default_rng(1)
    family = ["".join(c if rng.random() > 0.15 else AA[rng.integers(20)] for c in wt) for _ in range(40)]
    write_a2m(tmp_path / "family.a2m", wt, family)
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    cfg["campaign"] = "with_prior"
    cfg["data"]["wild_type"] = str(root / "resources" / "cr6261_wt.fasta")
    cfg["data"]["wild_type_dna"] = str(root / "resources" / "cr6261_wt_dna.fasta")
    cfg["model"].update(d_model=8, d_state=4)
    cfg["train"].update(seeds=1, max_epochs=2, patience=2, batch_size=128)
    cfg["tune"]["enabled"] = False
    cfg["library"].update(n_shards=1)
    cfg["rank"].update(top_n=5)
    cfg["rounds"]["dir"] = None
    cfg["prior"] = {"msa": str(tmp_path / "family.a2m"), "sign": "positive"}  # CR6261: -log10 Kd, higher binds
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    out = run_campaign(load_config(path), results=tmp_path / "results", config_files=(str(path),))
    model, info = load_checkpoint(out / "models" / "seed0.pt")
    assert info["model_config"]["prior_length"] == len(wt) and float(model.prior_table.abs().sum()) > 0
    assert info["model_config"]["prior_sign"] == 1 and float(model.prior_weight().detach()) > 0
    assert len((out / "ranking.csv").read_text().splitlines()) == 6
    roles = {r["role"] for r in json.loads((out / "manifest.json").read_text())["inputs"]}
    assert "prior msa" in roles


def test_potts_model_too_large_for_memory_is_refused(monkeypatch):
    from lyra.design import prior as P

    monkeypatch.setattr(P, "MAX_POTTS_BYTES", 1000)
    with pytest.raises(ConfigError, match="prior.model: independent"):
        P.fit_potts(np.zeros((4, 6), dtype=np.int64), np.ones(4), q=21)


def test_workflow_makes_the_alignment_an_input_of_tuning_and_training(tmp_path):
    """Snakemake dry run: an edited alignment reruns tuning and training (it is a declared input)."""
    from test_workflow import snakemake, tiny_config

    config = tiny_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    from lyra.data.variants import read_wild_type

    wt = read_wild_type(cfg["data"]["wild_type"])
    cfg["prior"] = {"msa": str(write_a2m(tmp_path / "family.a2m", wt, [wt]))}
    config.write_text(yaml.safe_dump(cfg))
    dry = snakemake(tmp_path, config, "-n", "--forceall")
    text = dry.stdout + dry.stderr
    assert "rule train:" in text and "rule tune_worker:" in text
    inputs = [line for line in text.splitlines() if "input:" in line and str(tmp_path / "family.a2m") in line]
    assert len(inputs) == 5  # 2 tuning workers, the collect step (it names the study) + 2 ensemble members


def test_zero_shot_ranks_the_library_by_the_alignment_alone(tmp_path, monkeypatch):
    """`lyra zero-shot`: before any measurement, a saturation library ranked by dE: the 19 mutants of the
    one free site (G6) first, before any at the conserved K2-A5; the top N in order, with the prior's scores."""
    import pandas as pd

    from lyra.cli import main
    from lyra.design.prior import fit_prior

    write_a2m(tmp_path / "family.a2m", WT, homologs())
    (tmp_path / "m.csv").write_text("mutant,fitness\nWT,1.0\nK2A,0.5\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "campaign": "zs", "data": {"path": "m.csv", "mutations_column": "mutant", "wild_type": WT,
                                   "target_column": "fitness"},
        "library": {"kind": "saturation", "positions": "2-6"}, "prior": {"msa": "family.a2m"},
    }))
    monkeypatch.chdir(tmp_path)
    assert main(["zero-shot", "--config", "c.yaml", "--out", "top.csv", "--top", "30"]) == 0
    top = pd.read_csv(tmp_path / "top.csv")
    assert list(top["rank"]) == list(range(1, 31)) and top["prior_dE"].is_monotonic_decreasing
    assert top["mutations"][:19].str.startswith("G6").all() and not top["mutations"][19:].str.startswith("G6").any()
    expected = fit_prior(tmp_path / "family.a2m", WT, AA).score_sequences(top["sequence"].tolist())
    np.testing.assert_allclose(top["prior_dE"], expected, atol=1e-3)
    # without an alignment: one line naming the key
    (tmp_path / "c.yaml").write_text((tmp_path / "c.yaml").read_text().replace("msa: family.a2m", "msa: null"))
    assert main(["zero-shot", "--config", "c.yaml", "--out", "top.csv"]) == 2

"""The campaign report: every figure is written as a real PNG, and the epistasis map holds
f(ij) - f(i) - f(j) + f(wt) computed from the ensemble."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

optuna = pytest.importorskip("optuna")

from lyra.campaign.layout import FIGURES, TABLES, Layout  # noqa: E402
from lyra.cli import main as lyra_main  # noqa: E402
from lyra.errors import ConfigError  # noqa: E402
from lyra.report.epistasis import pick_mutations, predicted_epistasis, top_positions  # noqa: E402
from lyra.report.figures import plot_test_predictions, write_top_markdown  # noqa: E402
from lyra.report.report import ReportConfig, make_report, report_files  # noqa: E402
from lyra.learn.checkpoints import load_checkpoint, predict_sequences  # noqa: E402
from lyra.learn.train import TrainConfig, train_model  # noqa: E402
from lyra.data.variants import Mutation, apply_mutations, format_mutations  # noqa: E402

WT = "MKTAYIAKQRQISFVKSHFS"  # 20 residues, numbered from 1
SITES = {3: "AV", 5: "FW", 8: "RE", 11: "GP", 14: "LD"}  # position -> mutant residues
TINY_MODEL = {"d_model": 8, "d_state": 4, "pgc_expansions": [0.5], "n_s4d": 1, "dropout": 0.0}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _mutations() -> list[Mutation]:
    return [Mutation(WT[p - 1], p, mt) for p, mts in SITES.items() for mt in mts]


def _dataset(path: Path) -> None:
    """Singles and doubles of the sites, an additive landscape plus one interaction, seeded splits."""
    rng = np.random.default_rng(0)
    singles = _mutations()
    effect = {m: float(rng.normal()) for m in singles}
    variants = [[]] + [[m] for m in singles] + [[a, b] for a, b in combinations(singles, 2) if a.position != b.position]
    rows = []
    for muts in variants:
        y = sum(effect[m] for m in muts) + (1.5 if {m.position for m in muts} == {3, 5} else 0.0)
        text = format_mutations(muts)
        rows.append({"variant_id": text or "WT", "sequence": apply_mutations(WT, muts), "mutations": text,
                     "n_mutations": len(muts), "fitness": y + 0.05 * float(rng.normal()), "n_replicates": 1})
    frame = pd.DataFrame(rows)
    split = np.array(["train"] * len(frame), dtype=object)
    order = rng.permutation(len(frame))
    split[order[:12]] = "valid"
    split[order[12:24]] = "test"
    frame["split"] = split
    frame["fold"] = -1
    meta = {"alphabet": "protein", "wild_type": WT, "first_position": 1, "targets": ["fitness"],
            "task": "regression", "classes": None}
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"lyra": json.dumps(meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _tuning(root: Path) -> None:
    """A 3-trial study on a JournalStorage, written like `lyra tune-collect` writes it."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from lyra.tune.collect import param_importances, trials_table

    journal = root / "tune" / "journal.log"
    journal.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(storage=storage, study_name="demo-abc", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: 1.0 - (t.suggest_float("lr", 1e-4, 1e-2, log=True) - 3e-3) ** 2
                   + 0.01 * t.suggest_int("d_state", 4, 16), n_trials=3)
    trials_table(study).to_csv(root / "tune" / "trials.tsv", sep="\t", index=False, na_rep="")
    best = {"tuned": True, "metric": "spearman", "direction": "maximize", "best_value": study.best_value,
            "best_trial": study.best_trial.number, "best_params": study.best_params, "study_name": "demo-abc"}
    best["importances"], best["importances_note"] = param_importances(study)
    (root / "tune" / "best.json").write_text(json.dumps(best))


def _library(root: Path, models: list[Path]) -> None:
    """Every double mutant, scored by the ensemble; the picks are the top 15 by mean + std."""
    singles = _mutations()
    doubles = [[a, b] for a, b in combinations(singles, 2) if a.position != b.position]
    seqs = [apply_mutations(WT, d) for d in doubles]
    preds = np.stack([predict_sequences(*load_checkpoint(p), seqs)[:, 0] for p in models])  # (K, n)
    scores = pd.DataFrame({"variant_id": [format_mutations(d) for d in doubles],
                           "mutations": [format_mutations(d) for d in doubles], "n_mutations": 2,
                           "score_0": preds[0], "score_1": preds[1], "mean": preds.mean(0), "std": preds.std(0)})
    scores["sequence"] = seqs
    (root / "library").mkdir(parents=True, exist_ok=True)
    scores.drop(columns="sequence").to_parquet(root / "library" / "scores.parquet", index=False)
    scores["acquisition"] = scores["mean"] + scores["std"]
    picks = scores.sort_values("acquisition", ascending=False, kind="stable").head(15).reset_index(drop=True)
    picks.insert(0, "rank", np.arange(1, len(picks) + 1))
    picks["reason"] = "ucb"
    picks[["rank", "variant_id", "mutations", "sequence", "n_mutations", "mean", "std", "acquisition", "reason"]] \
        .to_csv(root / "ranking.csv", index=False)
    from lyra.design.plate import PlateConfig, plate_map, write_plate

    plate = PlateConfig.from_rank({"controls": [{"variant": "WT", "wells": 2}]})
    write_plate(plate_map(picks, plate, plate.resolve_controls(WT)), root / "plate.csv")


def build_campaign(root: Path) -> Path:
    """A finished tiny campaign in root: dataset, two 2-epoch members, metrics.json, a study, a ranking."""
    _dataset(root / "data" / "dataset.parquet")
    ds = pq.read_table(root / "data" / "dataset.parquet")
    frame, meta = ds.to_pandas(), json.loads(ds.schema.metadata[b"lyra"])
    cfg = TrainConfig(seeds=2, max_epochs=2, patience=0, device="cpu", batch_size=16, amp=False)
    models = []
    for k in range(2):
        path = root / "models" / f"seed{k}.pt"
        train_model(frame, meta, TINY_MODEL, cfg, seed=k, checkpoint_path=path)
        models.append(path)
    from lyra.learn.evaluate import write_metrics

    write_metrics(root / "models" / "metrics.json", models, frame, meta)
    _tuning(root)
    _library(root, models)
    return root


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Path:
    return build_campaign(tmp_path_factory.mktemp("results") / "demo")


@pytest.fixture(scope="module")
def reported(campaign) -> Layout:
    """The campaign, its report written into its own report folder."""
    make_report(campaign, {"report": {"epistasis_positions": 4}})
    return Layout(campaign)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_every_figure_is_a_png(reported):
    for name in FIGURES:
        w, h = _png_size(reported.figure(name))
        assert w >= 400 and h >= 200, f"{name}: {w}x{h}"
    # real figures, not the 'not available' panel (840x312 at 120 dpi)
    for name in FIGURES:
        assert _png_size(reported.figure(name)) != (840, 312), f"{name} says 'not available'"


def test_tables(reported, campaign):
    md = reported.table("top_n").read_text().splitlines()
    table = md[md.index(next(line for line in md if line.startswith("|"))):]  # after any warning block
    ranking = pd.read_csv(campaign / "ranking.csv")
    assert len(table) == 2 + len(ranking)
    assert table[0].startswith("| rank | variant_id | mutations |") and "sequence" not in table[0]
    assert ranking["mutations"][0] in table[2]


def test_learning_warnings_are_shown(campaign, tmp_path):
    """metrics.json's warnings open top_n.md as a warning block and sit in a box under the test-predictions
    panels (the figure grows to hold them); without warnings there is neither."""
    root = tmp_path / "flagged"
    shutil.copytree(campaign, root, ignore=shutil.ignore_patterns("report"))
    metrics = json.loads((root / "models" / "metrics.json").read_text())
    warnings = ["fitness: predictions collapsed to a near-constant on valid (0.010): try another train.lr.",
                "fitness: the model is no better than predicting the mean on test (R² -0.10, Spearman 0.01)."]
    (root / "models" / "metrics.json").write_text(json.dumps({**metrics, "warnings": warnings, "learned": False}))
    make_report(root, {"report": {"epistasis_positions": 4}})
    md = Layout(root).table("top_n").read_text().splitlines()
    assert md[0] == "> [!WARNING]" and "may not have learned" in md[1]
    assert md[3:5] == [f"> - {w}" for w in warnings] and md[5] == "" and md[6].startswith("| rank |")
    width, height = _png_size(Layout(root).figure("test_predictions"))
    assert (width, height) != (840, 312) and height > width  # one square panel plus the warning box

    measured = np.linspace(0, 1, 12)
    plain = plot_test_predictions(measured, measured, tmp_path / "plain.png", ["fitness"])
    assert _png_size(plain) == (672, 672)  # 5.6 in square at 120 dpi
    ranking = pd.read_csv(campaign / "ranking.csv")
    assert write_top_markdown(ranking, tmp_path / "top.md", []).read_text().startswith("| rank |")


def test_epistasis_is_f_ij_minus_singles_plus_wt(reported, campaign):
    table = pd.read_csv(reported.table("epistasis"), sep="\t")
    ranking = pd.read_csv(campaign / "ranking.csv")
    positions = top_positions(ranking["mutations"].tolist(), 4)
    assert len(positions) == 4 and set(table["position_i"]) | set(table["position_j"]) <= set(positions)
    assert (table["position_i"] < table["position_j"]).all()
    # one pair, by hand: each sequence predicted on its own by each checkpoint, then averaged
    row = table.iloc[int(table["epsilon"].abs().argmax())]
    members = [load_checkpoint(p) for p in sorted((campaign / "models").glob("seed*.pt"))]

    def f(muts):
        seq = apply_mutations(WT, muts)
        return float(np.mean([predict_sequences(m, info, [seq])[0, 0] for m, info in members]))

    a = Mutation(row.mutation_i[0], int(row.mutation_i[1:-1]), row.mutation_i[-1])
    b = Mutation(row.mutation_j[0], int(row.mutation_j[1:-1]), row.mutation_j[-1])
    expected = f([a, b]) - f([a]) - f([b]) + f([])
    assert abs(expected) > 1e-4  # the tiny model is not additive, so this checks a real value
    assert row.epsilon == pytest.approx(expected, abs=3e-6)  # float32 predictions
    assert row.f_wt == pytest.approx(f([]), abs=1e-6)


def test_predicted_epistasis_exact():
    """With an additive f plus one interaction term, epsilon is exactly that term."""
    muts = [Mutation("K", 2, "A"), Mutation("T", 3, "V"), Mutation("T", 3, "W"), Mutation("A", 4, "G")]

    def f(seqs):
        out = []
        for s in seqs:
            v = 1.0 + 0.5 * (s[1] == "A") - 0.25 * (s[2] == "V") + 2.0 * (s[2] == "W") + 0.1 * (s[3] == "G")
            out.append(v + (3.0 if s[1] == "A" and s[3] == "G" else 0.0))
        return np.array(out)

    table = predicted_epistasis(f, "MKTAY", muts, first_position=1)
    assert len(table) == 5  # 6 pairs minus the one at the same position (T3V, T3W)
    eps = dict(zip(zip(table.mutation_i, table.mutation_j), table.epsilon))
    assert eps[("K2A", "A4G")] == pytest.approx(3.0)
    assert eps[("K2A", "T3V")] == pytest.approx(0.0)
    assert eps[("T3W", "A4G")] == pytest.approx(0.0)
    # the same mutations numbered from 0 (first_position = 0) give the same values
    zero = [m._replace(position=m.position - 1) for m in muts]
    again = predicted_epistasis(f, "MKTAY", zero, first_position=0)
    assert again["epsilon"].tolist() == pytest.approx(table["epsilon"].tolist())


def test_top_positions_and_mutations():
    picks = ["A3V:F5W", "A3V:R8E", "A3L:F5W", "R8E:L14D", "A3V"]
    assert top_positions(picks, 2) == [3, 5]  # 3 (x4), then 5 and 8 tie (x2): the lower wins
    chosen = pick_mutations(picks, [3, 5], max_per_position=1)
    assert [str(m) for m in chosen] == ["A3V", "F5W"]


def test_report_is_deterministic(campaign, reported, tmp_path):
    """Written again, into another folder (out_dir): the same bytes, under the same file names."""
    out = tmp_path / "again"
    make_report(campaign, {"report": {"epistasis_positions": 4}}, out_dir=out)
    figures, tables = report_files(Layout(campaign), out)
    assert {p.parent for p in [*figures.values(), *tables.values()]} == {out}
    for name, path in figures.items():
        assert path.read_bytes() == reported.figure(name).read_bytes(), name
    for name, path in tables.items():
        assert path.read_bytes() == reported.table(name).read_bytes(), name


def test_missing_inputs_give_placeholder_figures(tmp_path, campaign):
    root = tmp_path / "partial"
    shutil.copytree(campaign / "data", root / "data")
    paths = make_report(root, {})
    report = Layout(root)
    assert set(paths) == {*map(report.figure, FIGURES), *map(report.table, TABLES)}
    for name in FIGURES:
        assert _png_size(report.figure(name)) == (840, 312), name


def test_importances_need_varying_params():
    from lyra.tune.collect import param_importances

    study = optuna.create_study()
    study.optimize(lambda t: 0.5, n_trials=1)
    imp, why = param_importances(study)
    assert imp is None and "at least 2 completed trials" in why
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2 + 0.01 * t.suggest_int("k", 1, 3), n_trials=12)
    imp, why = param_importances(study)
    assert why == "" and set(imp) == {"x", "k"} and imp["x"] > imp["k"]


def test_cli(campaign, tmp_path):
    cfg = tmp_path / "report.yaml"
    cfg.write_text("campaign: demo\nseed: 0\nreport: {epistasis_positions: 3}\n_base_dir: /tmp\n")
    rc = lyra_main(["report", "--campaign-dir", str(campaign), "--config", str(cfg), "--out-dir",
                    str(tmp_path / "rep"), "--manifest", str(tmp_path / "manifest.json")])
    assert rc == 0
    table = pd.read_csv(tmp_path / "rep" / "epistasis.tsv", sep="\t")
    assert len(set(table["position_i"]) | set(table["position_j"])) == 3
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["report"] == {"epistasis_positions": 3}
    assert any(r["role"] == "config" and r["path"] == str(cfg) for r in manifest["inputs"])


def test_cli_rejects_unknown_report_key(campaign, tmp_path, capsys):
    cfg = tmp_path / "report.yaml"
    cfg.write_text("campaign: demo\nreport: {epistasis_position: 3}\n_base_dir: /tmp\n")
    rc = lyra_main(["report", "--campaign-dir", str(campaign), "--config", str(cfg), "--out-dir",
                    str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: unknown config key 'report.epistasis_position'")
    assert "did you mean 'report.epistasis_positions'" in err and len(err.splitlines()) == 1


def test_report_config_comes_from_the_schema():
    assert ReportConfig.from_dict({}) == ReportConfig(epistasis_positions=8, max_residues_per_position=4, table_rows=30)
    for key, value in [("epistasis_positions", 1), ("max_residues_per_position", 0), ("table_rows", 0)]:
        with pytest.raises(ConfigError, match=f"report.{key}"):
            ReportConfig.from_dict({key: value})


def test_the_report_does_not_import_the_campaign_machinery():
    """The report reads a campaign through its layout only: the stages and the manifest call it, not the
    other way round."""
    import ast

    package = Path(__file__).resolve().parents[1] / "lyra" / "report"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lyra.campaign"):
                assert node.module == "lyra.campaign.layout", f"{path.name}:{node.lineno} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("lyra.campaign") for a in node.names), f"{path.name}:{node.lineno}"


def run_report_rule_and_html_report(campaign: Path, tmp_path: Path, python: str = sys.executable,
                                    env: dict | None = None) -> str:
    """Run rules/report.smk under Snakemake on a copy of `campaign`, then `snakemake --report`, with the
    given Python (whose environment supplies snakemake and the rule's `lyra` command); -> the HTML."""
    repo = Path(__file__).resolve().parents[1]
    root = tmp_path / "results" / "demo"
    shutil.copytree(campaign, root, ignore=shutil.ignore_patterns("report", "manifest.json"))
    from lyra.campaign.config import STAGE_SECTIONS

    for stage in STAGE_SECTIONS:
        Layout(root).stage_config(stage).parent.mkdir(exist_ok=True)
        Layout(root).stage_config(stage).write_text(f"campaign: demo\nseed: 0\n_base_dir: {tmp_path}\n")
    # the other jobs' benchmark files, which the rule reads for the manifest's wall times
    for rel in ["preprocess", "tune/collect", "train/seed0", "train/seed1", "evaluate", "score/shard0",
                "score/gather", "rank"]:
        (root / "benchmarks" / f"{rel}.tsv").parent.mkdir(parents=True, exist_ok=True)
        (root / "benchmarks" / f"{rel}.tsv").write_text("s\th:m:s\n1.0\t0:00:01\n")
    (tmp_path / "campaign.yaml").write_text("campaign: demo\ntune: {enabled: false}\n")
    (tmp_path / "Snakefile").write_text(  # what rules/common.smk and rules/config.smk give the rule
        'import sys\n'
        'from lyra.campaign import layout\n'
        'from lyra.campaign.config import CAMPAIGN_STAGES\n'
        'configfile: "campaign.yaml"\n'
        'RESULTS = "results/demo"\nSEEDS = [0, 1]\nWORKERS = [0]\nSHARDS = [0]\n'
        'CONFIG_FILES = workflow.configfiles\n'
        'def res(p): return f"{RESULTS}/{p}"\n'
        'def stage_cfg(s): return res(layout.STAGE_CONFIG.format(stage=s))\n'
        f'include: "{repo / "rules" / "report.smk"}"\n'
        'rule all:\n    input: rules.report.output\n    default_target: True\n'
    )
    smk = [python, "-m", "snakemake", "--cores", "1", "--snakefile", str(tmp_path / "Snakefile")]
    run = subprocess.run(smk, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    log = root / "logs" / "report.log"
    assert run.returncode == 0, run.stderr[-3000:] + (log.read_text()[-2000:] if log.exists() else "")
    manifest = json.loads((root / "manifest.json").read_text())
    assert any(r["path"] == str(tmp_path / "campaign.yaml") for r in manifest["inputs"])
    run = subprocess.run([*smk, "--report", str(tmp_path / "report.html")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    html = (tmp_path / "report.html").read_text()
    for path in FIGURES.values():
        assert Path(path).name in html, path
    assert "Learning curves of each ensemble member" in html and "epsilon = f(ij) - f(i) - f(j) + f(wt)" in html
    return html


@pytest.mark.slow
def test_snakemake_rule_and_html_report(campaign, tmp_path):
    """rules/report.smk runs under Snakemake and `snakemake --report` collects every figure with its caption."""
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")
    run_report_rule_and_html_report(campaign, tmp_path)

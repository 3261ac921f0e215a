"""Training loop: determinism, validation-only selection, early stopping, resume (with a real SIGKILL),
checkpoints, target transforms, classification, padding, device fallback, metrics.json."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lyra.errors import ConfigError, DataError, LyraError
from lyra.learn import metrics as M
from lyra.learn.checkpoints import load_checkpoint, predict_sequences
from lyra.learn.evaluate import evaluate_ensemble, write_metrics
from lyra.learn.forward import resolve_device
from lyra.learn.train import TrainConfig, replay_selection, train_model
from lyra.learn.transforms import apply_transform, fit_target_transform, invert_transform
from lyra.model.lyra import Lyra

REPO = Path(__file__).resolve().parents[1]
LETTERS = "ACDEFGHIKL"
TINY = {"d_model": 8, "d_state": 4, "pgc_expansions": [0.5, 1.0], "n_s4d": 1, "dropout": 0.1}
META = {"alphabet": "protein", "targets": ["fitness"], "task": "regression", "classes": None, "wild_type": None}


def make_frame(n: int = 180, length: int | tuple[int, int] = 10, seed: int = 0) -> pd.DataFrame:
    """Random sequences whose fitness counts good and bad letters, plus an epistatic pair and noise;
    2/3 train, 1/6 valid, 1/6 test."""
    rng = np.random.default_rng(seed)
    w = np.array([1.0, -1.0, 0.5, 0, 0, 0, 0, 0, -0.5, 0])  # per letter of LETTERS
    seqs, ys = [], []
    for _ in range(n):
        L = length if isinstance(length, int) else int(rng.integers(length[0], length[1] + 1))
        idx = rng.integers(0, len(LETTERS), L)
        seqs.append("".join(LETTERS[i] for i in idx))
        ys.append(w[idx].sum() + 1.0 * (idx[0] == idx[1]) + rng.normal(scale=0.3))
    split = np.array(["train"] * (n * 2 // 3) + ["valid"] * (n // 6) + ["test"] * (n - n * 2 // 3 - n // 6))
    return pd.DataFrame({
        "variant_id": [f"seq{i}" for i in range(n)], "sequence": seqs, "mutations": None,
        "n_mutations": None, "fitness": ys, "n_replicates": 1, "split": split, "fold": -1,
    })


def cfg(**kw) -> TrainConfig:
    base = dict(seeds=1, max_epochs=4, patience=100, device="cpu", batch_size=16, lr=5e-3)
    return TrainConfig(**{**base, **kw})


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class CountTrainingSteps:
    """Counts forward passes in training mode (to tell a resumed run from one that started over)."""

    def __init__(self, monkeypatch):
        self.n = 0
        original = Lyra.forward

        def forward(model, x, mask=None):
            self.n += model.training
            return original(model, x, mask)

        monkeypatch.setattr(Lyra, "forward", forward)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: thread synchronisation costs more than it saves, badly so on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def frame():
    return make_frame()


# ---------------------------------------------------------------------------------------------------


def test_config_rejects_unknown_and_bad_keys():
    with pytest.raises(ConfigError, match=r"train\.bogus"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match=r"train\.num_workers"):  # batches are tensor slices: no loader
        TrainConfig.from_dict({"num_workers": 0})
    for bad in ({"loss": "l1"}, {"selection_metric": "r2"}, {"huber_delta": 0.0}, {"class_weights": "inverse"},
                {"warmup_epochs": -1}, {"patience": -1}, {"device": "gpu"}, {"device": "cuda:x"}):
        (key, value), = bad.items()
        with pytest.raises(ConfigError, match=rf"train\.{key}"):
            TrainConfig(**bad)
    assert TrainConfig.from_dict({"lr": 0.01}).lr == 0.01
    assert TrainConfig(device="cuda:1").device == "cuda:1" and TrainConfig(patience=0).patience == 0


def test_selection_metrics_in_the_schema_are_the_metrics_computed():
    from lyra.schema import section_schema

    allowed = section_schema("train")["properties"]["selection_metric"]["enum"]
    assert sorted(allowed) == sorted([*M.REGRESSION_METRICS, *M.CLASSIFICATION_METRICS, "loss"])


def test_a_classification_metric_on_a_regression_task_is_refused(frame, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.selection_metric: 'auroc' is a classification metric"):
        train_model(frame, META, TINY, cfg(selection_metric="auroc"), seed=0, checkpoint_path=tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_deterministic_same_seed(frame, tmp_path):
    a = train_model(frame, META, TINY, cfg(), seed=3, checkpoint_path=tmp_path / "a.pt")
    b = train_model(frame, META, TINY, cfg(), seed=3, checkpoint_path=tmp_path / "b.pt")
    assert same_weights(weights(a.checkpoint_path), weights(b.checkpoint_path))
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    assert a.best_valid == b.best_valid
    c = train_model(frame, META, TINY, cfg(), seed=4, checkpoint_path=tmp_path / "c.pt")
    assert not same_weights(weights(a.checkpoint_path), weights(c.checkpoint_path))
    assert strip(a.history) != strip(c.history)


def test_selects_best_validation_epoch_with_a_deep_copy(frame, tmp_path):
    # no schedule and a high learning rate: validation Spearman peaks before the last epoch (on this
    # data without pool_norm, whose batch statistics keep this run improving to the end)
    r = train_model(frame, META, {**TINY, "pool_norm": "none"}, cfg(max_epochs=10, scheduler="none", lr=0.05), seed=0,
                    checkpoint_path=tmp_path / "m.pt")
    valid = [row["valid_spearman"] for row in r.history]
    assert r.best_epoch == 1 + int(np.argmax(valid))
    assert r.best_epoch < len(r.history) and valid[-1] < valid[r.best_epoch - 1]
    assert r.best_valid["spearman"] == valid[r.best_epoch - 1]
    # the saved weights reproduce the best epoch's validation metrics, not the last epoch's
    ev = evaluate_ensemble([r.checkpoint_path], frame, META, split="valid")["ensemble"]
    assert ev["spearman"] == pytest.approx(valid[r.best_epoch - 1], abs=1e-9)
    assert ev["mse"] == pytest.approx(r.history[r.best_epoch - 1]["valid_mse"], rel=1e-6)
    assert torch.load(r.checkpoint_path, weights_only=True)["best_epoch"] == r.best_epoch


def test_a_tied_validation_metric_goes_to_the_lower_validation_loss(frame, tmp_path, caplog):
    # three validation rows: Spearman takes few values and ties from early on (FLIP one_vs_rest has three)
    few = frame.copy()
    valid = np.flatnonzero(few["split"] == "valid")
    few.loc[few.index[valid[3:]], "split"] = "train"
    r = train_model(few, META, TINY, cfg(max_epochs=12), seed=0, checkpoint_path=tmp_path / "m.pt")
    spearman = np.array([row["valid_spearman"] for row in r.history])
    loss = np.array([row["valid_loss"] for row in r.history])
    tied = np.flatnonzero(spearman == spearman.max())
    assert len(tied) >= 2  # the case under test
    assert r.best_epoch == 1 + tied[np.argmin(loss[tied])]
    assert r.best_epoch != 1 + tied[0]  # the first epoch to reach the maximum is not the one kept
    assert replay_selection(r.history, "spearman", patience=100) == (r.best_epoch, 12)
    assert "only 3 validation variants" in caplog.text


def test_test_split_never_influences_training(frame, tmp_path):
    scrambled = frame.copy()
    test = scrambled["split"] == "test"
    scrambled.loc[test, "fitness"] = np.random.default_rng(9).normal(size=test.sum()) * 100
    scrambled.loc[test, "sequence"] = "A" * 10
    a = train_model(frame, META, TINY, cfg(max_epochs=3), seed=0, checkpoint_path=tmp_path / "a.pt")
    b = train_model(scrambled, META, TINY, cfg(max_epochs=3), seed=0, checkpoint_path=tmp_path / "b.pt")
    assert same_weights(weights(a.checkpoint_path), weights(b.checkpoint_path))
    assert a.best_epoch == b.best_epoch


def test_early_stopping(frame, tmp_path):
    r = train_model(frame, META, TINY, cfg(max_epochs=60, patience=2, scheduler="none", lr=0.05), seed=0,
                    checkpoint_path=tmp_path / "m.pt")
    assert r.stopped_early
    assert len(r.history) == r.best_epoch + 2 < 60
    assert replay_selection(r.history, "spearman", patience=2) == (r.best_epoch, len(r.history))
    assert replay_selection(r.history, "loss", patience=0)[0] == 1 + int(np.argmin([h["valid_loss"] for h in r.history]))


def test_needs_validation_rows(frame, tmp_path):
    no_valid = frame[frame["split"] != "valid"]
    with pytest.raises(DataError, match="validation"):
        train_model(no_valid, META, TINY, cfg(), seed=0, checkpoint_path=tmp_path / "m.pt")


def test_resume_after_interruption_is_bit_identical(frame, tmp_path, monkeypatch):
    full = train_model(frame, META, TINY, cfg(max_epochs=5), seed=1, checkpoint_path=tmp_path / "full.pt")

    def interrupt(epoch, value):
        if epoch == 3:
            raise KeyboardInterrupt  # the job dies after epoch 3 was saved

    resume = tmp_path / "seed1.resume.pt"
    with pytest.raises(KeyboardInterrupt):
        train_model(frame, META, TINY, cfg(max_epochs=5), seed=1, checkpoint_path=tmp_path / "m.pt",
                    resume_path=resume, report=interrupt)
    assert resume.exists() and not (tmp_path / "m.pt").exists()
    steps = CountTrainingSteps(monkeypatch)
    again = train_model(frame, META, TINY, cfg(max_epochs=5), seed=1, checkpoint_path=tmp_path / "m.pt",
                        resume_path=resume)
    assert steps.n == 2 * 8  # only epochs 4 and 5 ran (120 training rows / batch 16 = 8 steps)
    assert same_weights(weights(full.checkpoint_path), weights(again.checkpoint_path))
    assert [h["valid_spearman"] for h in again.history] == [h["valid_spearman"] for h in full.history]
    assert not resume.exists()


def test_resume_state_from_another_config_is_ignored(frame, tmp_path, monkeypatch):
    resume = tmp_path / "r.pt"
    with pytest.raises(KeyboardInterrupt):
        train_model(frame, META, TINY, cfg(max_epochs=3), seed=0, checkpoint_path=tmp_path / "m.pt",
                    resume_path=resume, report=lambda e, v: (_ for _ in ()).throw(KeyboardInterrupt))
    steps = CountTrainingSteps(monkeypatch)
    train_model(frame, META, TINY, cfg(max_epochs=3, lr=1e-2), seed=0, checkpoint_path=tmp_path / "m.pt",
                resume_path=resume)
    assert steps.n == 3 * 8  # started over


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys, json
    import pandas as pd
    import torch
    from lyra.model.lyra import Lyra
    from lyra.learn.train import TrainConfig, train_model

    frame_path, resume, ckpt, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    calls = 0
    original = Lyra.forward

    def forward(model, x, mask=None):
        global calls
        if model.training:
            calls += 1
            if calls == kill_at:  # mid-epoch, between two optimiser steps
                os.kill(os.getpid(), signal.SIGKILL)
        return original(model, x, mask)

    Lyra.forward = forward
    torch.set_num_threads(1)  # as in the test process: the uninterrupted run it is compared with
    frame = pd.read_pickle(frame_path)
    spec = json.loads(sys.argv[5])
    train_model(frame, spec["meta"], spec["model"], TrainConfig(**spec["train"]), seed=2,
                checkpoint_path=ckpt, resume_path=resume)
""")


def test_resume_after_sigkill_mid_epoch(frame, tmp_path, monkeypatch):
    train_kw = dict(seeds=1, max_epochs=4, patience=100, device="cpu", batch_size=16, lr=5e-3)
    frame.to_pickle(tmp_path / "frame.pkl")
    resume, ckpt = tmp_path / "seed2.resume.pt", tmp_path / "seed2.pt"
    spec = json.dumps({"meta": META, "model": TINY, "train": train_kw})
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path / "frame.pkl"), str(resume), str(ckpt),
                           str(2 * 8 + 5), spec], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert resume.exists() and not ckpt.exists()
    assert torch.load(resume, weights_only=True)["progress"]["epoch"] == 2

    steps = CountTrainingSteps(monkeypatch)
    resumed = train_model(frame, META, TINY, TrainConfig(**train_kw), seed=2, checkpoint_path=ckpt,
                          resume_path=resume)
    assert steps.n == 2 * 8  # epochs 3 and 4 only
    monkeypatch.undo()
    full = train_model(frame, META, TINY, TrainConfig(**train_kw), seed=2, checkpoint_path=tmp_path / "full.pt")
    assert same_weights(weights(resumed.checkpoint_path), weights(full.checkpoint_path))
    assert not resume.exists()


def test_checkpoint_contents_and_loading(frame, tmp_path):
    r = train_model(frame, META, TINY, cfg(max_epochs=2), seed=5, checkpoint_path=tmp_path / "m.pt")
    ckpt = torch.load(r.checkpoint_path, weights_only=True)
    for key in ("model_config", "state_dict", "alphabet", "targets", "task", "classes", "target_transform",
                "seed", "best_epoch", "history", "train_config", "lyra_version"):
        assert key in ckpt, key
    assert ckpt["seed"] == 5 and ckpt["targets"] == ["fitness"] and ckpt["alphabet"] == "protein"
    assert ckpt["model_config"]["d_input"] == 20 and ckpt["model_config"]["d_output"] == 1
    model, info = load_checkpoint(r.checkpoint_path)
    assert not model.training and info["best_epoch"] == r.best_epoch

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(LyraError) as e:
        load_checkpoint(junk)
    assert str(junk) in str(e.value) and "\n" not in str(e.value)
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(LyraError, match="missing"):
        load_checkpoint(tmp_path / "foreign.pt")


@pytest.mark.parametrize("kind", ["none", "standardize", "rank_gauss"])
def test_target_transform_round_trip(kind):
    rng = np.random.default_rng(0)
    y = np.exp(rng.normal(size=(200, 2)))  # skewed, like fitness
    y[5, 1] = np.nan
    t = fit_target_transform(kind, y)
    z = apply_transform(t, y)
    assert np.allclose(invert_transform(t, z), y, equal_nan=True)
    if kind == "none":
        assert np.array_equal(z, y, equal_nan=True)
        return
    assert abs(np.nanmean(z[:, 0])) < 0.05 and abs(np.nanstd(z[:, 0]) - 1) < 0.1
    # monotone beyond the training range: variants fitter than all training ones still rank apart
    out = invert_transform(t, np.array([[10.0, 0.0], [20.0, 0.0]]))
    assert out[1, 0] > out[0, 0] > np.nanmax(y[:, 0])


def test_predictions_are_in_original_units(frame, tmp_path):
    scaled = frame.assign(fitness=frame["fitness"] * 1000 + 5)
    r = train_model(scaled, META, TINY, cfg(max_epochs=15, lr=1e-2), seed=0, checkpoint_path=tmp_path / "m.pt")
    model, info = load_checkpoint(r.checkpoint_path)
    test = scaled[scaled["split"] == "test"]
    pred = predict_sequences(model, info, test["sequence"].tolist())[:, 0]
    y = test["fitness"].to_numpy()
    assert abs(pred.mean() - y.mean()) < 0.5 * y.std()
    assert 0.1 * y.std() < pred.std() < 2 * y.std()  # in model units the spread would be ~1
    assert M.spearman(y, pred) > 0.3  # it learned something
    ev = evaluate_ensemble([r.checkpoint_path], scaled, META)["ensemble"]
    assert ev["mse"] == pytest.approx(np.mean((pred - y) ** 2), rel=1e-9)


def test_classification(tmp_path):
    frame = make_frame(240)
    counts = frame["sequence"].str.count("A") + frame["sequence"].str.count("C")
    frame["label"] = np.select([counts <= 1, counts <= 2], ["low", "mid"], "high")
    meta = {**META, "targets": ["label"], "task": "classification", "classes": ["low", "mid", "high"]}
    paths = []
    for seed in (0, 1):
        r = train_model(frame, meta, TINY, cfg(max_epochs=8, lr=1e-2, class_weights="balanced"), seed=seed,
                        checkpoint_path=tmp_path / f"s{seed}.pt")
        assert {"valid_accuracy", "valid_auroc", "valid_mcc"} <= r.history[0].keys()
        accuracy = np.array([h["valid_accuracy"] for h in r.history])
        tied = np.flatnonzero(accuracy == accuracy.max())  # accuracy ties often: the lowest loss among them
        assert r.best_epoch == 1 + tied[np.argmin([r.history[i]["valid_loss"] for i in tied])]
        paths.append(r.checkpoint_path)
    out = evaluate_ensemble(paths, frame, meta)
    assert set(out["ensemble"]) == {"accuracy", "auroc", "mcc"} and len(out["per_seed"]) == 2
    test = frame[frame["split"] == "test"]
    y = test["label"].map({"low": 0, "mid": 1, "high": 2}).to_numpy()
    probs = np.mean([predict_sequences(*load_checkpoint(p), test["sequence"].tolist()) for p in paths], axis=0)
    assert np.allclose(probs.sum(1), 1.0)
    assert out["ensemble"]["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert out["ensemble"]["auroc"] == pytest.approx(M.auroc(y, probs))
    assert out["ensemble"]["auroc"] > 0.6  # better than chance on an easy rule


def test_variable_length_sequences_with_padding(tmp_path):
    frame = make_frame(150, length=(5, 14), seed=1)
    r = train_model(frame, META, {**TINY, "bidirectional": True}, cfg(max_epochs=2), seed=0,
                    checkpoint_path=tmp_path / "m.pt")
    model, info = load_checkpoint(r.checkpoint_path)
    seqs = frame["sequence"].tolist()[:40]
    together = predict_sequences(model, info, seqs)
    alone = np.concatenate([predict_sequences(model, info, [s]) for s in seqs])
    assert len(set(map(len, seqs))) > 3
    assert np.allclose(together, alone, atol=1e-5)


def test_multiple_targets_with_missing_values(frame, tmp_path):
    two = frame.assign(stability=-frame["fitness"] + np.random.default_rng(0).normal(size=len(frame)))
    two.loc[two.index[::7], "stability"] = np.nan
    meta = {**META, "targets": ["fitness", "stability"]}
    r = train_model(two, meta, TINY, cfg(max_epochs=2), seed=0, checkpoint_path=tmp_path / "m.pt")
    out = evaluate_ensemble([r.checkpoint_path], two, meta)
    assert set(out["ensemble"]["per_target"]) == {"fitness", "stability"}
    assert out["ensemble"]["spearman"] == out["ensemble"]["per_target"]["fitness"]["spearman"]
    # each target is scored on its own measured rows only, against the model's output for that target
    test = two[two["split"] == "test"]
    pred = predict_sequences(*load_checkpoint(r.checkpoint_path), test["sequence"].tolist())  # (n, 2)
    measured = test["stability"].notna().to_numpy()
    assert 0 < measured.sum() < len(test)  # the case under test
    stability = out["ensemble"]["per_target"]["stability"]
    assert np.isfinite(stability["spearman"])
    assert stability["spearman"] == pytest.approx(M.spearman(test["stability"][measured], pred[measured, 1]))
    assert stability["mse"] == pytest.approx(np.mean((test["stability"][measured] - pred[measured, 1]) ** 2))


def test_cuda_request_without_gpu_falls_back_to_cpu(frame, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        assert resolve_device("cuda") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.warns(RuntimeWarning):
        r = train_model(frame, META, TINY, cfg(max_epochs=1, device="cuda"), seed=0,
                        checkpoint_path=tmp_path / "m.pt")
    assert r.checkpoint_path.exists()
    with pytest.raises(ConfigError, match="train.device"):
        resolve_device("tpu")


def test_write_metrics(frame, tmp_path, caplog):
    paths = [train_model(frame, META, TINY, cfg(max_epochs=8, lr=1e-2), seed=s, checkpoint_path=tmp_path / f"s{s}.pt")
             .checkpoint_path for s in (0, 1)]
    with caplog.at_level(logging.WARNING, logger="lyra.learn.evaluate"):
        write_metrics(tmp_path / "models" / "metrics.json", paths, frame, META, "cpu")
    text = (tmp_path / "models" / "metrics.json").read_text()
    out = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert {"test", "valid", "learning_curves", "warnings", "learned"} <= out.keys()
    # a model that learned: predictions correlate with the targets, nothing to warn about
    assert out["test"]["ensemble"]["spearman"] > 0.5 and out["valid"]["ensemble"]["spearman"] > 0.5
    assert out["warnings"] == [] and out["learned"] is True and not caplog.records
    base = out["valid"]["baseline"]["fitness"]
    assert base["n"] == (frame["split"] == "valid").sum()
    assert base["target_std"] == pytest.approx(frame.loc[frame["split"] == "valid", "fitness"].std(ddof=0))
    assert 0.1 * base["target_std"] < base["prediction_std"] < 2 * base["target_std"]
    assert set(out["test"]["ensemble"]) == {"spearman", "pearson", "mse", "ndcg"}
    assert [s["seed"] for s in out["test"]["per_seed"]] == [0, 1]
    assert set(out["learning_curves"]) == {"0", "1"} and len(out["learning_curves"]["0"]) == 8
    assert out["test"]["n"] == (frame["split"] == "test").sum()
    # the ensemble is the mean of the members' predictions
    test = frame[frame["split"] == "test"]
    pred = np.mean([predict_sequences(*load_checkpoint(p), test["sequence"].tolist()) for p in paths], axis=0)
    assert out["test"]["ensemble"]["spearman"] == pytest.approx(M.spearman(test["fitness"], pred[:, 0]))


def test_write_metrics_flags_a_collapsed_model(frame, tmp_path, caplog):
    """A decoder with zero weights predicts its bias for every variant: metrics.json and the log say that
    the model has not learned."""
    r = train_model(frame, META, TINY, cfg(max_epochs=1), seed=0, checkpoint_path=tmp_path / "s0.pt")
    checkpoint = torch.load(r.checkpoint_path, weights_only=True)
    checkpoint["state_dict"]["decoder.weight"].zero_()
    torch.save(checkpoint, tmp_path / "collapsed.pt")
    with caplog.at_level(logging.WARNING, logger="lyra.learn.evaluate"):
        write_metrics(tmp_path / "metrics.json", [tmp_path / "collapsed.pt"], frame, META)
    out = json.loads((tmp_path / "metrics.json").read_text())
    assert out["learned"] is False and len(out["warnings"]) == 1
    assert out["warnings"][0].startswith("fitness: predictions collapsed to a near-constant")
    assert "on valid (0.000), test (0.000)" in out["warnings"][0]
    assert out["valid"]["baseline"]["fitness"]["prediction_std"] < 1e-9
    assert [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING] == out["warnings"]


def test_varied_sites_model_reads_only_the_sites_where_training_variants_differ(tmp_path):
    """model.sites: varied -> the checkpoint's network reads the varied columns (1-based 3 and 6 here)
    and nothing else: a library variant changed elsewhere scores as its wild-type-site twin."""
    rng = np.random.default_rng(0)
    wt = list("MKTAYIAKQR")
    rows = []
    for i in range(90):
        s = wt.copy()
        s[2], s[5] = LETTERS[rng.integers(10)], LETTERS[rng.integers(10)]
        rows.append(("".join(s), float(LETTERS.index(s[2]) - LETTERS.index(s[5]) + rng.normal(scale=0.1))))
    split = ["train"] * 60 + ["valid"] * 30
    f = pd.DataFrame({"variant_id": [f"v{i}" for i in range(90)], "sequence": [r[0] for r in rows],
                      "fitness": [r[1] for r in rows], "split": split})
    out = tmp_path / "sites.pt"
    train_model(f, META, {**TINY, "sites": "varied"}, cfg(max_epochs=3), 0, out)
    model, info = load_checkpoint(out)
    assert model.config.site_positions == (2, 5)
    a, b = "MKCAYDAKQR", "WWCWWDWWWW"  # the same letters at the sites, different everywhere else
    pa, pb = predict_sequences(model, info, [a, b])
    assert pa == pb
    with pytest.raises(DataError, match="sites up to position 6"):
        predict_sequences(model, info, ["MKCA"])
    f_len = f.assign(sequence=f["sequence"].where(f.index != 0, "MKTAYIAKQ"))
    with pytest.raises(ConfigError, match="model.sites: varied needs variants of one length"):
        train_model(f_len, META, {**TINY, "sites": "varied"}, cfg(max_epochs=1), 0, tmp_path / "x.pt")


def test_pool_norm_lets_a_long_protein_learn_from_few_mutations(tmp_path):
    """Variants of a 300-residue protein with 1-2 mutations each: mean-pooled features differ by about 1/300
    between variants, which the decoder cannot read within a few epochs; standardised (pool_norm: batch),
    it learns the landscape."""
    rng = np.random.default_rng(0)
    n_res, n, aa = 300, 600, "ACDEFGHIKLMNPQRSTVWY"
    wt, w = rng.integers(0, 20, n_res), rng.normal(size=20)  # fitness: w[new residue] - w[old], summed
    seqs, ys = [], []
    for _ in range(n):
        s, k = wt.copy(), rng.integers(1, 3)
        pos = rng.choice(n_res, k, replace=False)
        s[pos] = rng.integers(0, 20, k)
        seqs.append("".join(aa[j] for j in s))
        ys.append((w[s[pos]] - w[wt[pos]]).sum() + rng.normal(scale=0.2))
    f = pd.DataFrame({"variant_id": [f"v{i}" for i in range(n)], "sequence": seqs, "fitness": ys,
                      "split": ["train"] * 450 + ["valid"] * 150})
    best = {}
    for pool_norm in ("batch", "none"):
        result = train_model(f, META, {**TINY, "pool_norm": pool_norm}, cfg(max_epochs=4), 0, tmp_path / f"{pool_norm}.pt")
        best[pool_norm] = result.best_valid["spearman"]
    assert best["batch"] > 0.5 and best["batch"] > best["none"] + 0.3, best


def test_pool_norm_predicts_with_statistics_of_the_training_variants(tmp_path):
    """After training, PoolNorm's stored mean and variance are those of the training variants' pooled
    features as the saved model computes them (no lag behind the weights); the checkpoint of a model
    from before pool_norm (no such statistics) still loads and predicts."""
    f = make_frame()
    out = tmp_path / "m.pt"
    train_model(f, META, TINY, cfg(max_epochs=2), 0, out)
    model, info = load_checkpoint(out)
    pooled = []
    model.pool_norm.register_forward_hook(lambda module, inputs, output: pooled.append(inputs[0]))
    predict_sequences(model, info, list(f.loc[f.split == "train", "sequence"]))
    z = torch.cat(pooled)  # (n_train, H)
    assert torch.allclose(model.pool_norm.running_mean, z.mean(0), atol=1e-5)
    assert torch.allclose(model.pool_norm.running_var, z.var(0, unbiased=False), rtol=1e-4, atol=1e-7)

    old = torch.load(out, weights_only=True)
    old["model_config"].pop("pool_norm")
    old["state_dict"] = {k: v for k, v in old["state_dict"].items() if not k.startswith("pool_norm.")}
    torch.save(old, tmp_path / "old.pt")
    before, old_info = load_checkpoint(tmp_path / "old.pt")
    assert before.config.pool_norm == "none"
    assert np.isfinite(predict_sequences(before, old_info, ["ACDEFGHIKL"])).all()

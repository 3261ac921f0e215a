"""`manifest.json`: what a campaign was computed from, with what, where and how long it took.

SHA-256 of every input (measurements, wild type and its gene, round files, library file, config files)
and of the campaign's main outputs, the resolved config, package versions, the git commit and whether
the tree had uncommitted changes, the seeds, the device, per-stage wall times (Snakemake benchmark
files) and the host. It holds a timestamp, so unlike ranking.csv it is not byte-identical across reruns.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from lyra.campaign import layout
from lyra.campaign.layout import Layout
from lyra.campaign.settings import ridge_baseline
from lyra.data.variants import wild_type_is_path
from lyra.errors import LyraError
from lyra.io import sha256_file, write_json

log = logging.getLogger("lyra.campaign.manifest")

MANIFEST_VERSION = 1
# distribution name -> key in the manifest
PACKAGES = {"lyra-campaign": "lyra", "torch": "torch", "numpy": "numpy", "pandas": "pandas", "pyarrow": "pyarrow",
            "optuna": "optuna", "scipy": "scipy", "matplotlib": "matplotlib", "snakemake": "snakemake",
            "snakemake-executor-plugin-slurm": "snakemake-executor-plugin-slurm"}
# the campaign's outputs worth a checksum (relative to results/<campaign>/)
OUTPUTS = (layout.DATASET, layout.TUNE_BEST, layout.TUNE_TRIALS, layout.METRICS, layout.SCORES, layout.RANKING,
           layout.RANKING_FASTA, layout.PLATE)


def output_files(config: Mapping[str, Any]) -> tuple[str, ...]:
    """OUTPUTS, the one-hot ridge baseline when the campaign has one, and the picks' genes when the
    campaign writes them (data.wild_type_dna)."""
    data = config.get("data") or {}
    ridge = (layout.RIDGE,) if data.get("target_column") and ridge_baseline(config) else ()
    return OUTPUTS + ridge + ((layout.RANKING_DNA,) if data.get("wild_type_dna") else ())


def file_record(role: str, path: str | os.PathLike | None) -> dict[str, Any]:
    """{role, path, sha256, bytes}; sha256 is null (and `missing` true) for a file that is not there."""
    rec: dict[str, Any] = {"role": role, "path": None if path is None else str(Path(path).resolve())}
    if path is not None and Path(path).is_file():
        rec.update(sha256=sha256_file(path), bytes=Path(path).stat().st_size)
    else:
        rec.update(sha256=None, bytes=None, missing=True)
    return rec


def input_records(config: Mapping[str, Any], config_files: Sequence[str | os.PathLike] = ()) -> list[dict]:
    """Every file the campaign read, resolved the way the stages resolve them (lyra.campaign.stages)."""
    from lyra.campaign import rounds, settings

    records: list[dict] = []
    if config.get("data"):
        data = _tolerant(lambda: settings.data_config(config), dict(config["data"]))
        records.append(file_record("measurements", data.get("path")))
        wt = data.get("wild_type")
        if wt and wild_type_is_path(str(wt)):  # decided from the text: a long sequence is never stat'ed
            records.append(file_record("wild_type", wt))
        elif wt:  # the sequence itself, written in the config
            records.append({"role": "wild_type", "path": None, "sha256": hashlib.sha256(str(wt).encode()).hexdigest(),
                            "bytes": len(str(wt)), "inline": True})
    for path in _tolerant(lambda: rounds.round_files(config), []):
        records.append(file_record(f"round {Path(path).parent.name}", path))
    dna = _tolerant(lambda: settings.wild_type_dna(config), None)
    if dna:
        records.append(file_record("wild_type_dna", dna))
    msa = _tolerant(lambda: settings.prior_msa(config), None)
    if msa:
        records.append(file_record("prior msa", msa))
    if config.get("library"):
        lib = _tolerant(lambda: settings.library_section(config), dict(config["library"]))
        for key in ("path", "spec"):
            if lib.get(key):
                records.append(file_record(f"library {key}", lib[key]))
    for path in dict.fromkeys(str(p) for p in config_files):  # unique, in order
        records.append(file_record("config", path))
    return records


def _tolerant(fn, fallback):
    """The manifest records what it can: a path that no longer resolves is recorded as missing."""
    try:
        return fn()
    except (LyraError, OSError) as e:
        log.warning("manifest: %s", e)
        return fallback


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist, key in PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    if out["lyra"] is None:  # run from a source tree without installing it
        import lyra

        out["lyra"] = getattr(lyra, "__version__", None)
    return out


def git_state(directory: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """{commit, dirty, root} of the checkout holding the lyra code; None when it is not a git checkout.

    dirty: the code that ran is not exactly the commit: modified tracked files or untracked files that
    git does not ignore (results/ and the like are ignored through .gitignore).
    """
    directory = Path(directory) if directory else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain")
    return {"commit": commit, "dirty": None if status is None else bool(status),
            "root": git("rev-parse", "--show-toplevel")}


def device_info(device: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"requested": device, "cuda_available": False, "gpu": None, "cuda": None}
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return out
    if torch.cuda.is_available():
        out.update(cuda_available=True, gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   gpu_count=torch.cuda.device_count())
    name = str(device or "auto")
    out["type"] = ("cuda" if out["cuda_available"] else "cpu") if name == "auto" else (
        "cuda" if name.startswith("cuda") and out["cuda_available"] else "cpu")
    out["torch_threads"] = torch.get_num_threads()
    return out


def benchmark_times(benchmarks_dir: str | os.PathLike) -> dict[str, float]:
    """Snakemake benchmark TSVs (results/<campaign>/benchmarks/**.tsv) -> {job: wall seconds}.

    A job name is the file's path without .tsv (e.g. 'train/seed0'); repeated runs are averaged.
    """
    import pandas as pd

    root = Path(benchmarks_dir)
    out: dict[str, float] = {}
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        try:
            s = pd.read_csv(path, sep="\t")["s"]
        except (KeyError, ValueError, OSError) as e:
            log.warning("%s: not a Snakemake benchmark file (%s)", path, type(e).__name__)
            continue
        out[path.relative_to(root).with_suffix("").as_posix()] = round(float(s.mean()), 3)
    return out


def stage_totals(jobs: Mapping[str, float]) -> dict[str, float]:
    """{'train/seed0': 10, 'train/seed1': 12, 'preprocess': 1} -> {'train': 22, 'preprocess': 1}."""
    out: dict[str, float] = {}
    for job, seconds in jobs.items():
        stage = job.split("/", 1)[0]
        out[stage] = round(out.get(stage, 0.0) + seconds, 3)
    return out


def seeds(config: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """Every seed the campaign used: the campaign seed, the split seed, each ensemble member's training
    seed (from metrics.json when present, else derived like lyra.campaign.stages), the tuning samplers'."""
    from lyra.campaign.settings import training_seed

    out: dict[str, Any] = {"campaign": config.get("seed"), "split": (config.get("split") or {}).get("seed")}
    members = None
    metrics = Layout(root).metrics
    if metrics.exists():
        try:
            members = [row["seed"] for row in json.loads(metrics.read_text())["test"]["per_seed"]]
        except (KeyError, TypeError, json.JSONDecodeError):
            members = None
    if members is None and config.get("seed") is not None and (config.get("train") or {}).get("seeds"):
        members = [training_seed(config, k) for k in range(int(config["train"]["seeds"]))]
    out["train_members"] = members
    trials = Layout(root).tune_trials
    if trials.exists():
        import pandas as pd

        try:
            col = pd.read_csv(trials, sep="\t").get("seed")
            out["tune_trial_seeds"] = sorted({int(s) for s in col.dropna()}) if col is not None else None
        except (ValueError, OSError):
            out["tune_trial_seeds"] = None
    return out


def build_manifest(campaign_dir: str | os.PathLike, config: Mapping[str, Any],
                   stage_times: Mapping[str, float] | None = None, config_files: Sequence[str | os.PathLike] = (),
                   device: str | None = None) -> dict[str, Any]:
    root = Path(campaign_dir)
    jobs = benchmark_times(Layout(root).benchmarks)
    stages = stage_totals(jobs)
    stages.update({k: round(float(v), 3) for k, v in (stage_times or {}).items()})
    return {
        "manifest_version": MANIFEST_VERSION,
        "campaign": config.get("campaign", root.name),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "campaign_dir": str(root.resolve()),
        "inputs": input_records(config, config_files),
        "outputs": [file_record(rel, root / rel) for rel in output_files(config)]
        + [file_record(p.relative_to(root).as_posix(), p) for p in Layout(root).checkpoints()],
        "config": {k: v for k, v in config.items() if not str(k).startswith("_")},
        "config_base_dir": config.get("_base_dir"),
        "packages": package_versions(),
        "git": git_state(),
        "seeds": seeds(config, root),
        "device": device_info(device or (config.get("train") or {}).get("device")),
        "stage_wall_time_s": stages,
        "job_wall_time_s": jobs,
    }


def write_manifest(campaign_dir: str | os.PathLike, config: Mapping[str, Any], out_path: str | os.PathLike,
                   stage_times: Mapping[str, float] | None = None, config_files: Sequence[str | os.PathLike] = (),
                   device: str | None = None) -> dict[str, Any]:
    """Write manifest.json atomically; return its content.

    stage_times: extra {stage: seconds} (e.g. lyra.campaign.run.run_campaign's timings), added to those read
    from the Snakemake benchmark files.
    """
    manifest = build_manifest(campaign_dir, config, stage_times, config_files, device)
    write_json(out_path, manifest)
    log.info("wrote %s (%d inputs)", out_path, len(manifest["inputs"]))
    return manifest

# Shared helpers: the resolved config, per-campaign paths, per-stage config files, and what the
# console shows when a job fails.

import shutil
import sys
import time

from lyra.campaign import layout
from lyra.campaign.checks import check_campaign, stage_inputs
from lyra.campaign.simulate import check_simulation
from lyra.campaign.config import resolve_config, stage_config
from lyra.campaign.joblogs import job_errors, job_warnings
from lyra.errors import LyraError, one_line

# The user's config file(s), named in every error and hashed into the manifest.
CONFIG_FILES = [os.path.relpath(f) if not os.path.relpath(f).startswith("..") else str(f) for f in workflow.configfiles]
CONFIG_SOURCE = ", ".join(CONFIG_FILES) or "snakemake config"

# Defaults filled in and validated against config/schema.yaml (the same code path as `lyra run`);
# missing files and an oversized or empty library fail here, before any job is submitted, as one line.
try:
    SIMULATES = "simulate" in config  # the user's file asks for retrospective campaigns
    config.update(resolve_config(config, source=CONFIG_SOURCE))
    if workflow.is_main_process:  # not again in each cluster job: the run was checked when it started
        check_campaign(config)
        if SIMULATES:
            check_simulation(config)
    # Files outside results/ that each stage reads: declared inputs, so an edit reruns that stage.
    STAGE_INPUTS = stage_inputs(config)
except LyraError as e:
    sys.exit(f"error: {one_line(e, CONFIG_SOURCE)}")

RESULTS = str(layout.campaign_dir(config))
SEEDS = list(range(config["train"]["seeds"]))
WORKERS = list(range(config["tune"]["n_workers"]))
SHARDS = list(range(config["library"]["n_shards"]))
STARTED = time.time()


# Ensemble members, tuning workers and library shards are numbered; nothing else may reach a shell.
wildcard_constraints:
    seed=r"\d+",
    run=r"\d+",
    strategy=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    worker=r"\d+",
    shard=r"\d+",


def res(path):
    """A file of this campaign: `path` is one of lyra.campaign.layout's names."""
    return f"{RESULTS}/{path}"


def stage_cfg(stage):
    return res(layout.STAGE_CONFIG.format(stage=stage))


onstart:
    # Without this, a cluster run on a machine with no SLURM fails each job after ~45 s on 'sacct'.
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.name == "slurm" and shutil.which("sbatch") is None:
        sys.exit(
            "error: the slurm executor (--profile slurm) needs SLURM, and 'sbatch' is not on PATH here: "
            "run from a login node of the cluster, or locally with `snakemake --cores N`"
        )


onsuccess:
    # Warnings land in the jobs' logs (on a cluster, on other machines): repeat them where the user looks.
    for line in job_warnings(res(layout.LOGS), STARTED):
        print(line, file=sys.stderr)


onerror:
    # The one-line reason of each failed job, not only "check log file(s)".
    for line in job_errors(res(layout.LOGS), STARTED):
        print(line, file=sys.stderr)

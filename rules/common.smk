# Shared helpers: the resolved config, per-campaign paths, and per-stage config files.

from lyra.config import resolve_config, stage_config
from lyra.pipeline import check_campaign, data_config, prior_msa, round_files

# Defaults filled in and validated against config/schema.yaml (the same code path as `lyra run`);
# missing files and an oversized library fail here, before any job is submitted.
config.update(resolve_config(config, source="snakemake config"))
check_campaign(config)

RESULTS = f"results/{config['campaign']}"
SEEDS = list(range(config["train"]["seeds"]))
WORKERS = list(range(config["tune"]["n_workers"]))
SHARDS = list(range(config["library"]["n_shards"]))
# The evolutionary prior's alignment (prior.msa): an input of tuning and training when set.
PRIOR_MSA = [prior_msa(config)] if prior_msa(config) else []


# Ensemble members, tuning workers and library shards are numbered; nothing else may reach a shell.
wildcard_constraints:
    seed=r"\d+",
    worker=r"\d+",
    shard=r"\d+",


def res(path):
    return f"{RESULTS}/{path}"


def stage_cfg(stage):
    return res(f"config/{stage}.yaml")

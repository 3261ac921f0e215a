# Shared helpers: the resolved config, per-campaign paths, and per-stage config files.

from lyra.config import resolve_config, stage_config
from lyra.pipeline import data_config, round_files

# Defaults filled in and validated against config/schema.yaml (the same code path as `lyra run`).
config.update(resolve_config(config, source="snakemake config"))

RESULTS = f"results/{config['campaign']}"
SEEDS = list(range(config["train"]["seeds"]))
WORKERS = list(range(config["tune"]["n_workers"]))
SHARDS = list(range(config["library"]["n_shards"]))


def res(path):
    return f"{RESULTS}/{path}"


def stage_cfg(stage):
    return res(f"config/{stage}.yaml")

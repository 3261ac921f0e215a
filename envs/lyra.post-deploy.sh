#!/usr/bin/env bash
# Snakemake runs this once, inside the environment it just created from lyra.yaml, in the workflow's
# working directory: install this checkout's lyra package (editable, so a code change needs no new
# environment). Without it the rules would run whatever `lyra` happens to be on PATH.
set -euo pipefail
if ! grep -qs '^name = "lyra-campaign"' pyproject.toml; then
    echo "error: envs/lyra.post-deploy.sh: run snakemake from the lyra checkout (no lyra-campaign pyproject.toml in $PWD)" >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation -e .

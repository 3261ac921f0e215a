# Lyra campaign workflow: preprocess -> tune -> train -> score -> rank -> report.
#
#   snakemake --report report.html                    # the HTML report of a finished campaign
#
#   snakemake --cores 2                               # the demo campaign (config/config.yaml)
#   snakemake --cores 2 --configfile my_campaign.yaml # your campaign
#   snakemake --profile slurm                         # the same, on a SLURM cluster
#
# Rules are thin: each calls one `lyra <stage>` command; the logic lives in the lyra package.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/config.smk"
include: "rules/preprocess.smk"
include: "rules/tune.smk"
include: "rules/train.smk"
include: "rules/score.smk"
include: "rules/report.smk"


rule all:
    input:
        res("data/dataset.parquet"),
        res("models/metrics.json"),
        res("ranking.csv"),
        res("ranking.fasta"),
        rules.report.output,
    default_target: True

# Lyra campaign workflow: preprocess -> tune -> train -> score -> rank -> report.
#
#   snakemake --cores 2                               # the demo campaign (config/config.yaml)
#   snakemake --cores 2 --configfile my_campaign.yaml # your campaign: your file is the whole campaign
#   snakemake --profile slurm --configfile my.yaml    # the same, on a SLURM cluster
#   snakemake --report report.html --configfile my.yaml  # the HTML report of a finished campaign
#
# Rules are thin: each calls one `lyra <stage>` command; the logic lives in the lyra package.

from snakemake.utils import min_version

min_version("9.0")


# The demo runs only when no --configfile is given. A campaign that brings its own file gets that file
# and the schema's defaults, nothing of the demo (Snakemake would otherwise extend this file with it).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/config.smk"
include: "rules/preprocess.smk"
include: "rules/tune.smk"
include: "rules/train.smk"
include: "rules/score.smk"
include: "rules/report.smk"
include: "rules/simulate.smk"


rule all:
    input:
        res(layout.DATASET),
        res(layout.METRICS),
        res(layout.RANKING),
        res(layout.RANKING_FASTA),
        rules.report.output,
    default_target: True

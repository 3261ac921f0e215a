# Stage 0: one small config file per stage, holding only the sections that stage reads.
# Snakemake's params rerun trigger watches them, so changing e.g. rank.top_n reruns ranking, not training.
# `lyra run` rewrites them on the same condition (lyra.campaign.config.write_stage_config).

from lyra.campaign.config import CAMPAIGN_STAGES, STAGE_SECTIONS, write_stage_config


rule stage_config:
    output:
        res(layout.STAGE_CONFIG),
    params:
        cfg=lambda wildcards: stage_config(config, wildcards.stage),
    log:
        res(layout.log("config/{stage}")),
    wildcard_constraints:
        stage="|".join(STAGE_SECTIONS),
    localrule: True
    run:
        write_stage_config(config, wildcards.stage, output[0])

# One job per ensemble member; a killed job resumes from models/.seed<k>.resume.pt when rerun.

from lyra.campaign.settings import ridge_baseline


rule train:
    input:
        cfg=stage_cfg("train"),
        dataset=res(layout.DATASET),
        best=res(layout.TUNE_BEST),
        files=STAGE_INPUTS["train"],  # the prior's alignment
    output:
        model=res(layout.MODEL),
    log:
        res(layout.log("train/seed{seed}")),
    benchmark:
        res(layout.benchmark("train/seed{seed}"))
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra train --config {input.cfg:q} --dataset {input.dataset:q} --best {input.best:q}"
        " --member {wildcards.seed} --out {output.model:q} > {log:q} 2>&1"


# The one-hot ridge baseline, fitted by the evaluate job on the same training rows, for a regression on
# one target only; the score jobs score the library with it too.
RIDGE = [res(layout.RIDGE)] if ridge_baseline(config) else []


rule evaluate:
    input:
        cfg=stage_cfg("train"),
        dataset=res(layout.DATASET),
        models=expand(res(layout.MODEL), seed=SEEDS),
    output:
        metrics=res(layout.METRICS),
        ridge=RIDGE,
    log:
        res(layout.log("evaluate")),
    benchmark:
        res(layout.benchmark("evaluate"))
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra evaluate --config {input.cfg:q} --dataset {input.dataset:q} --out {output.metrics:q}"
        + (" --ridge {output.ridge:q}" if RIDGE else "")
        + " {input.models:q} > {log:q} 2>&1"

# One job per ensemble member; a killed job resumes from models/.seed<k>.resume.pt when rerun.


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


rule evaluate:
    input:
        cfg=stage_cfg("train"),
        dataset=res(layout.DATASET),
        models=expand(res(layout.MODEL), seed=SEEDS),
    output:
        metrics=res(layout.METRICS),
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
        " {input.models:q} > {log:q} 2>&1"

# One job per ensemble member; a killed job resumes from models/.seed<k>.resume.pt when rerun.


rule train:
    input:
        cfg=stage_cfg("train"),
        dataset=res("data/dataset.parquet"),
        best=res("tune/best.json"),
        files=STAGE_INPUTS["train"],  # the prior's alignment
    output:
        model=res("models/seed{seed}.pt"),
    log:
        res("logs/train/seed{seed}.log"),
    benchmark:
        res("benchmarks/train/seed{seed}.tsv")
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
        dataset=res("data/dataset.parquet"),
        models=expand(res("models/seed{seed}.pt"), seed=SEEDS),
    output:
        metrics=res("models/metrics.json"),
    log:
        res("logs/evaluate.log"),
    benchmark:
        res("benchmarks/evaluate.tsv")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra evaluate --config {input.cfg:q} --dataset {input.dataset:q} --out {output.metrics:q}"
        " {input.models:q} > {log:q} 2>&1"

# N workers share one Optuna study in a journal file (safe on a shared filesystem); a collect step
# fails trials left RUNNING by killed jobs and picks the best. With tune.enabled false, best.json
# holds the config's fixed parameters so that training always reads the same file.

JOURNAL = res(layout.TUNE_JOURNAL)

if config["tune"]["enabled"]:

    rule tune_worker:
        input:
            cfg=stage_cfg("tune"),
            dataset=res(layout.DATASET),
            files=STAGE_INPUTS["tune"],  # the prior's alignment
        output:
            done=temp(res(layout.TUNE_WORKER_DONE)),  # read by tune_collect only
        params:
            journal=JOURNAL,
        log:
            res(layout.log("tune/worker{worker}")),
        benchmark:
            res(layout.benchmark("tune/worker{worker}"))
        threads: 2
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=240,
        conda:
            "../envs/lyra.yaml"
        shell:
            "lyra tune-worker --config {input.cfg:q} --dataset {input.dataset:q} --journal {params.journal:q}"
            " --worker {wildcards.worker} --done {output.done:q} > {log:q} 2>&1"


rule tune_collect:
    input:
        cfg=stage_cfg("tune"),
        dataset=res(layout.DATASET),
        files=STAGE_INPUTS["tune"],  # the study's name hashes the alignment
        workers=expand(res(layout.TUNE_WORKER_DONE), worker=WORKERS) if config["tune"]["enabled"] else [],
    output:
        best=res(layout.TUNE_BEST),
        trials=res(layout.TUNE_TRIALS),
    params:
        journal=JOURNAL,
    log:
        res(layout.log("tune/collect")),
    benchmark:
        res(layout.benchmark("tune/collect"))
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra tune-collect --config {input.cfg:q} --dataset {input.dataset:q} --journal {params.journal:q}"
        " --best {output.best:q} --trials {output.trials:q} > {log:q} 2>&1"

rule preprocess:
    input:
        cfg=stage_cfg("preprocess"),
        # the measurements, the wild-type FASTA, split index files and the rounds' measurement files
        files=STAGE_INPUTS["preprocess"],
    output:
        dataset=res(layout.DATASET),
        report=res(layout.DATA_REPORT),
    log:
        res(layout.log("preprocess")),
    benchmark:
        res(layout.benchmark("preprocess"))
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra preprocess --config {input.cfg:q} --out {output.dataset:q} --report {output.report:q} > {log:q} 2>&1"

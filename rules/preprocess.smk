rule preprocess:
    input:
        cfg=stage_cfg("preprocess"),
        # the measurements, the wild-type FASTA, split index files and the rounds' measurement files
        files=STAGE_INPUTS["preprocess"],
    output:
        dataset=res("data/dataset.parquet"),
        report=res("data/report.md"),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.dataset),
    log:
        res("logs/preprocess.log"),
    benchmark:
        res("benchmarks/preprocess.tsv")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra preprocess --config {input.cfg:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"

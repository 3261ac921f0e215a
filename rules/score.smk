# The design library is scored in shards (GPU jobs on a cluster), gathered, then ranked.


rule score_shard:
    input:
        cfg=stage_cfg("score"),
        dataset=res(layout.DATASET),
        models=expand(res(layout.MODEL), seed=SEEDS),
        ridge=RIDGE,  # the one-hot ridge baseline (rules/train.smk), scored beside the ensemble
        files=STAGE_INPUTS["score"],  # the library file or spec
    output:
        shard=temp(res(layout.SHARD)),  # gathered into scores.parquet, then removed
    log:
        res(layout.log("score/shard{shard}")),
    benchmark:
        res(layout.benchmark("score/shard{shard}"))
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra score --config {input.cfg:q} --dataset {input.dataset:q} --shard {wildcards.shard}"
        " --out {output.shard:q}"
        + (" --ridge {input.ridge:q}" if RIDGE else "")
        + " {input.models:q} > {log:q} 2>&1"


rule gather_scores:
    input:
        expand(res(layout.SHARD), shard=SHARDS),
    output:
        res(layout.SCORES),
    log:
        res(layout.log("score/gather")),
    benchmark:
        res(layout.benchmark("score/gather"))
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra gather --out {output:q} {input:q} > {log:q} 2>&1"


# The picks' genes only for a campaign that gives the wild type's gene (data.wild_type_dna).
RANK_DNA = [res(layout.RANKING_DNA)] if config["data"].get("wild_type_dna") else []


rule rank:
    input:
        cfg=stage_cfg("rank"),
        scores=res(layout.SCORES),
        dataset=res(layout.DATASET),  # the measured value of picks measured already
        metrics=res(layout.METRICS),  # rank.model: auto compares Lyra and ridge on it
        files=STAGE_INPUTS["rank"],  # the wild type's gene
    output:
        csv=res(layout.RANKING),
        fasta=res(layout.RANKING_FASTA),
        plate=res(layout.PLATE),
        dna=RANK_DNA,
    log:
        res(layout.log("rank")),
    benchmark:
        res(layout.benchmark("rank"))
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra rank --config {input.cfg:q} --scores {input.scores:q} --dataset {input.dataset:q}"
        " --metrics {input.metrics:q} --csv {output.csv:q} --fasta {output.fasta:q} --plate {output.plate:q}"
        + (" --dna {output.dna:q}" if RANK_DNA else "")
        + " > {log:q} 2>&1"

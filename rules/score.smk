# The design library is scored in shards (GPU jobs on a cluster), gathered, then ranked.


rule score_shard:
    input:
        cfg=stage_cfg("score"),
        dataset=res("data/dataset.parquet"),
        models=expand(res("models/seed{seed}.pt"), seed=SEEDS),
        files=STAGE_INPUTS["score"],  # the library file or spec
    output:
        shard=res("library/shard{shard}.parquet"),
    log:
        res("logs/score/shard{shard}.log"),
    benchmark:
        res("benchmarks/score/shard{shard}.tsv")
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra score --config {input.cfg:q} --dataset {input.dataset:q} --shard {wildcards.shard}"
        " --out {output.shard:q} {input.models:q} > {log:q} 2>&1"


rule gather_scores:
    input:
        expand(res("library/shard{shard}.parquet"), shard=SHARDS),
    output:
        res("library/scores.parquet"),
    log:
        res("logs/score/gather.log"),
    benchmark:
        res("benchmarks/score/gather.tsv")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra gather --out {output:q} {input:q} > {log:q} 2>&1"


# The picks' genes only for a campaign that gives the wild type's gene (data.wild_type_dna).
RANK_DNA = [res("ranking_dna.fasta")] if config["data"].get("wild_type_dna") else []


rule rank:
    input:
        cfg=stage_cfg("rank"),
        scores=res("library/scores.parquet"),
        dataset=res("data/dataset.parquet"),  # the measured value of picks measured already
        files=STAGE_INPUTS["rank"],  # the wild type's gene
    output:
        csv=res("ranking.csv"),
        fasta=res("ranking.fasta"),
        plate=res("plate.csv"),
        dna=RANK_DNA,
    log:
        res("logs/rank.log"),
    benchmark:
        res("benchmarks/rank.tsv")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra rank --config {input.cfg:q} --scores {input.scores:q} --dataset {input.dataset:q}"
        " --csv {output.csv:q} --fasta {output.fasta:q} --plate {output.plate:q}"
        + (" --dna {output.dna:q}" if RANK_DNA else "")
        + " > {log:q} 2>&1"

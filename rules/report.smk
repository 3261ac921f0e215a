# The campaign report: figures as PNG (also collected by `snakemake --report report.html`), the top-N
# table, the predicted epistasis table, and the provenance manifest. The captions are in
# docs/report/*.rst (paths below are relative to this file); docs/report.md says how to read each figure.
#
# A figure whose inputs do not exist (tuning disabled, no wild type, a classification task) is still
# written, as a panel saying why, so the outputs below never depend on the data.

REPORT_STAGES = ["preprocess", "tune", "train", "score", "rank", "report"]


report: "../docs/report/workflow.rst"


rule report:
    input:
        # the per-stage configs together are the resolved config the campaign ran with
        cfgs=[stage_cfg(stage) for stage in REPORT_STAGES],
        dataset=res("data/dataset.parquet"),
        metrics=res("models/metrics.json"),
        models=expand(res("models/seed{seed}.pt"), seed=SEEDS),
        best=res("tune/best.json"),
        trials=res("tune/trials.tsv"),  # header only when tuning is disabled
        scores=res("library/scores.parquet"),
        ranking=res("ranking.csv"),
        plate=res("plate.csv"),
        # hashed into the manifest: rerun it when the genes change
        dna=[res("ranking_dna.fasta")] if config.get("data", {}).get("wild_type_dna") else [],
        # the jobs' wall times, for the manifest
        benchmarks=[
            res("benchmarks/preprocess.tsv"),
            *(expand(res("benchmarks/tune/worker{worker}.tsv"), worker=WORKERS) if config["tune"]["enabled"] else []),
            res("benchmarks/tune/collect.tsv"),
            expand(res("benchmarks/train/seed{seed}.tsv"), seed=SEEDS),
            res("benchmarks/evaluate.tsv"),
            expand(res("benchmarks/score/shard{shard}.tsv"), shard=SHARDS),
            res("benchmarks/score/gather.tsv"),
            res("benchmarks/rank.tsv"),
        ],
        # the user's config file(s), hashed into the manifest
        source_configs=CONFIG_FILES,
    output:
        learning_curves=report(
            res("report/learning_curves.png"),
            caption="../docs/report/learning_curves.rst",
            category="1. Models",
            labels={"figure": "learning curves"},
        ),
        test_predictions=report(
            res("report/test_predictions.png"),
            caption="../docs/report/test_predictions.rst",
            category="1. Models",
            labels={"figure": "predicted vs measured (test)"},
        ),
        tune_history=report(
            res("report/tune_history.png"),
            caption="../docs/report/tune_history.rst",
            category="2. Hyper-parameter search",
            labels={"figure": "optimisation history"},
        ),
        tune_importances=report(
            res("report/tune_importances.png"),
            caption="../docs/report/tune_importances.rst",
            category="2. Hyper-parameter search",
            labels={"figure": "parameter importances"},
        ),
        library_scores=report(
            res("report/library_scores.png"),
            caption="../docs/report/library_scores.rst",
            category="3. Library and picks",
            labels={"figure": "score distribution"},
        ),
        top_n=report(
            res("report/top_n.png"),
            caption="../docs/report/top_n.rst",
            category="3. Library and picks",
            labels={"figure": "top-N table"},
        ),
        plate=report(
            res("report/plate.png"),
            caption="../docs/report/plate.rst",
            category="3. Library and picks",
            labels={"figure": "plate map"},
        ),
        epistasis=report(
            res("report/epistasis.png"),
            caption="../docs/report/epistasis.rst",
            category="4. Predicted epistasis",
            labels={"figure": "epistasis map"},
        ),
        top_n_md=res("report/top_n.md"),
        epistasis_tsv=res("report/epistasis.tsv"),
        manifest=res("manifest.json"),
    params:
        campaign_dir=lambda wildcards, output: os.path.dirname(output.manifest),
        out_dir=lambda wildcards, output: os.path.dirname(output.epistasis_tsv),
    log:
        res("logs/report.log"),
    benchmark:
        res("benchmarks/report.tsv")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra report --campaign-dir {params.campaign_dir:q} --out-dir {params.out_dir:q}"
        " --manifest {output.manifest:q} --config {input.cfgs:q} --source-config {input.source_configs:q}"
        " > {log:q} 2>&1"

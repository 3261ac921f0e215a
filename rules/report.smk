# The campaign report: figures as PNG (also collected by `snakemake --report report.html`), the top-N
# table, the predicted epistasis table, and the provenance manifest. The captions are in
# docs/report/*.rst (paths below are relative to this file); docs/report.md says how to read each figure.
#
# A figure whose inputs do not exist (tuning disabled, no wild type, a classification task) is still
# written, as a panel saying why, so the outputs below never depend on the data.

# Where each of the report's figures (lyra.campaign.layout.FIGURES) sits in Snakemake's HTML report.
FIGURE_SECTIONS = {
    "learning_curves": ("1. Models", "learning curves"),
    "test_predictions": ("1. Models", "predicted vs measured (test)"),
    "tune_history": ("2. Hyper-parameter search", "optimisation history"),
    "tune_importances": ("2. Hyper-parameter search", "parameter importances"),
    "library_scores": ("3. Library and picks", "score distribution"),
    "top_n": ("3. Library and picks", "top-N table"),
    "plate": ("3. Library and picks", "plate map"),
    "epistasis": ("4. Predicted epistasis", "epistasis map"),
}
if set(FIGURE_SECTIONS) != set(layout.FIGURES):
    sys.exit("rules/report.smk: FIGURE_SECTIONS must place exactly the figures of lyra.campaign.layout.FIGURES")

report: "../docs/report/workflow.rst"


rule report:
    input:
        # the per-stage configs together are the resolved config the campaign ran with
        cfgs=[stage_cfg(stage) for stage in CAMPAIGN_STAGES],
        dataset=res(layout.DATASET),
        metrics=res(layout.METRICS),
        models=expand(res(layout.MODEL), seed=SEEDS),
        best=res(layout.TUNE_BEST),
        trials=res(layout.TUNE_TRIALS),  # header only when tuning is disabled
        scores=res(layout.SCORES),
        ranking=res(layout.RANKING),
        plate=res(layout.PLATE),
        # hashed into the manifest: rerun it when the genes change
        dna=[res(layout.RANKING_DNA)] if config.get("data", {}).get("wild_type_dna") else [],
        # the jobs' wall times, for the manifest
        benchmarks=[
            res(layout.benchmark("preprocess")),
            *(expand(res(layout.benchmark("tune/worker{worker}")), worker=WORKERS) if config["tune"]["enabled"] else []),
            res(layout.benchmark("tune/collect")),
            expand(res(layout.benchmark("train/seed{seed}")), seed=SEEDS),
            res(layout.benchmark("evaluate")),
            expand(res(layout.benchmark("score/shard{shard}")), shard=SHARDS),
            res(layout.benchmark("score/gather")),
            res(layout.benchmark("rank")),
        ],
        # the user's config file(s), hashed into the manifest
        source_configs=CONFIG_FILES,
    output:
        **{
            name: report(
                res(path),
                caption=f"../docs/report/{name}.rst",
                category=FIGURE_SECTIONS[name][0],
                labels={"figure": FIGURE_SECTIONS[name][1]},
            )
            for name, path in layout.FIGURES.items()
        },
        top_n_md=res(layout.TABLES["top_n"]),
        epistasis_tsv=res(layout.TABLES["epistasis"]),
        manifest=res(layout.MANIFEST),
    params:
        campaign_dir=lambda wildcards, output: os.path.dirname(output.manifest),
        out_dir=lambda wildcards, output: os.path.dirname(output.epistasis_tsv),
    log:
        res(layout.log("report")),
    benchmark:
        res(layout.benchmark("report"))
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

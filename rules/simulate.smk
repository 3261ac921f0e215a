# Retrospective campaigns on a complete landscape, the campaign's own data: `snakemake simulate`.
# One job per (strategy, run), so a cluster spreads them; each keeps its finished rounds under
# simulation/work/ and a rerun of a killed job resumes there. lyra.campaign.simulate has the protocol.

from lyra.campaign.simulate import run_numbers, strategies, strategy_pattern

SIM_STRATEGIES = strategies(config)
SIM_RUN_NUMBERS = run_numbers(config)


rule simulate:
    input:
        res(layout.SIM_SUMMARY),
        res(layout.SIM_RUNS),


rule simulate_library:
    input:
        dataset=res(layout.DATASET),
    output:
        res(layout.SIM_LIBRARY),
    log:
        res(layout.log("simulate/library")),
    benchmark:
        res(layout.benchmark("simulate/library"))
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra simulate-library --dataset {input.dataset:q} --out {output:q} > {log:q} 2>&1"


SIMULATE_RUN = (
    "lyra simulate-run --config {input.cfg:q} --dataset {input.dataset:q} --library {input.library:q}"
    " --strategy {wildcards.strategy:q} --run {wildcards.run} --out {output.table:q} --picks {output.picks:q}"
    " --work {params.work:q} > {log:q} 2>&1"
)


# The Lyra strategies train and score ensembles: a GPU each where the cluster has them. Two rules with
# the same files, told apart by the strategy's model, so a profile can place each on its partition.
rule simulate_lyra:
    input:
        cfg=stage_cfg("simulate"),
        dataset=res(layout.DATASET),
        library=res(layout.SIM_LIBRARY),
        files=STAGE_INPUTS["simulate"],  # the prior's alignment, the first plate's file
    output:
        table=res(layout.SIM_RUN),
        picks=res(layout.SIM_PICKS),
    params:
        work=lambda wildcards: res(layout.SIM_WORK.format(strategy=wildcards.strategy, run=wildcards.run)),
    wildcard_constraints:
        strategy=strategy_pattern(config, "lyra"),
    log:
        res(layout.log("simulate/{strategy}/run{run}")),
    benchmark:
        res(layout.benchmark("simulate/{strategy}/run{run}"))
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/lyra.yaml"
    shell:
        SIMULATE_RUN


rule simulate_baseline:
    input:
        cfg=stage_cfg("simulate"),
        dataset=res(layout.DATASET),
        library=res(layout.SIM_LIBRARY),
        files=STAGE_INPUTS["simulate"],
    output:
        table=res(layout.SIM_RUN),
        picks=res(layout.SIM_PICKS),
    params:
        work=lambda wildcards: res(layout.SIM_WORK.format(strategy=wildcards.strategy, run=wildcards.run)),
    wildcard_constraints:
        strategy=strategy_pattern(config, "random", "ridge"),
    log:
        res(layout.log("simulate/{strategy}/run{run}")),
    benchmark:
        res(layout.benchmark("simulate/{strategy}/run{run}"))
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/lyra.yaml"
    shell:
        SIMULATE_RUN


rule simulate_collect:
    input:
        expand(res(layout.SIM_RUN), strategy=SIM_STRATEGIES, run=SIM_RUN_NUMBERS),
    output:
        runs=res(layout.SIM_RUNS),
        summary=res(layout.SIM_SUMMARY),
        figure=report(
            res(layout.SIM_FIGURE),
            caption="../docs/report/simulation.rst",
            category="5. Retrospective campaigns",
            labels={"figure": "best found against screened"},
        ),
    log:
        res(layout.log("simulate/collect")),
    benchmark:
        res(layout.benchmark("simulate/collect"))
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/lyra.yaml"
    shell:
        "lyra simulate-collect --runs {output.runs:q} --summary {output.summary:q} --figure {output.figure:q}"
        " {input:q} > {log:q} 2>&1"

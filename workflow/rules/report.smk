# Tables and figures for paper_tables/ (committed) and the Snakemake report.


rule sample_grid:
    input:
        "results/{experiment}/samples",
    output:
        report(
            "paper_tables/figures/{experiment}_samples.png",
            caption="../report/samples.rst",
            category="Samples",
        ),
    log:
        "logs/sample_grid/{experiment}.log",
    conda:
        "../envs/uvit.yaml"
    shell:
        "uvit figures --samples {input} --out {output} 2> {log}"


rule tables:
    input:
        target_metrics,
    output:
        markdown=report("paper_tables/results.md", caption="../report/results.rst", category="Tables"),
        latex="paper_tables/results.tex",
    log:
        "logs/tables.log",
    conda:
        "../envs/uvit.yaml"
    shell:
        "uvit tables --metrics {input} --out-dir paper_tables 2> {log}"

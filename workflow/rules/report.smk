# Tables and figures for paper_tables/ (committed) and the Snakemake report (`snakemake --report report.html`).


rule sample_grid:
    input:
        samples=rules.sample.output[0],
        data=prepared,
    output:
        png=report(
            layout.figure(layout.sample_grid_name("{experiment}"), "png"),
            caption="../report/samples.rst",
            category="Samples",
        ),
        pdf=layout.figure(layout.sample_grid_name("{experiment}"), "pdf"),
    log:
        "logs/sample_grid/{experiment}.log",
    conda:
        "../envs/uvit.yaml"
    params:
        lineage=lineage("sample_grid"),
        settings=settings("sample_grid"),
        stem=layout.figure_stem(layout.sample_grid_name("{experiment}")),
    shell:
        "uvit sample-grid --experiment {wildcards.experiment} --data {input.data} --samples {input.samples}"
        " --out {params.stem} 2> {log}"


rule figures:
    input:
        metrics=target_metrics,
        loss=target_loss_curves,
    output:
        **figure_outputs(),
    log:
        "logs/figures.log",
    conda:
        "../envs/uvit.yaml"
    params:
        lineage=lineage("figures"),
        settings=settings("figures"),
        out_dir=output_folder,
    shell:
        "uvit figures --metrics {input.metrics} --loss {input.loss} --out-dir {params.out_dir} 2> {log}"


rule tables:
    input:
        table_metrics,
    output:
        **table_outputs(),
    log:
        "logs/tables.log",
    conda:
        "../envs/uvit.yaml"
    params:
        lineage=lineage("tables"),
        settings=settings("tables"),
        out_dir=output_folder,
    shell:
        "uvit tables --metrics {input} --out-dir {params.out_dir} 2> {log}"

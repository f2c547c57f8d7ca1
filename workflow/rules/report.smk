# Tables and figures for paper_tables/ (committed) and the Snakemake report (`snakemake --report report.html`).


rule sample_grid:
    input:
        samples="results/{experiment}/samples",
        data=prepared,
    output:
        png=report(
            "paper_tables/figures/{experiment}_samples.png",
            caption="../report/samples.rst",
            category="Samples",
        ),
        pdf="paper_tables/figures/{experiment}_samples.pdf",
    log:
        "logs/sample_grid/{experiment}.log",
    conda:
        "../envs/uvit.yaml"
    params:
        lineage=lineage("sample_grid"),
        settings=settings("sample_grid"),
        stem="paper_tables/figures/{experiment}_samples",
    shell:
        "uvit sample-grid --experiment {wildcards.experiment} --data {input.data} --samples {input.samples}"
        " --out {params.stem} 2> {log}"


rule figures:
    input:
        metrics=target_metrics,
        loss=target_loss_curves,
    output:
        loss=report(
            "paper_tables/figures/loss_curves.png",
            caption="../report/loss_curves.rst",
            category="Training",
        ),
        loss_pdf="paper_tables/figures/loss_curves.pdf",
        training=report(
            "paper_tables/figures/fid_over_training.png",
            caption="../report/fid_over_training.rst",
            category="FID curves",
        ),
        training_pdf="paper_tables/figures/fid_over_training.pdf",
        sampler=report(
            "paper_tables/figures/fid_over_sampler_steps.png",
            caption="../report/fid_over_sampler_steps.rst",
            category="FID curves",
        ),
        sampler_pdf="paper_tables/figures/fid_over_sampler_steps.pdf",
        ablation=[
            report(
                f"paper_tables/figures/{name}.png",
                caption="../report/ablation.rst",
                category="Ablations",
            )
            for name in ABLATION_FIGURES
        ],
        ablation_pdf=[f"paper_tables/figures/{name}.pdf" for name in ABLATION_FIGURES],
        # the numbers behind the two FID figures, a CSV per experiment (dvc.yaml's top-level plots)
        training_data=directory("paper_tables/figures/fid_over_training"),
        sampler_data=directory("paper_tables/figures/fid_over_sampler_steps"),
    log:
        "logs/figures.log",
    conda:
        "../envs/uvit.yaml"
    params:
        lineage=lineage("figures"),
        settings=settings("figures"),
    shell:
        "uvit figures --metrics {input.metrics} --loss {input.loss} --out-dir paper_tables/figures 2> {log}"


rule tables:
    input:
        table_metrics,
    output:
        results=report("paper_tables/results.md", caption="../report/results.rst", category="Tables"),
        results_tex="paper_tables/results.tex",
        training=report(
            "paper_tables/training_steps.md",
            caption="../report/training_steps.rst",
            category="Tables",
        ),
        training_tex="paper_tables/training_steps.tex",
        sampler=report(
            "paper_tables/sampler_steps.md",
            caption="../report/sampler_steps.rst",
            category="Tables",
        ),
        sampler_tex="paper_tables/sampler_steps.tex",
        ablations=report(
            "paper_tables/ablations.md",
            caption="../report/ablations.rst",
            category="Ablations",
        ),
        ablations_tex="paper_tables/ablations.tex",
        other=report(
            "paper_tables/other_metrics.md",
            caption="../report/other_metrics.rst",
            category="Tables",
        ),
        other_tex="paper_tables/other_metrics.tex",
        guidance=report(
            "paper_tables/guidance.md",
            caption="../report/guidance.rst",
            category="Tables",
        ),
        guidance_tex="paper_tables/guidance.tex",
        autoencoders=report(
            "paper_tables/autoencoders.md",
            caption="../report/autoencoders.rst",
            category="Tables",
        ),
        autoencoders_tex="paper_tables/autoencoders.tex",
    log:
        "logs/tables.log",
    conda:
        "../envs/uvit.yaml"
    params:
        lineage=lineage("tables"),
        settings=settings("tables"),
    shell:
        "uvit tables --metrics {input} --out-dir paper_tables 2> {log}"

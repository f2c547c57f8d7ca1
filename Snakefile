# The DAG of the U-ViT reproduction pipeline. Settings live in params.yaml (validated before any work);
# rules live in workflow/rules/*.smk; every rule calls the `uvit` command line.
#   snakemake --cores all                      # the experiments listed under `targets` in params.yaml
#   snakemake --cores all metrics/<experiment>/fid.json
# dvc.yaml runs the same jobs (python workflow/scripts/export_dvc.py; tests compare it with `snakemake -n -p`)


include: "workflow/rules/common.smk"


wildcard_constraints:
    experiment="|".join(EXPERIMENTS),
    dataset="|".join(DATASETS),
    autoencoder="|".join(AUTOENCODERS),
    classifier="|".join(CLASSIFIERS),
    split="train|test|val",
    n=r"\d+",
    step=r"\d+",
    sampler_steps=r"\d+",
    scale=r"\d[0-9.e+-]*",  # uvit.config.guidance_label: 0, 0.4, 1.5


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Small jobs run where Snakemake runs (on a cluster: the login node), not as submitted jobs.
localrules:
    all,
    tables,
    figures,
    sample_grid,
    import_autoencoder,
    import_reference,
    import_weights,


rule all:
    default_target: True
    input:
        all_targets(),


onsuccess:
    sync_dvc_lock()

# Data preparation and latent encoding.


rule prepare_data:
    output:
        directory("data/prepared/{dataset}"),
    log:
        "logs/prepare_data/{dataset}.log",
    benchmark:
        "logs/prepare_data/{dataset}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    params:
        settings=dataset_json,
    shell:
        "uvit prepare-data --dataset {wildcards.dataset} --out {output} 2> {log}"


rule train_autoencoder:
    input:
        data=autoencoder_dataset,
    output:
        model=directory("results/autoencoders/{autoencoder}"),
        metrics="metrics/autoencoders/{autoencoder}.json",
    log:
        "logs/train_autoencoder/{autoencoder}.log",
    benchmark:
        "logs/train_autoencoder/{autoencoder}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: workflow.cores
    params:
        settings=autoencoder_json,
    shell:
        "uvit --threads {threads} train-autoencoder --autoencoder {wildcards.autoencoder} --data {input.data}"
        " --out {output.model} --metrics {output.metrics} 2> {log}"


rule encode_latents:
    input:
        autoencoder="results/autoencoders/{autoencoder}",
        data=autoencoder_dataset,
    output:
        directory("data/latents/{autoencoder}"),
    log:
        "logs/encode_latents/{autoencoder}.log",
    benchmark:
        "logs/encode_latents/{autoencoder}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: workflow.cores
    shell:
        "uvit --threads {threads} encode-latents --autoencoder-dir {input.autoencoder} --data {input.data}"
        " --out {output} 2> {log}"

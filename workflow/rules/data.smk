# Data preparation and latent encoding.


rule prepare_data:
    output:
        directory(layout.prepared("{dataset}")),
    log:
        "logs/prepare_data/{dataset}.log",
    benchmark:
        "logs/prepare_data/{dataset}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    params:
        lineage=lineage("prepare_data"),
        settings=settings("prepare_data"),
    shell:
        "uvit prepare-data --dataset {wildcards.dataset} --out {output} 2> {log}"


rule encode_text:
    input:
        data=rules.prepare_data.output[0],
    output:
        directory(layout.text("{dataset}", "{split}")),
    log:
        "logs/encode_text/{dataset}-{split}.log",
    benchmark:
        "logs/encode_text/{dataset}-{split}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: DEFAULT_CPUS
    params:
        lineage=lineage("encode_text"),
        settings=settings("encode_text"),
        encoder=text_encoder_args,
        split=layout.prepared_split("{dataset}", "{split}"),
    shell:
        "uvit --threads {threads} encode-text --data {params.split} {params.encoder}"
        " --out {output} 2> {log}"


rule import_autoencoder:
    output:
        directory(layout.imported_autoencoder("{autoencoder}")),
    log:
        "logs/import/{autoencoder}.log",
    wildcard_constraints:
        autoencoder="|".join(PRETRAINED_AUTOENCODERS),
    conda:
        "../envs/uvit.yaml"
    params:
        lineage=lineage("import_autoencoder"),
        settings=settings("import_autoencoder"),
        source=pretrained_autoencoder_source,
    shell:
        "uvit import --kind autoencoder --source {params.source} --out {output}"
        " --key autoencoders.{wildcards.autoencoder}.pretrained 2> {log}"


rule import_reference:
    output:
        layout.imported_reference("{ref}"),
    log:
        "logs/import/{ref}.log",
    conda:
        "../envs/uvit.yaml"
    params:
        lineage=lineage("import_reference"),
        settings=settings("import_reference"),
        source=given_reference_source,
        protocol=stats_protocol,
    shell:
        "uvit import --kind reference --source {params.source} --out {output}"
        " --key evaluation.reference_npz --protocol {params.protocol} 2> {log}"


rule import_weights:
    output:
        layout.released_weights("{experiment}"),
    log:
        "logs/import/{experiment}.log",
    conda:
        "../envs/uvit.yaml"
    params:
        lineage=lineage("import_weights"),
        settings=settings("import_weights"),
        source=pretrained_weights_source,
    shell:
        "uvit import --kind weights --source {params.source} --out {output}"
        " --key experiments.{wildcards.experiment}.evaluation.pretrained_weights 2> {log}"


rule train_autoencoder:
    input:
        unpack(autoencoder_reference_input),
        data=autoencoder_dataset,
    output:
        model=directory(layout.trained_autoencoder("{autoencoder}")),
        metrics=layout.autoencoder_metrics("{autoencoder}"),
    log:
        "logs/train_autoencoder/{autoencoder}.log",
    benchmark:
        "logs/train_autoencoder/{autoencoder}.benchmark.tsv"
    wildcard_constraints:
        autoencoder="|".join(TRAINED_AUTOENCODERS),
    conda:
        "../envs/uvit.yaml"
    threads: DEFAULT_CPUS
    params:
        lineage=lineage("train_autoencoder"),
        settings=settings("train_autoencoder"),
        reference=autoencoder_reference_flag,
    shell:
        "uvit --threads {threads} train-autoencoder --autoencoder {wildcards.autoencoder} --data {input.data}"
        " {params.reference} --out {output.model} --metrics {output.metrics} 2> {log}"


rule encode_latents:
    input:
        autoencoder=encoder_input,
        data=autoencoder_dataset,
    output:
        directory(layout.latents("{autoencoder}")),
    log:
        "logs/encode_latents/{autoencoder}.log",
    benchmark:
        "logs/encode_latents/{autoencoder}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: DEFAULT_CPUS
    params:
        lineage=lineage("encode_latents"),
        settings=settings("encode_latents"),
        flags=encode_latents_flags,
    shell:
        "uvit --threads {threads} encode-latents --autoencoder-dir {input.autoencoder} --data {input.data}"
        " {params.flags} --out {output} 2> {log}"

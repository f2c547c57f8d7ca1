# FID: reference statistics (once per dataset and count), the small-sample floor, and each experiment's FID.


rule reference_stats:
    input:
        data="data/prepared/{dataset}",
    output:
        "results/fid_refs/{dataset}-{split}{n}.npz",
    log:
        "logs/reference_stats/{dataset}-{split}{n}.log",
    benchmark:
        "logs/reference_stats/{dataset}-{split}{n}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: DEFAULT_CPUS
    params:
        lineage=lineage("reference_stats"),
        protocol=stats_protocol,
        settings=settings("reference_stats"),
    shell:
        "uvit --threads {threads} reference-stats --data {input.data} --split {wildcards.split}"
        " --count {wildcards.n} --protocol {params.protocol} --out {output} 2> {log}"


rule fid_floor:
    input:
        data="data/prepared/{dataset}",
        reference=floor_reference,
    output:
        "metrics/fid_floors/{dataset}-{ref}-{split}{n}.json",
    log:
        "logs/fid_floor/{dataset}-{ref}-{split}{n}.log",
    benchmark:
        "logs/fid_floor/{dataset}-{ref}-{split}{n}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: DEFAULT_CPUS
    params:
        lineage=lineage("fid_floor"),
        settings=settings("fid_floor"),
    shell:
        "uvit --threads {threads} fid-floor --data {input.data} --split {wildcards.split} --count {wildcards.n}"
        " --reference {input.reference} --out {output} 2> {log}"


rule fid:
    input:
        samples="results/{experiment}/samples",
        model="results/{experiment}/nnet_ema.pth",
        data=prepared,
        reference=reference_stats,
        floor=fid_floor,
    output:
        metrics="metrics/{experiment}/fid.json",
        scores="metrics/{experiment}/fid.scores.json",
    log:
        "logs/fid/{experiment}.log",
    benchmark:
        "logs/fid/{experiment}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: cpus_per_task
    resources:
        gpu=fid_gpus,
        gpu_model=gpu_model,
        mem_mb=mem_mb,
        runtime=runtime_minutes,
        cpus_per_task=cpus_per_task,
    params:
        lineage=lineage("fid"),
        settings=settings("fid"),
        launcher=fid_launcher,
    shell:
        "{params.launcher} --threads {threads} fid --experiment {wildcards.experiment} --samples {input.samples}"
        " --reference {input.reference} --floor {input.floor} --data {input.data} --checkpoint {input.model}"
        " --metrics {output.metrics} 2> {log}"


rule fid_curve_point:
    input:
        samples="results/{experiment}/curve/step{step}-nfe{nfe}",
        model=curve_model_input,
        data=prepared,
        reference=reference_stats,
        floor=fid_floor,
    output:
        metrics="metrics/{experiment}/curve/step{step}-nfe{nfe}.json",
        scores="metrics/{experiment}/curve/step{step}-nfe{nfe}.scores.json",
    log:
        "logs/fid/{experiment}-step{step}-nfe{nfe}.log",
    benchmark:
        "logs/fid/{experiment}-step{step}-nfe{nfe}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: cpus_per_task
    resources:
        gpu=fid_gpus,
        gpu_model=gpu_model,
        mem_mb=mem_mb,
        runtime=runtime_minutes,
        cpus_per_task=cpus_per_task,
    params:
        lineage=lineage("fid_curve_point"),
        settings=settings("fid_curve_point"),
        launcher=fid_launcher,
        model=curve_model,
        point="--training-step {step} --sampler-steps {nfe}",
    shell:
        "{params.launcher} --threads {threads} fid --experiment {wildcards.experiment} --samples {input.samples}"
        " {params.point} --reference {input.reference}"
        " --floor {input.floor} --data {input.data} --checkpoint {params.model} --weights-output {input.model}"
        " --metrics {output.metrics} 2> {log}"


use rule fid_curve_point as fid_guidance_point with:
    input:
        samples="results/{experiment}/guidance/scale{scale}",
        model=curve_model_input,
        data=prepared,
        reference=reference_stats,
        floor=fid_floor,
    output:
        metrics="metrics/{experiment}/guidance/scale{scale}.json",
        scores="metrics/{experiment}/guidance/scale{scale}.scores.json",
    log:
        "logs/fid/{experiment}-scale{scale}.log",
    benchmark:
        "logs/fid/{experiment}-scale{scale}.benchmark.tsv"
    params:
        lineage=lineage("fid_guidance_point"),
        settings=settings("fid_guidance_point"),
        point="--guidance-scale {scale}",


rule fid_pretrained:
    input:
        unpack(pretrained_inputs),
        samples="results/{experiment}/pretrained_samples",
        model="data/external/weights/{experiment}.pth",
        reference=reference_stats,
    output:
        metrics="metrics/{experiment}/pretrained_fid.json",
        scores="metrics/{experiment}/pretrained_fid.scores.json",
    log:
        "logs/fid/{experiment}-pretrained.log",
    benchmark:
        "logs/fid/{experiment}-pretrained.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: cpus_per_task
    resources:
        gpu=fid_gpus,
        gpu_model=gpu_model,
        mem_mb=mem_mb,
        runtime=runtime_minutes,
        cpus_per_task=cpus_per_task,
    params:
        lineage=lineage("fid_pretrained"),
        settings=settings("fid_pretrained"),
        launcher=fid_launcher,
        data=optional_flags,
    shell:
        "{params.launcher} --threads {threads} fid --experiment {wildcards.experiment} --samples {input.samples} --pretrained"
        " --reference {input.reference} {params.data} --checkpoint {input.model}"
        " --metrics {output.metrics} 2> {log}"


# Classifier accuracy: a small CNN trained on the real training split labels each sample of a class experiment;
# the share labelled as the class it was drawn for, at each guidance scale, beside the classifier's own accuracy.
rule train_classifier:
    input:
        data=classifier_dataset,
    output:
        weights="results/classifiers/{classifier}.pth",
        metrics="metrics/classifiers/{classifier}.json",
    log:
        "logs/train_classifier/{classifier}.log",
    benchmark:
        "logs/train_classifier/{classifier}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: DEFAULT_CPUS
    params:
        lineage=lineage("train_classifier"),
        settings=settings("train_classifier"),
    shell:
        "uvit --threads {threads} train-classifier --classifier {wildcards.classifier} --data {input.data}"
        " --out {output.weights} --metrics {output.metrics} 2> {log}"


rule accuracy:
    input:
        unpack(classifier_inputs),
        samples="results/{experiment}/samples",
        data=prepared,
    output:
        metrics="metrics/{experiment}/accuracy.json",
        scores="metrics/{experiment}/accuracy.scores.json",
    log:
        "logs/accuracy/{experiment}.log",
    benchmark:
        "logs/accuracy/{experiment}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: DEFAULT_CPUS
    params:
        lineage=lineage("accuracy"),
        settings=settings("accuracy"),
        point="",
    shell:
        "uvit --threads {threads} accuracy --experiment {wildcards.experiment} --samples {input.samples}"
        " {params.point} --classifier {input.classifier} --classifier-metrics {input.classifier_metrics}"
        " --data {input.data} --metrics {output.metrics} 2> {log}"


use rule accuracy as accuracy_guidance_point with:
    input:
        unpack(classifier_inputs),
        samples="results/{experiment}/guidance/scale{scale}",
        data=prepared,
    output:
        metrics="metrics/{experiment}/guidance/scale{scale}.accuracy.json",
        scores="metrics/{experiment}/guidance/scale{scale}.accuracy.scores.json",
    log:
        "logs/accuracy/{experiment}-scale{scale}.log",
    benchmark:
        "logs/accuracy/{experiment}-scale{scale}.benchmark.tsv"
    params:
        lineage=lineage("accuracy_guidance_point"),
        settings=settings("accuracy_guidance_point"),
        point="--guidance-scale {scale}",

# FID: reference statistics (once per dataset and count), the small-sample floor, and each experiment's FID.


rule reference_stats:
    input:
        data=rules.prepare_data.output[0],
    output:
        layout.computed_reference("{dataset}", "{split}{n}"),
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
        data=rules.prepare_data.output[0],
        reference=floor_reference,
    output:
        layout.floor_metrics("{dataset}", "{ref}", "{split}{n}"),
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


# An experiment's FID; a curve point's and a guidance point's are the same rule with their point's flags and the
# pipeline output that holds the weights they sampled (a snapshot inside snapshots/, recorded for provenance).
rule fid:
    input:
        samples=rules.sample.output[0],
        model=curve_model_input,
        data=prepared,
        reference=reference_stats,
        floor=fid_floor,
    output:
        metrics=layout.fid_metrics("{experiment}"),
        scores=layout.scores(layout.fid_metrics("{experiment}")),
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
        model=curve_model,
        point="",
        weights_output="",
    shell:
        "{params.launcher} --threads {threads} fid --experiment {wildcards.experiment} --samples {input.samples}"
        "{params.point} --reference {input.reference} --floor {input.floor} --data {input.data}"
        " --checkpoint {params.model}{params.weights_output} --metrics {output.metrics} 2> {log}"


use rule fid as fid_curve_point with:
    input:
        samples=rules.sample_curve_point.output[0],
        model=curve_model_input,
        data=prepared,
        reference=reference_stats,
        floor=fid_floor,
    output:
        metrics=layout.curve_metrics("{experiment}", "{step}", "{sampler_steps}"),
        scores=layout.scores(layout.curve_metrics("{experiment}", "{step}", "{sampler_steps}")),
    log:
        "logs/fid/{experiment}-step{step}-sampler_steps{sampler_steps}.log",
    benchmark:
        "logs/fid/{experiment}-step{step}-sampler_steps{sampler_steps}.benchmark.tsv"
    params:
        lineage=lineage("fid_curve_point"),
        settings=settings("fid_curve_point"),
        point=" --training-step {step} --sampler-steps {sampler_steps}",
        weights_output=weights_output_flag,


use rule fid as fid_guidance_point with:
    input:
        samples=rules.sample_guidance_point.output[0],
        model=curve_model_input,
        data=prepared,
        reference=reference_stats,
        floor=fid_floor,
    output:
        metrics=layout.guidance_metrics("{experiment}", "{scale}"),
        scores=layout.scores(layout.guidance_metrics("{experiment}", "{scale}")),
    log:
        "logs/fid/{experiment}-scale{scale}.log",
    benchmark:
        "logs/fid/{experiment}-scale{scale}.benchmark.tsv"
    params:
        lineage=lineage("fid_guidance_point"),
        settings=settings("fid_guidance_point"),
        point=" --guidance-scale {scale}",
        weights_output=weights_output_flag,


rule fid_pretrained:
    input:
        unpack(pretrained_inputs),
        samples=rules.sample_pretrained.output[0],
        model=rules.import_weights.output[0],
        reference=reference_stats,
    output:
        metrics=layout.released_fid_metrics("{experiment}"),
        scores=layout.scores(layout.released_fid_metrics("{experiment}")),
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
        weights=layout.classifier_weights("{classifier}"),
        metrics=layout.classifier_metrics("{classifier}"),
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
        samples=rules.sample.output[0],
        data=prepared,
    output:
        metrics=layout.accuracy_metrics("{experiment}"),
        scores=layout.scores(layout.accuracy_metrics("{experiment}")),
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
        samples=rules.sample_guidance_point.output[0],
        data=prepared,
    output:
        metrics=layout.guidance_metrics("{experiment}", "{scale}", "accuracy"),
        scores=layout.scores(layout.guidance_metrics("{experiment}", "{scale}", "accuracy")),
    log:
        "logs/accuracy/{experiment}-scale{scale}.log",
    benchmark:
        "logs/accuracy/{experiment}-scale{scale}.benchmark.tsv"
    params:
        lineage=lineage("accuracy_guidance_point"),
        settings=settings("accuracy_guidance_point"),
        point="--guidance-scale {scale}",

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
    shell:
        "{params.launcher} --threads {threads} fid --experiment {wildcards.experiment} --samples {input.samples}"
        " --training-step {wildcards.step} --sampler-steps {wildcards.nfe} --reference {input.reference}"
        " --floor {input.floor} --data {input.data} --checkpoint {params.model} --weights-output {input.model}"
        " --metrics {output.metrics} 2> {log}"


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

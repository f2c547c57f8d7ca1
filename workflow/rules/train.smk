# U-ViT training (resumable: checkpoints in results/<experiment>/checkpoints survive a re-run) and sampling:
# the final samples, and the samples of each curve point (a kept checkpoint, or another sampler step count).


rule train:
    input:
        unpack(latent_inputs),
        unpack(text_inputs("train")),
        data=prepared,
    output:
        ema=layout.checkpoint("{experiment}"),
        model=layout.raw_weights("{experiment}"),
        snapshots=directory(layout.snapshots("{experiment}")),
        loss=layout.loss_log("{experiment}"),
        metrics=layout.train_metrics("{experiment}"),
        loss_plot=report(layout.loss_csv("{experiment}"), caption="../report/loss.rst", category="Training"),
    log:
        "logs/train/{experiment}.log",
    benchmark:
        "logs/train/{experiment}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: cpus_per_task
    resources:
        gpu=gpu_count,
        gpu_model=gpu_model,
        mem_mb=mem_mb,
        runtime=runtime_minutes,
        cpus_per_task=cpus_per_task,
        est_a100_hours=estimated_gpu_hours,
    params:
        lineage=lineage("train"),
        settings=settings("train"),
        launcher=launcher,
        latents=latent_args,
        run_dir=layout.run_dir("{experiment}"),
    shell:
        "{params.launcher} --threads {threads} train --experiment {wildcards.experiment} --data {input.data} {params.latents}"
        " --out {params.run_dir} --metrics {output.metrics} --loss-plot {output.loss_plot} 2> {log}"


rule sample:
    input:
        unpack(latent_inputs),
        unpack(text_inputs("sample")),
        model=rules.train.output.ema,
        data=prepared,
    output:
        directory(layout.samples("{experiment}")),
    log:
        "logs/sample/{experiment}.log",
    benchmark:
        "logs/sample/{experiment}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: cpus_per_task
    resources:
        gpu=gpu_count,
        gpu_model=gpu_model,
        mem_mb=mem_mb,
        runtime=runtime_minutes,
        cpus_per_task=cpus_per_task,
    params:
        lineage=lineage("sample"),
        settings=settings("sample"),
        launcher=launcher,
        latents=latent_args,
        protocol=sampling_protocol,
    message:
        "{wildcards.experiment}: {params.protocol}"
    shell:
        "{params.launcher} --threads {threads} sample --experiment {wildcards.experiment} --model {input.model}"
        " --data {input.data} {params.latents} --out {output} 2> {log}"


rule sample_curve_point:
    input:
        unpack(latent_inputs),
        unpack(text_inputs("sample")),
        model=curve_model_input,
        data=prepared,
    output:
        directory(layout.curve_samples("{experiment}", "{step}", "{nfe}")),
    log:
        "logs/sample/{experiment}-step{step}-nfe{nfe}.log",
    benchmark:
        "logs/sample/{experiment}-step{step}-nfe{nfe}.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: cpus_per_task
    resources:
        gpu=gpu_count,
        gpu_model=gpu_model,
        mem_mb=mem_mb,
        runtime=runtime_minutes,
        cpus_per_task=cpus_per_task,
    params:
        lineage=lineage("sample_curve_point"),
        settings=settings("sample_curve_point"),
        launcher=launcher,
        latents=latent_args,
        model=curve_model,
        point="--sampler-steps {nfe}",
    shell:
        "{params.launcher} --threads {threads} sample --experiment {wildcards.experiment} --model {params.model}"
        " {params.point} --data {input.data} {params.latents} --out {output} 2> {log}"


# Another guidance scale at the final weights (evaluation.guidance_scales), with the experiment's sampler.
use rule sample_curve_point as sample_guidance_point with:
    input:
        unpack(latent_inputs),
        unpack(text_inputs("sample")),
        model=curve_model_input,
        data=prepared,
    output:
        directory(layout.guidance_samples("{experiment}", "{scale}")),
    log:
        "logs/sample/{experiment}-scale{scale}.log",
    benchmark:
        "logs/sample/{experiment}-scale{scale}.benchmark.tsv"
    params:
        lineage=lineage("sample_guidance_point"),
        settings=settings("sample_guidance_point"),
        point="--guidance-scale {scale}",


rule sample_pretrained:
    input:
        unpack(decoder_inputs),
        unpack(text_inputs("sample")),
        unpack(pretrained_inputs),
        model=rules.import_weights.output[0],
    output:
        directory(layout.released_samples("{experiment}")),
    log:
        "logs/sample/{experiment}-pretrained.log",
    benchmark:
        "logs/sample/{experiment}-pretrained.benchmark.tsv"
    conda:
        "../envs/uvit.yaml"
    threads: cpus_per_task
    resources:
        gpu=gpu_count,
        gpu_model=gpu_model,
        mem_mb=mem_mb,
        runtime=runtime_minutes,
        cpus_per_task=cpus_per_task,
    params:
        lineage=lineage("sample_pretrained"),
        settings=settings("sample_pretrained"),
        launcher=launcher,
        latents=latent_args,
        protocol=sampling_protocol,
        data=optional_flags,
    message:
        "{wildcards.experiment}, the authors' weights: {params.protocol}"
    shell:
        "{params.launcher} --threads {threads} sample --experiment {wildcards.experiment} --model {input.model}"
        " {params.data} {params.latents} --out {output} 2> {log}"

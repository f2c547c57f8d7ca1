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


# The final samples; a curve point (a kept checkpoint, or another sampler step count) and a guidance point
# (another guidance scale at the final weights) are the same rule with their point's flag.
rule sample:
    input:
        unpack(latent_inputs),
        unpack(text_inputs("sample")),
        model=curve_model_input,
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
        protocol=sampling_protocol(),
        model=curve_model,
        point="",
    message:
        "{params.protocol}"
    shell:
        "{params.launcher} --threads {threads} sample --experiment {wildcards.experiment} --model {params.model}"
        "{params.point} --data {input.data} {params.latents} --out {output} 2> {log}"


use rule sample as sample_curve_point with:
    output:
        directory(layout.curve_samples("{experiment}", "{step}", "{sampler_steps}")),
    log:
        "logs/sample/{experiment}-step{step}-sampler_steps{sampler_steps}.log",
    benchmark:
        "logs/sample/{experiment}-step{step}-sampler_steps{sampler_steps}.benchmark.tsv"
    params:
        lineage=lineage("sample_curve_point"),
        settings=settings("sample_curve_point"),
        point=" --sampler-steps {sampler_steps}",


use rule sample as sample_guidance_point with:
    output:
        directory(layout.guidance_samples("{experiment}", "{scale}")),
    log:
        "logs/sample/{experiment}-scale{scale}.log",
    benchmark:
        "logs/sample/{experiment}-scale{scale}.benchmark.tsv"
    params:
        lineage=lineage("sample_guidance_point"),
        settings=settings("sample_guidance_point"),
        point=" --guidance-scale {scale}",


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
        protocol=sampling_protocol(", the authors' weights"),
        data=optional_flags,
    message:
        "{params.protocol}"
    shell:
        "{params.launcher} --threads {threads} sample --experiment {wildcards.experiment} --model {input.model}"
        " {params.data} {params.latents} --out {output} 2> {log}"

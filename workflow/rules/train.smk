rule train:
    """GRPO training of one (algorithm, reward setting, seed); resume state outside the outputs."""
    input:
        unpack(train_inputs),
    output:
        metrics=f"{RESULTS}/train/{{algorithm}}/{{reward_setting}}/seed{{seed}}/metrics.json",
        log_csv=f"{RESULTS}/train/{{algorithm}}/{{reward_setting}}/seed{{seed}}/train_log.csv",
        checkpoint=directory(f"{RESULTS}/train/{{algorithm}}/{{reward_setting}}/seed{{seed}}/checkpoint"),
    params:
        # health: its thresholds give metrics.json its verdict (and train.stop_on its stops); the
        # reward models of what the run scores (its rewards, its held-out metrics) are part of its rewards
        cfg=lambda w: stage_hash("model", "sampling", "train", "health",
                                 extra=[config["algorithm_params"].get(w.algorithm), config["reward_settings"][w.reward_setting],
                                        scored_reward_models(w.reward_setting)]),
        model=MODEL_DIR,
        plan=lambda w, input: f"--plan {input.plan}" if "plan" in input.keys() else "",
        out=lambda w: train_dir(w.algorithm, w.reward_setting, w.seed),
        resume=lambda w: f"{RESULTS}/resume/{w.algorithm}/{w.reward_setting}/seed{w.seed}",
        # several nodes: srun, one `egrpo train --nodes N` per node (train_launcher in common.smk)
        launcher=lambda w, resources: train_launcher(resources),
        gpus=lambda w, resources: resources.get("gpus_per_node", resources.get("gpu", 0)),
        nodes=lambda w, resources: resources.get("nodes", 1),
    log:
        f"{LOGS}/train/{{algorithm}}/{{reward_setting}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train/{{algorithm}}/{{reward_setting}}/seed{{seed}}.tsv"
    threads: 1
    resources:
        **train_resources(),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher}egrpo train --gpus {params.gpus} --nodes {params.nodes} --config {CONFIG_FILE:q} --model {params.model:q} {params.plan}"
        " --algorithm {wildcards.algorithm} --reward-setting {wildcards.reward_setting} --seed {wildcards.seed}"
        " --out {params.out:q} --resume-dir {params.resume:q} 2> {log:q}"

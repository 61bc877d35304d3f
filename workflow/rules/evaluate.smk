rule evaluate:
    """Held-out prompts, fixed seeds, every reward of the config: base model or a trained policy."""
    input:
        unpack(evaluate_inputs),
    output:
        scores=f"{RESULTS}/eval/{{name}}/scores.csv",
        summary=f"{RESULTS}/eval/{{name}}/summary.json",
        grid=report(f"{RESULTS}/eval/{{name}}/grid.png", category="Image grids", subcategory="{name}"),
    params:
        cfg=stage_hash("model", "sampling", "evaluate", extra=[reward_names(config), config["prompts"].get("benchmark")]),
        model=MODEL_DIR,
        checkpoint=lambda w, input: f"--checkpoint {input.checkpoint}" if "checkpoint" in input.keys() else "",
        out=lambda w: f"{RESULTS}/eval/{w.name}",
        resume=lambda w: f"{RESULTS}/resume/evaluate/{w.name}",
        gpus=lambda w, resources: resources.get("gpu", 0),
    log:
        f"{LOGS}/evaluate/{{name}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{name}}.tsv"
    threads: 1
    resources:
        **config["resources"]["evaluate"],
    shell:
        "OMP_NUM_THREADS={threads} egrpo evaluate --config {CONFIG_FILE:q} --model {params.model:q}"
        " {params.checkpoint} --name {wildcards.name} --out {params.out:q} --resume-dir {params.resume:q}"
        " --gpus {params.gpus} 2> {log:q}"

rule pretrain:
    """Train the tiny world's base model and its tinyclip reward (only when model.source is
    pretrain; the default DAG reads the shipped models/ as plain inputs and never runs this)."""
    output:
        model=directory(f"{RESULTS}/pretrain/tinyworld"),
        tinyclip=directory(f"{RESULTS}/pretrain/tinyclip"),
        report=f"{RESULTS}/pretrain/pretrain.json",
    params:
        cfg=stage_hash("model", "pretrain", extra=[config["sampling"], config["prompts"]["eval"]]),
        out=f"{RESULTS}/pretrain",
    log:
        f"{LOGS}/pretrain.log",
    benchmark:
        f"{BENCH}/pretrain.tsv"
    threads: 2
    resources:
        **config["resources"]["pretrain"],
    shell:
        "OMP_NUM_THREADS={threads} egrpo pretrain --config {CONFIG_FILE:q} --out {params.out:q} 2> {log:q}"

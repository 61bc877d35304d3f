rule build_model:
    """Build the tiny offline FLUX (real diffusers classes, random weights) and save it."""
    input:
        train=prompt_file("train"),
        eval=prompt_file("eval"),
    output:
        directory(f"{RESULTS}/model"),
    params:
        cfg=stage_hash("model", extra=config["sampling"]["shift"]),
    log:
        f"{LOGS}/build_model.log",
    benchmark:
        f"{BENCH}/build_model.tsv"
    threads: 1
    resources:
        **config["resources"]["build_model"],
    shell:
        "OMP_NUM_THREADS={threads} egrpo build-model --config {CONFIG_FILE:q} --out {output:q} 2> {log:q}"

rule threshold:
    """tau by the configured rule and the merge plan of low-entropy steps."""
    input:
        f"{RESULTS}/profile/entropy.csv",
    output:
        f"{RESULTS}/plan/plan.json",
    params:
        cfg=stage_hash("sampling", "threshold"),
    log:
        f"{LOGS}/threshold.log",
    benchmark:
        f"{BENCH}/threshold.tsv"
    threads: 1
    resources:
        **config["resources"]["threshold"],
    shell:
        "egrpo threshold --config {CONFIG_FILE:q} --profile {input:q} --out {output:q} 2> {log:q}"

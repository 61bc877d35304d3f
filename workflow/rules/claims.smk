rule claims:
    """The claims experiment: measured spread vs step and entropy, merged steps, E-GRPO against the
    baselines at equal forward-equivalents, and the headline fraction (config claims.enabled)."""
    input:
        profile=f"{RESULTS}/profile/entropy.csv",
        merged=f"{RESULTS}/profile/entropy_merged.csv",
        train=[f"{train_dir(a, r, s)}/metrics.json" for a, r, s in train_runs()],
        pretrain=pretrain_report(),
    output:
        json=f"{RESULTS}/report/claims.json",
        markdown=report(f"{RESULTS}/report/claims.md", caption="../report/claims.rst", category="Claims"),
        figure=report(f"{RESULTS}/report/claims.png", caption="../report/claims.rst", category="Claims"),
        curves=f"{RESULTS}/report/heldout_curves.csv",
    params:
        cfg=stage_hash("claims"),
        out=f"{RESULTS}/report",
        pretrain=lambda w, input: f"--pretrain {input.pretrain}" if input.pretrain else "",
    log:
        f"{LOGS}/claims.log",
    benchmark:
        f"{BENCH}/claims.tsv"
    threads: 1
    resources:
        **config["resources"]["claims"],
    shell:
        "egrpo claims --config {CONFIG_FILE:q} --profile {input.profile:q} --merged {input.merged:q}"
        " --train-metrics {input.train:q} {params.pretrain} --out {params.out:q} 2> {log:q}"

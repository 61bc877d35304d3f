rule report:
    """Paper-style table (mean ± std over seeds, NFE) and the plots."""
    input:
        profile=f"{RESULTS}/profile/entropy.csv",
        plan=f"{RESULTS}/plan/plan.json",
        train=[f"{train_dir(a, r, s)}/metrics.json" for a, r, s in train_runs()],
        evals=[f"{RESULTS}/eval/{n}/summary.json" for n in policy_names()],
    output:
        table=report(f"{RESULTS}/report/table.csv", caption="../report/table.rst", category="Tables"),
        markdown=f"{RESULTS}/report/table.md",
        summary=f"{RESULTS}/report/summary.txt",
        entropy=report(f"{RESULTS}/report/entropy_plan.png", caption="../report/entropy_plan.rst",
                       category="Entropy profile"),
        curves=report(f"{RESULTS}/report/train_reward_vs_nfe.png", caption="../report/curves.rst", category="Training"),
        wall=report(f"{RESULTS}/report/train_reward_vs_wall.png", caption="../report/curves.rst", category="Training"),
        heldout=report(f"{RESULTS}/report/heldout_vs_compute.png", caption="../report/heldout.rst", category="Training"),
        truth=report(f"{RESULTS}/report/reward_vs_truth.png", caption="../report/heldout.rst", category="Training"),
        reward_std=report(f"{RESULTS}/report/reward_std_per_step.png", caption="../report/reward_std.rst",
                          category="Entropy profile"),
        images=report(f"{RESULTS}/report/image_grid.png", caption="../report/images.rst", category="Images"),
        health=report(f"{RESULTS}/report/health.png", caption="../report/health.rst", category="Training"),
    params:
        cfg=stage_hash(extra=reward_names(config)),
        out=f"{RESULTS}/report",
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    threads: 1
    resources:
        **config["resources"]["report"],
    shell:
        "egrpo report --config {CONFIG_FILE:q} --profile {input.profile:q} --plan {input.plan:q}"
        " --train-metrics {input.train:q} --eval-summaries {input.evals:q} --out {params.out:q} 2> {log:q}"

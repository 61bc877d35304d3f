rule profile:
    """Entropy profile: analytic H(i,1) and measured branch spread / reward std per step."""
    input:
        model=model_input,
        prompts=prompt_file("train"),
    output:
        csv=f"{RESULTS}/profile/entropy.csv",
        merged=f"{RESULTS}/profile/entropy_merged.csv",
        png=report(f"{RESULTS}/profile/entropy.png", category="Entropy profile"),
    params:
        cfg=stage_hash("model", "sampling", "profile", extra=config["reward_settings"][PROFILE_SETTING]),
        model=MODEL_DIR,
    log:
        f"{LOGS}/profile.log",
    benchmark:
        f"{BENCH}/profile.tsv"
    threads: 1
    resources:
        **config["resources"]["profile"],
    shell:
        "OMP_NUM_THREADS={threads} egrpo profile --config {CONFIG_FILE:q} --model {params.model:q}"
        " --out-csv {output.csv:q} --out-png {output.png:q} 2> {log:q}"

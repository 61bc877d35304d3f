"""`egrpo <stage>`: one thin subcommand per pipeline stage. Parse, validate, call the stage.

Every stage takes --config plus explicit input and output paths, so it runs the same by hand and
inside Snakemake. User errors (bad config, missing files) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings

from egrpo.algorithms import ALGORITHMS  # names only: no torch


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("egrpo")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egrpo", description="E-GRPO experiment pipeline stages.")
    parser.add_argument("--version", action="version", version=f"egrpo {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    def stage(name, help_text, config_default=None):
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config_default:
            p.add_argument("--config", default=config_default,
                           help=f"YAML config (validated against the schema; default {config_default})")
        else:
            p.add_argument("--config", required=True, help="YAML config (validated against the schema)")
        return p

    p = stage("build-model", "Build the tiny offline FLUX pipeline and save it (safetensors).")
    p.add_argument("--out", required=True, help="output directory of the FluxPipeline")

    p = stage("pretrain", "Train the tiny world's base model (VAE + flow transformer) and its tinyclip reward.")
    p.add_argument("--out", required=True, help="output directory: writes tinyworld/, tinyclip/ and pretrain.json")

    p = stage("claims", "Test the paper's claims on the measured profile and held-out curves (claims.md/json/png).")
    p.add_argument("--profile", required=True, help="entropy.csv of `egrpo profile`")
    p.add_argument("--merged", help="entropy_merged.csv of `egrpo profile` (merged transitions)")
    p.add_argument("--train-metrics", nargs="+", required=True, help="metrics.json of every train run")
    p.add_argument("--pretrain", help="pretrain.json of the base model (its alignment vs chance)")
    p.add_argument("--out", required=True, help="output directory")

    p = stage("profile", "Entropy profile per denoising step: analytic and measured (csv + png).")
    p.add_argument("--model", help="FluxPipeline directory (default: model.path)")
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-png", required=True)

    p = stage("threshold", "Choose tau and the merge plan (plan.json).")
    p.add_argument("--profile", help="entropy.csv of `egrpo profile` (needed by rule target_reward_std)")
    p.add_argument("--out", required=True, help="plan.json to write")

    p = stage("train", "GRPO training of one (algorithm, reward setting, seed).")
    p.add_argument("--model", help="FluxPipeline directory (default: model.path)")
    p.add_argument("--plan", help="plan.json (algorithms that use the merge plan)")
    p.add_argument("--algorithm", required=True, choices=sorted(ALGORITHMS), help="which algorithm to train")
    p.add_argument("--reward-setting", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output directory (metrics.json, train_log.csv, checkpoint/)")
    p.add_argument("--resume-dir", required=True, help="resume state, kept outside the outputs until success")
    p.add_argument("--gpus", type=int, default=0,
                   help="GPUs per node; with more than one, re-run under `accelerate launch`, one process per GPU")
    p.add_argument("--nodes", type=int, default=1,
                   help="nodes of the job (SLURM): run as one task per node under srun, each starting torchrun with "
                        "--gpus processes that meet at the first node (egrpo/launch.py)")

    p = stage("evaluate", "Sample a policy on the held-out prompts and score every reward.")
    p.add_argument("--model", help="FluxPipeline directory (default: model.path)")
    p.add_argument("--checkpoint", help="checkpoint/ of a trained policy (omit for the base model)")
    p.add_argument("--name", required=True, help="'base' or <algorithm>-<reward_setting>-seed<k>")
    p.add_argument("--out", required=True, help="output directory (scores.csv, summary.json, grid.png)")

    p = stage("report", "Tables and plots from the profile, plan, training and evaluation outputs.")
    p.add_argument("--profile", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--train-metrics", nargs="*", default=[])
    p.add_argument("--eval-summaries", nargs="+", required=True)
    p.add_argument("--out", required=True, help="report directory")

    p = stage("compare", "Print the report's table straight from the MLflow store (and write it as CSV): the "
              "evaluate runs of the config's experiment in its mlflow.tracking_uri, kept to the config's "
              "algorithms, reward settings and seeds (runs made by hand with other seeds are left out).",
              config_default="config/config.yaml")
    p.add_argument("--filter", default="", help="extra MLflow filter, e.g. \"tags.reward_setting = 'color'\"")
    p.add_argument("--out", help="CSV file to write")

    stage("mlflow-init", "Create the MLflow store and experiment once, before parallel jobs start.")
    text = ("Write the paper's prompt files from a downloaded HPDv2 (train.txt, test.txt: the 400 test prompts, "
            "benchmark.json: hpsv2's 4 styles x 800 with their style); docs/paper-data.md says where to get it.")
    p = sub.add_parser("prompts", help=text, description=text)
    p.add_argument("--hpdv2", required=True, help="the HPDv2 download: train.json, test.json, benchmark/<style>.json")
    p.add_argument("--out", required=True, help="output directory (e.g. data/hpd)")
    text = "List the registered rewards, what each needs and which original it reproduces."
    sub.add_parser("rewards", help=text, description=text)
    text = "Link profiles/<name> to ~/.config/snakemake/<name>, so that `snakemake --profile <name>` finds it."
    p = sub.add_parser("install-profile", help=text, description=text)
    p.add_argument("name", nargs="?", default="slurm", help="profile under profiles/ (default: slurm)")
    p.add_argument("--force", action="store_true", help="replace an existing profile of that name")
    return parser


def _quiet_libraries() -> None:
    """Quiet the libraries through their environment switches, read when (and if) they are first
    imported: importing transformers / diffusers here only to call their setters would cost every
    stage ~4 s, the model-free ones (threshold, report, claims) included."""
    for var, value in {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "GIT_PYTHON_REFRESH": "quiet",
                       "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}.items():
        os.environ.setdefault(var, value)
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("transformers", "diffusers", "mlflow", "alembic", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _install_profile(name: str, force: bool) -> None:
    from pathlib import Path

    from egrpo.errors import UserError

    source = Path(__file__).resolve().parent.parent / "profiles" / name
    if not (source / "config.yaml").is_file():
        raise UserError(f"no profile {name!r}: {source}/config.yaml does not exist")
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "snakemake"
    target = base / name
    if target.is_symlink() and target.resolve() == source:
        print(f"{target} -> {source} (already installed)")
        return
    if target.exists() or target.is_symlink():
        if not force:
            raise UserError(f"{target} exists; pass --force to replace it with a link to {source}")
        target.unlink() if target.is_symlink() or target.is_file() else __import__("shutil").rmtree(target)
    base.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source, target_is_directory=True)
    print(f"{target} -> {source}")


# arguments that name files a stage reads (--model may be a Hub id: its loader checks it)
_INPUT_FILES = ("profile", "merged", "plan", "train_metrics", "eval_summaries", "pretrain", "checkpoint")


def _check_input_files(args) -> None:
    """Every input file named on the command line exists: one line naming the option otherwise."""
    from pathlib import Path

    from egrpo.errors import UserError

    for name in _INPUT_FILES:
        value = getattr(args, name, None)
        for path in (value if isinstance(value, list) else [value] if value else []):
            if not Path(path).exists():
                raise UserError(f"--{name.replace('_', '-')}: {path} does not exist")


def _dispatch(args) -> None:
    if args.command == "rewards":
        from egrpo.rewards import REWARDS
        for name, spec in REWARDS.items():
            print(f"{name:24s} {spec.description}\n{'':24s} needs: {spec.needs}")
            if spec.original:
                print(f"{'':24s} reproduces: {spec.original} (precision {spec.precision}; docs/rewards.md)")
        return
    if args.command == "install-profile":
        _install_profile(args.name, args.force)
        return
    if args.command == "prompts":
        from egrpo.prompts import convert_hpdv2
        counts = convert_hpdv2(args.hpdv2, args.out)
        styles = ", ".join(f"{s} {n}" for s, n in counts["benchmark"].items())
        print(f"{args.out}: train.txt {counts['train']} prompts, test.txt {counts['test']}, benchmark.json {styles}")
        return
    from egrpo.config import load
    cfg = load(args.config)
    if args.command in _MODEL_STAGES:
        from egrpo.device import memory_phase, set_stage

        set_stage(args.command)
        # the trainer names its own phases; what runs outside them: loading, or the stage's sampling
        with _refuse_unchanged_oom_rerun(args, cfg), memory_phase(_MODEL_STAGES[args.command]):
            _run_stage(args, cfg)
    else:
        _run_stage(args, cfg)


# stages that run a model on a device: an out-of-memory error in them is not run again unchanged
_MODEL_STAGES = {"pretrain": "pretraining", "profile": "sampling", "train": "loading", "evaluate": "sampling"}


@contextlib.contextmanager
def _refuse_unchanged_oom_rerun(args, cfg):
    """A command that ran out of memory is refused when run again with the same arguments and the
    same config (a retry would fail the same way after the same minutes of loading): its message
    is kept in results/<experiment>/failures/ until a knob changes."""
    import hashlib
    import json
    from pathlib import Path

    from egrpo.errors import OutOfMemory
    from egrpo.io import atomic_write_text

    key = hashlib.sha256(json.dumps(sys.argv[1:] if args.argv is None else args.argv).encode()
                         + Path(args.config).read_bytes()).hexdigest()[:16]
    marker = Path("results") / cfg["experiment"] / "failures" / f"oom-{args.command}-{key}.txt"
    if marker.is_file():
        raise OutOfMemory(f"{marker.read_text().strip()} [not run again unchanged: this command ran out of memory "
                          f"with this config before; change a knob, or delete {marker} to retry as is]")
    try:
        yield
    except OutOfMemory as error:
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, str(error) + "\n")
        raise


def _run_stage(args, cfg) -> None:
    if args.command == "mlflow-init":
        from egrpo.tracking import init_store, tracking_uri
        print(f"mlflow: experiment {cfg['experiment']} ({init_store(cfg)}) in {tracking_uri(cfg)}")
        return
    _quiet_libraries()
    if args.command == "build-model":
        from egrpo.models import run_build_model
        run_build_model(cfg, args.out)
    elif args.command == "pretrain":
        from egrpo.pretrain import run_pretrain
        r = run_pretrain(cfg, args.out)
        b = {k: "n/a" if v is None else f"{v:.3f}" for k, v in r["base_model"].items()}
        print(f"base model alignment {b['alignment']} (chance {b['chance']}, ceiling {b['ceiling']}); "
              f"tinyclip top-1 {r['tinyclip']['top1']:.2f} (chance {r['tinyclip']['chance']:.3f}); {args.out}")
    elif args.command == "claims":
        from egrpo.claims import run_claims
        r = run_claims(cfg, args.profile, args.merged, args.train_metrics, args.pretrain, args.out)
        f = r.get("nfe_fraction_to_match_dancegrpo") or {}
        print(f"claims written to {args.out}; nfe_fraction_to_match_dancegrpo = {f.get('mean')}")
    elif args.command == "profile":
        from egrpo.profile import run_profile
        run_profile(cfg, args.model, args.out_csv, args.out_png)
    elif args.command == "threshold":
        from egrpo.threshold import run_threshold
        plan = run_threshold(cfg, args.profile, args.out)
        logging.getLogger("egrpo").info("tau = %s, %d plan entries, skipped steps %s", plan["tau"],
                                        len(plan["plan"]), plan["skipped"])
    elif args.command == "train":
        from egrpo import launch
        argv = sys.argv[1:] if args.argv is None else args.argv
        if args.nodes > 1 and not launch.launched():   # this node's launcher (one srun task per node)
            code = launch.run_node(args.nodes, args.gpus, launch.worker_argv(argv))
            if code:
                raise SystemExit(code)
            return
        if args.gpus > 1 and not launch.launched():
            launch.relaunch_with_accelerate(args.gpus, launch.worker_argv(argv))
        from egrpo.train import run_train
        m = run_train(cfg, args.algorithm, args.reward_setting, args.seed, args.model, args.plan, args.out, args.resume_dir)
        if m is not None:  # the main process of a multi-process run, or a single process
            logging.getLogger("egrpo").info("final train reward %.5f, NFE %d, %.1f s", m["final_train_reward"], m["nfe_total"], m["wall_s"])
    elif args.command == "evaluate":
        from egrpo.evaluate import run_evaluate
        run_evaluate(cfg, args.name, args.model, args.checkpoint, args.out)
    elif args.command == "compare":
        from egrpo.report import run_compare
        run_compare(cfg, args.filter, args.out)
    elif args.command == "report":
        from egrpo.report import run_report
        run_report(cfg, args.profile, args.plan, args.train_metrics, args.eval_summaries, args.out)


def main(argv: list[str] | None = None) -> int:
    from egrpo.errors import UserError

    args = _parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format=f"egrpo {args.command}: %(message)s", stream=sys.stderr)
    try:
        _check_input_files(args)
        _dispatch(args)
    except UserError as e:
        print(f"egrpo {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except OSError as e:
        if e.filename is None:   # not about a path the user can fix: a bug or the machine, keep the traceback
            raise
        print(f"egrpo {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"egrpo {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

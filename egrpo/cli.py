"""`egrpo <stage>`: one subcommand per pipeline stage (egrpo/stages/: one module each). Parse,
validate the config, run the stage.

Every stage takes --config plus explicit input and output paths, so it runs the same by hand and
inside Snakemake. User errors (bad config, missing files) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from egrpo import stages
from egrpo.config import load
from egrpo.errors import OutOfMemory, Terminated, UserError
from egrpo.runtime.io import atomic_write_text

REQUIRED = object()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("egrpo")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser; only the named stage's module is imported (all of them for --help or a typo)."""
    parser = argparse.ArgumentParser(prog="egrpo", description="E-GRPO experiment pipeline stages.")
    parser.add_argument("--version", action="version", version=f"egrpo {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    named = next((a for a in argv if not a.startswith("-")), None)
    for name in ([named] if named in stages.STAGES else stages.STAGES):
        module = stages.load(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        config = getattr(module, "CONFIG", REQUIRED)
        if config is REQUIRED:
            p.add_argument("--config", required=True, help="YAML config (validated against the schema)")
        elif config is not None:
            p.add_argument("--config", default=config, help=f"YAML config (validated against the schema; default {config})")
        module.add_arguments(p)
        p.set_defaults(stage=module)
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


def _check_input_files(args) -> None:
    """Every input file the stage names on the command line exists: one line naming the option."""
    for name in getattr(args.stage, "INPUTS", ()):
        value = getattr(args, name, None)
        for path in (value if isinstance(value, list) else [value] if value else []):
            if not Path(path).exists():
                raise UserError(f"--{name.replace('_', '-')}: {path} does not exist")


@contextlib.contextmanager
def _refuse_unchanged_oom_rerun(args, cfg):
    """A command that ran out of memory is refused when run again with the same arguments and the
    same config (a retry would fail the same way after the same minutes of loading): its message
    is kept in results/<experiment>/failures/ until a knob changes."""

    key = hashlib.sha256(json.dumps(args.argv).encode() + Path(args.config).read_bytes()).hexdigest()[:16]
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


def _run(args) -> None:
    stage = args.stage
    cfg = None
    if getattr(stage, "CONFIG", REQUIRED) is not None:
        cfg = load(args.config)
    if getattr(stage, "QUIET", True):
        _quiet_libraries()
    phase = getattr(stage, "PHASE", None)
    if phase is None:
        stage.run(args, cfg)
        return
    from egrpo.runtime.device import memory_phase, set_stage  # here: torch, for the stages that run a model

    set_stage(args.command)
    # the trainer names its own phases; what runs outside them: loading, or the stage's sampling
    with _refuse_unchanged_oom_rerun(args, cfg), memory_phase(phase):
        stage.run(args, cfg)


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None   # unwinds like Ctrl-C
    try:
        return _main(argv)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = _parser(given).parse_args(given)
    args.argv = given
    logging.basicConfig(level=logging.INFO, format=f"egrpo {args.command}: %(message)s", stream=sys.stderr)
    try:
        _check_input_files(args)
        _run(args)
    except UserError as e:
        print(f"egrpo {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except OSError as e:
        if e.filename is None:   # not about a path the user can fix: a bug or the machine, keep the traceback
            raise
        print(f"egrpo {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        print(f"egrpo {args.command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`egrpo install-profile`: link one of the Snakemake profiles that ship with egrpo (package data:
egrpo/data/profiles/) to ~/.config/snakemake/<name>, so that `snakemake --profile <name>` finds it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from egrpo.errors import UserError
from egrpo.runtime.paths import PROFILES

NAME = "install-profile"
HELP = "Link the shipped Snakemake profile <name> to ~/.config/snakemake/<name>, so that `snakemake --profile <name>` finds it."
CONFIG = None


def add_arguments(p) -> None:
    p.add_argument("name", nargs="?", default="slurm", help="profile that ships with egrpo (default: slurm)")
    p.add_argument("--force", action="store_true", help="replace an existing profile of that name")


def run(args, cfg) -> None:
    install_profile(args.name, args.force)


def install_profile(name: str, force: bool) -> None:
    source = (PROFILES / name).resolve()
    if not (source / "config.yaml").is_file():
        shipped = sorted(p.name for p in PROFILES.iterdir() if (p / "config.yaml").is_file())
        raise UserError(f"no profile {name!r} ({source}/config.yaml does not exist); shipped: {', '.join(shipped)}")
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "snakemake"
    target = base / name
    if target.is_symlink() and target.resolve() == source:
        print(f"{target} -> {source} (already installed)")
        return
    if target.exists() or target.is_symlink():
        if not force:
            raise UserError(f"{target} exists; pass --force to replace it with a link to {source}")
        target.unlink() if target.is_symlink() or target.is_file() else shutil.rmtree(target)
    base.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source, target_is_directory=True)
    print(f"{target} -> {source}")

"""Files that ship inside the package (so that `pip install .`, not only an editable install, runs
every stage): the config schema, which the Snakefile validates with too, and the Snakemake profiles.
The repository's workflow/schemas/config.schema.yaml and profiles/ are links to these."""
from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
SCHEMA = DATA / "config.schema.yaml"
PROFILES = DATA / "profiles"

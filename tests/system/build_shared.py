"""Build one shared test artefact in the background: `python tests/build_shared.py NAME PATH`.

Started by the xdist controller (conftest.py) as soon as the workers have collected tests that use
it, so that it is built while the workers run other tests. It builds PATH, then writes PATH.done;
or PATH.failed with the reason."""
import sys
import traceback
from pathlib import Path

from snakemake_runs import build_micro_dag

BUILDERS = {"micro-dag": build_micro_dag}

if __name__ == "__main__":
    name, path = sys.argv[1], Path(sys.argv[2])
    try:
        BUILDERS[name](path)
    except BaseException:
        path.with_name(path.name + ".failed").write_text(traceback.format_exc()[-4000:])
        raise
    path.with_name(path.name + ".done").write_text("")

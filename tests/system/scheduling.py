"""How the suite runs on two cores (a pytest plugin, registered by tests/conftest.py), and the check
that it leaves no process behind.

The README runs the suite with pytest-xdist (`-n 3`: one worker mostly waits on the local SLURM):
- order, by rule: the system tier first (its tests are the long ones), the SLURM tests first of all
  (mostly waiting: they start at once and overlap the rest), the tests that start from the finished
  micro DAG last of the system tier; the unit tier after. So no long test starts last and holds the
  run while the other workers idle;
- the finished micro DAG is built once, in the background, as soon as the workers have collected a
  test that needs it (`BACKGROUND`), while they run other tests; a test that needs it before it is
  done waits (helpers.shared_once);
- leaks: every process the suite starts inherits EGRPO_TEST_RUN; when the run ends, any `egrpo`
  process that still carries this run's mark is killed and fails the run, by name.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

MARK = "EGRPO_TEST_RUN"
# shared artefact -> the test files that use it (built in the background by the xdist controller)
BACKGROUND = {"micro-dag": ("test_dag.py", "test_faults.py", "test_families_dag.py", "test_baselines_dag.py")}
USES_FINISHED_DAG = {"finished_micro_dag", "micro_dag_copy", "workflow"}


def _rank(item) -> tuple[int, int]:
    path = Path(str(item.fspath))
    if "system" not in path.parts:
        return (1, 0)
    if item.get_closest_marker("slurm"):
        return (0, 0)
    fixtures = set(getattr(item, "fixturenames", ()))
    return (0, 2 if fixtures & USES_FINISHED_DAG or path.name == "test_families_dag.py" else 1)


def pytest_collection_modifyitems(config, items):
    items[:] = [item for _, item in sorted(enumerate(items), key=lambda pair: (_rank(pair[1]), pair[0]))]


def pytest_configure(config):
    os.environ.setdefault(MARK, uuid.uuid4().hex)   # workers inherit the controller's


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """(xdist controller) Start the background builds that the collected tests need, once."""
    config = node.config
    if hasattr(config, "_egrpo_builds"):
        return
    config._egrpo_builds = []
    root = config._tmp_path_factory.getbasetemp()
    files = {Path(nodeid.split("::")[0]).name for nodeid in ids}
    for name, users in BACKGROUND.items():
        if files & set(users):
            (root / f"{name}.started").write_text("")
            with open(root / f"{name}.log", "w") as log:
                config._egrpo_builds.append(subprocess.Popen(
                    [sys.executable, str(Path(__file__).parent / "build_shared.py"), name, str(root / name)],
                    cwd=Path(__file__).parent, stdout=log, stderr=subprocess.STDOUT))


def _marked_processes(mark: str) -> dict[int, str]:
    """pid -> command line of the processes (other than this one) that carry this run's mark."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if f"{MARK}={mark}".encode() not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:   # gone meanwhile, or not ours to read
            continue
    return found


def leftover_egrpo_processes(mark: str, grace_s: float = 15.0) -> dict[int, str]:
    """The `egrpo` processes of this run still alive after `grace_s` seconds."""
    deadline = time.monotonic() + grace_s
    while True:
        left = {pid: cmd for pid, cmd in _marked_processes(mark).items() if "egrpo" in cmd}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    for proc in getattr(session.config, "_egrpo_builds", []):   # a run that ends (or is interrupted) first
        if proc.poll() is None:
            proc.kill()
    if hasattr(session.config, "workerinput") or not Path("/proc").is_dir():
        return   # an xdist worker: the controller checks once, at the end
    left = leftover_egrpo_processes(os.environ[MARK])
    if not left:
        return
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    lines = "\n".join(f"  pid {pid}: {cmd[:200]}" for pid, cmd in sorted(left.items()))
    session.config.get_terminal_writer().line(
        f"\negrpo tests: {len(left)} egrpo process(es) started by this run outlived it (killed now):\n{lines}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED

"""The unit tier: in-process tests of seconds each, no subprocesses (`python -m pytest tests/unit`)."""
from helpers import _no_inherited_tracking_uri, micro, tiny_model_dir  # noqa: F401 (fixtures)

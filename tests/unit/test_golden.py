"""Behaviour kept through refactoring: the default micro config's training runs (every algorithm,
LoRA, FLUX) give the train logs, metrics and weights recorded before the train package was split
(tests/data/golden.json, written by tests/golden.py at commit 3521b38's behaviour).

Every recorded field keeps its value (fields added since may join); integers and strings must be
equal, floats agree to 1e-6 relative (the recording machine's exact
bits are the stronger check that tests/golden.py's `--all` run makes by hand)."""
import math

import pytest
from golden import ALGORITHMS, ROOT, run

GOLDEN = ROOT / "tests/data/golden.json"


def close(a, b, path="") -> list[str]:
    """Where two fingerprints differ (floats to 1e-6 relative, everything else exactly)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for n, (x, y) in enumerate(zip(a, b)) for d in close(x, y, f"{path}[{n}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def recorded(now, golden):
    """`now` restricted to the keys `golden` recorded, at every depth (keys added since, such as a new
    recipe setting, may join; a recorded key that disappears still fails in close)."""
    if isinstance(now, dict) and isinstance(golden, dict):
        return {k: recorded(v, golden[k]) if k in golden else v for k, v in now.items() if k in golden}
    return now


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_micro_training_matches_the_recorded_fingerprint(algorithm, tmp_path):
    import json

    golden = json.loads(GOLDEN.read_text())[f"flux/{algorithm}/lora"]
    now = run(tmp_path / "run", "flux", algorithm, "lora")
    for part in ("train_log", "metrics"):   # what was recorded must not change; new columns may be added
        kept = recorded(now[part], golden[part])
        assert not close(golden[part], kept, part), close(golden[part], kept, part)[:10]
    weights = {k: {"sum": v["sum"], "abs_sum": v["abs_sum"]} for k, v in now["weights"].items()}
    expected = {k: {"sum": v["sum"], "abs_sum": v["abs_sum"]} for k, v in golden["weights"].items()}
    assert not close(expected, weights, "weights"), close(expected, weights, "weights")[:10]


def test_the_comparison_sees_a_changed_value():
    golden = {"a": [1.0, 2.0], "b": {"c": 3}}
    assert close(golden, {"a": [1.0, 2.0 + 1e-9], "b": {"c": 3}}) == []
    assert close(golden, {"a": [1.0, 2.01], "b": {"c": 3}}) == [".a[1]: 2.0 != 2.01"]
    assert close(golden, {"a": [1.0, 2.0], "b": {"c": 4}}) == [".b.c: 3 != 4"]

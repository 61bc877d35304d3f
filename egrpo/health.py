"""Whether a train run is healthy, judged from what it logs (train_log.csv rows and its held-out curve)
by three documented rules with thresholds in the config's `health:` section (docs/health.md):

  hacking      over the last `points` held-out points (or, where the trained reward's own held-out
               curve is measured, over the whole curve from the base), the training reward rose by
               at least `reward_rise` while a held-out metric the run does not train on fell by at
               least `heldout_drop`: the reward no longer means what the held-out metric means. A run
               that trains only on exact rewards (a tiny world's rule-based ground truth:
               `alignment`, `judge`) is never flagged: there is no error of the reward to exploit,
               and a held-out learned metric that falls then says the metric is wrong.
  lost_signal  the zero-std ratio (share of groups whose rewards do not differ: their advantages are
               all 0) stayed above `zero_std_ratio` for `iterations` consecutive iterations.
  collapse     the trained reward itself fell by at least `drop` from the base (its own held-out
               curve where it is measured, else the training reward's first and last `rows` rows)
               while no held-out metric rose: the run is getting worse at everything.
  reward_falls the same fall of the trained reward's own held-out curve while some other held-out
               metric rose: the run moves the policy somewhere its reward does not ask (a rate too
               high for the reward, or a reward the policy cannot climb); `collapse`'s thresholds.
  mismatch     before the first optimizer step the policy is the rollout's, so every PPO ratio is 1
               up to rounding; a mean |ratio - 1| above `ratio_dev` in any iteration means the replay
               does not compute what the rollout computed (precision, a different model, a bug).

`assess` returns {"verdict": "healthy" | "flagged", "flags": [{rule, iteration, line}]}; each line is
one sentence a reader acts on. Pure Python over the logged numbers: no model, no cost.
"""
from __future__ import annotations

import math

from egrpo.rewards import is_exact

RULES = ("hacking", "lost_signal", "mismatch", "collapse", "reward_falls")


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def hacking(rows: list[dict], heldout: list[dict], trained: set[str], rule: dict) -> dict | None:
    n = rule["points"]
    if len(heldout) < n or n < 2 or (trained and all(is_exact(r) for r in trained)):
        return None
    # the last n points, then (where the trained reward's own held-out curve is measured) the whole
    # curve from the base: a slow drift that no n points show (a reward gamed over the whole run)
    windows = [(heldout[-n:], f"over the last {n} points", True)]
    if len(heldout) > n:   # from the base only on the held-out curve: the rollouts' first rows mix other prompts
        windows.append((heldout, "since the base", False))
    for window, span, rollouts in windows:
        flag = _hacking_in(window, span, rows, trained, rule, rollouts)
        if flag:
            return flag
    return None


def _hacking_in(window: list[dict], span: str, rows: list[dict], trained: set[str], rule: dict,
                rollouts: bool) -> dict | None:
    start, end = window[0]["iteration"], window[-1]["iteration"]

    def reward_at(iteration: int) -> float | None:   # the training reward around an iteration (mean of up to 3 rows)
        near = [r["reward_mean"] for r in rows if abs(r["iteration"] - iteration) <= 1 and _finite(r.get("reward_mean"))]
        return sum(near) / len(near) if near else None

    own = [f"heldout_{r}" for r in sorted(trained) if all(_finite(p.get(f"heldout_{r}")) for p in window)]
    if own:   # the trained reward on the held-out prompts: far less noisy than the rollouts' rewards
        before, after = (sum(p[k] for k in own) / len(own) for p in (window[0], window[-1]))
    elif rollouts:
        before, after = reward_at(max(start, 1)), reward_at(end)
    else:
        return None
    if before is None or after is None:
        return None
    rise = after - before
    for key in window[0]:
        metric = key.removeprefix("heldout_")
        if not key.startswith("heldout_") or metric in trained:
            continue
        values = [p.get(key) for p in window]
        if not all(_finite(v) for v in values):
            continue
        drop = values[0] - values[-1]
        if rise >= rule["reward_rise"] and drop >= rule["heldout_drop"]:
            return {"rule": "hacking", "iteration": start,
                    "line": f"reward hacking suspected from iteration {start}: training reward {rise:+.3g} while "
                            f"held-out {metric} {-drop:+.3g} {span}"}
    return None


def lost_signal(rows: list[dict], rule: dict) -> dict | None:
    run, first = 0, None
    for r in rows:
        if _finite(r.get("zero_std_ratio")) and r["zero_std_ratio"] > rule["zero_std_ratio"]:
            run, first = run + 1, first if run else r["iteration"]
            if run >= rule["iterations"]:
                return {"rule": "lost_signal", "iteration": first,
                        "line": f"signal lost: zero-std ratio > {rule['zero_std_ratio']:g} for {run} iterations "
                                f"from iteration {first} (the groups' rewards do not differ: nothing to learn)"}
        else:
            run = 0
    return None


def collapse(rows: list[dict], heldout: list[dict], trained: set[str], rule: dict) -> dict | None:
    n = rule["rows"]
    own = [f"heldout_{r}" for r in sorted(trained)
           if heldout and all(_finite(p.get(f"heldout_{r}")) for p in (heldout[0], heldout[-1]))]
    if own and len(heldout) >= 2:
        first, last = (sum(p[k] for k in own) / len(own) for p in (heldout[0], heldout[-1]))
        what = "held-out " + " + ".join(k.removeprefix("heldout_") for k in own)
    else:
        rewards = [r["reward_mean"] for r in rows if _finite(r.get("reward_mean"))]
        if len(rewards) < 2 * n:
            return None
        first, last = sum(rewards[:n]) / n, sum(rewards[-n:]) / n
        what = f"training reward (first vs last {n} iterations)"
    drop = first - last
    if drop < rule["drop"]:
        return None
    others = {k: heldout[-1][k] - heldout[0][k] for k in (heldout[0] if heldout else {})
              if k.startswith("heldout_") and k not in own and _finite(heldout[0].get(k)) and _finite(heldout[-1].get(k))}
    also = "".join(f", held-out {k.removeprefix('heldout_')} {v:+.3g}" for k, v in others.items())
    iteration = rows[-1]["iteration"] if rows else 0
    if any(change > 0 for change in others.values()):
        if not own:   # the rollouts' reward mixes prompts: only its own held-out curve says it fell
            return None
        return {"rule": "reward_falls", "iteration": iteration,
                "line": f"the trained reward falls: {what} {-drop:+.3g} from the base ({first:.3g} -> {last:.3g}){also}: "
                        "the run does not climb the reward it trains on (learning rate too high?)"}
    return {"rule": "collapse", "iteration": iteration,
            "line": f"collapse: {what} {-drop:+.3g} from the base ({first:.3g} -> {last:.3g}){also}: "
                    "the run is getting worse at everything (learning rate too high?)"}


def mismatch(rows: list[dict], rule: dict) -> dict | None:
    for r in rows:
        dev = r.get("ratio_abs_dev_first")
        if _finite(dev) and dev > rule["ratio_dev"]:
            return {"rule": "mismatch", "iteration": r["iteration"],
                    "line": f"rollout and training disagree: first-step ratio deviation {dev:.3g} > {rule['ratio_dev']:g} "
                            f"at iteration {r['iteration']} (log-prob gap {r.get('logp_gap_first', float('nan')):.3g})"}
    return None


def assess(rows: list[dict], heldout: list[dict], trained_rewards, health: dict) -> dict:
    """The run's verdict from its rows and held-out points; `trained_rewards`: the reward names it
    trains on (their held-out curves are not evidence against the training reward)."""
    flags = [f for f in (hacking(rows, heldout, set(trained_rewards), health["hacking"]),
                         lost_signal(rows, health["lost_signal"]), mismatch(rows, health["mismatch"]),
                         collapse(rows, heldout, set(trained_rewards), health["collapse"])) if f]
    return {"verdict": "flagged" if flags else "healthy", "flags": flags}

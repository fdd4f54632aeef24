"""Seed-paired comparisons of training runs (docs/training.md, "Recipes"): each precision's final loss minus the
baseline's in the same seed (same initialisation, same batches), summarised over seeds as mean +- standard error.

    results = [json.loads(Path(d, "train.json").read_text()) for d in folders]   # experiments.train, one seed each
    rows = paired_differences(seed_losses(results))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Config fields that may differ between the runs being paired (everything else must match).
RUN_FIELDS = ("seed", "precision", "recipe")


def seed_losses(results: Sequence[dict], key: str = "final_val_loss") -> dict[int, dict[str, float]]:
    """{seed: {precision: loss}} from experiments.train results (train.json dicts). ValueError when two results share
    a seed, or when their settings differ in anything but the seed and the precisions trained (model, steps, data,
    batch order), since the differences would then not be paired."""
    out: dict[int, dict[str, float]] = {}
    reference = None
    for res in results:
        cfg = dict(res["config"])
        seed = int(cfg["seed"])
        setting = {k: v for k, v in cfg.items() if k not in RUN_FIELDS}
        setting["data"] = res.get("data", {}).get("sha256")
        if reference is None:
            reference = setting
        elif setting != reference:
            diff = sorted(k for k in set(setting) | set(reference) if setting.get(k) != reference.get(k))
            raise ValueError(f"runs differ in {diff}: paired differences need the same settings but the seed")
        if seed in out:
            raise ValueError(f"two results for seed {seed}")
        out[seed] = {p: float(r[key]) for p, r in res["runs"].items()}
    return out


def _stats(diffs: np.ndarray) -> dict:
    n = diffs.size
    se = float(diffs.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    mean = float(diffs.mean())
    return {
        "mean": mean,
        "se": se,
        "n": n,
        "below_zero": int(np.sum(diffs < 0)),
        "resolved": bool(n > 1 and abs(mean) > 2 * se),
    }


def paired_differences(losses: dict[int, dict[str, float]], baseline: str = "none") -> list[dict]:
    """Per precision other than `baseline`, in first-seen order: {"precision", "seeds", "diffs" (precision -
    baseline, per seed), "mean", "se" (sd / sqrt(n), nan for one seed), "n", "below_zero", "resolved" (|mean| >
    2 se)}, over the seeds that ran both. ValueError if no seed ran the baseline."""
    seeds = sorted(s for s, runs in losses.items() if baseline in runs)
    if not seeds:
        raise ValueError(f"no seed ran the baseline {baseline!r}")
    names = list(dict.fromkeys(p for s in seeds for p in losses[s] if p != baseline))
    rows = []
    for p in names:
        both = [s for s in seeds if p in losses[s]]
        diffs = np.array([losses[s][p] - losses[s][baseline] for s in both], np.float64)
        rows.append({"precision": p, "seeds": both, "diffs": diffs.tolist(), **_stats(diffs)})
    return rows


def all_pairs(losses: dict[int, dict[str, float]]) -> list[dict]:
    """paired_differences for every pair of precisions: rows of `precision` - `baseline` for each baseline that ran
    before it (first-seen order), each row also naming its "baseline"."""
    names = list(dict.fromkeys(p for runs in losses.values() for p in runs))
    rows = []
    for i, base in enumerate(names[:-1]):
        later = set(names[i + 1 :])
        for row in paired_differences(losses, base):
            if row["precision"] in later:
                rows.append({"baseline": base, **row})
    return rows


def loss_table(losses: dict[int, dict[str, float]]) -> list[dict]:
    """Per precision: {"precision", "seeds", "losses", "mean", "sd"} (sd over seeds; nan for one seed)."""
    names = list(dict.fromkeys(p for runs in losses.values() for p in runs))
    rows = []
    for p in names:
        seeds = sorted(s for s in losses if p in losses[s])
        v = np.array([losses[s][p] for s in seeds], np.float64)
        sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
        rows.append({"precision": p, "seeds": seeds, "losses": v.tolist(), "mean": float(v.mean()), "sd": sd})
    return rows

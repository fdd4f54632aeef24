"""Seed-paired differences of training runs (analysis.recipes) on hand-made results."""

import math

import pytest

from analysis import recipes


def result(seed, losses, steps=600):
    cfg = {"seed": seed, "precision": ["none"], "recipe": list(losses), "steps": steps, "dim": 128}
    runs = {p: {"final_val_loss": v} for p, v in {"none": 1.0 + 0.01 * seed, **losses}.items()}
    return {"config": cfg, "runs": runs, "data": {"sha256": "abc"}}


def test_paired_differences_by_seed():
    res = [result(0, {"a": 1.03, "b": 0.99}), result(1, {"a": 1.05, "b": 1.02}), result(2, {"a": 1.06})]
    losses = recipes.seed_losses(res)
    assert losses[1] == {"none": 1.01, "a": 1.05, "b": 1.02}
    a, b = recipes.paired_differences(losses)
    assert a["precision"] == "a" and a["seeds"] == [0, 1, 2]
    assert a["diffs"] == pytest.approx([0.03, 0.04, 0.04])
    assert a["mean"] == pytest.approx(0.11 / 3) and a["se"] == pytest.approx(0.005773503 / math.sqrt(3), rel=1e-6)
    assert a["resolved"] and a["below_zero"] == 0
    # b ran in seeds 0 and 1 only: -0.01 and +0.01
    assert b["seeds"] == [0, 1] and b["mean"] == pytest.approx(0.0) and not b["resolved"] and b["below_zero"] == 1
    pairs = {(r["precision"], r["baseline"]): r for r in recipes.all_pairs(losses)}
    assert set(pairs) == {("a", "none"), ("b", "none"), ("b", "a")}
    assert pairs[("b", "a")]["diffs"] == pytest.approx([-0.04, -0.03]) and pairs[("b", "a")]["seeds"] == [0, 1]
    rows = {r["precision"]: r for r in recipes.loss_table(losses)}
    assert rows["none"]["mean"] == pytest.approx(1.01) and rows["none"]["sd"] == pytest.approx(0.01)


def test_unpaired_runs_are_refused():
    with pytest.raises(ValueError, match="steps"):
        recipes.seed_losses([result(0, {"a": 1.0}), result(1, {"a": 1.0}, steps=300)])
    with pytest.raises(ValueError, match="seed 0"):
        recipes.seed_losses([result(0, {"a": 1.0}), result(0, {"b": 1.0})])
    with pytest.raises(ValueError, match="baseline"):
        recipes.paired_differences({0: {"a": 1.0}})
    one = recipes.paired_differences(recipes.seed_losses([result(0, {"a": 1.2})]))[0]
    assert one["n"] == 1 and math.isnan(one["se"]) and not one["resolved"]


def test_train_compare_writes_paired_json(tmp_path, capsys):
    import json

    from experiments import train

    folders = []
    for seed, a in ((0, 1.03), (1, 1.05)):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "train.json").write_text(json.dumps({**result(seed, {"a": a}), "machine": "test machine"}))
        folders.append(str(d))
    out = train.main(["--compare", ",".join(folders), "--out", str(tmp_path / "paired")])
    saved = json.loads((tmp_path / "paired" / "paired.json").read_text())
    assert saved["paired"][0]["diffs"] == pytest.approx([0.03, 0.04]) and saved["machines"] == ["test machine"]
    assert out["paired"][0]["n"] == 2 and "a - none" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train.main(["--compare", str(tmp_path / "missing"), "--out", str(tmp_path / "paired")])

"""Seeds in the results tables: runs of one recipe that differ only in their seed become mean ±
std (n); runs of two recipes are never averaged (tools/lib/results.py)."""
import json
import statistics

import pytest

from tools.lib.results import ablation, collect, table


@pytest.fixture(scope="module")
def seeded_probes(derived, demo_encoder, tmp_path_factory):
    """Three linear probes of the demo encoder, seeds 0-2, one with another lr, and one of the same
    recipe stopped after its first epoch of two (a run that died after a periodic evaluation, or
    --stop-after-epochs): their folders."""
    from cls.linprobe import main

    root = tmp_path_factory.mktemp("seeds")
    common = ["--data", str(derived / "crops"), "--encoder", str(demo_encoder[0]), "--img-size", "64",
              "--batch-size", "32", "--num-workers", "0", "--device", "cpu", "--epochs", "2", "--dtype", "fp32"]
    runs = {}
    for name, extra in (("s0", ["--seed", "0"]), ("s1", ["--seed", "1"]), ("s2", ["--seed", "2"]),
                        ("lr", ["--seed", "3", "--blr", "0.5"]), ("half", ["--seed", "4", "--stop-after-epochs", "1"])):
        main(common + ["--output-dir", str(root / name), *extra])
        runs[name] = root / name
    return runs


def top1(run) -> float:
    return json.loads((run / "cls_metrics.json").read_text())["top1"]


@pytest.mark.slow
def test_seeds_of_one_recipe_give_mean_and_std(seeded_probes):
    seeds = [seeded_probes[k] for k in ("s0", "s1", "s2")]
    values = [top1(r) for r in seeds]
    assert len(set(values)) > 1  # the seed changes the result: the spread below is not a zero by construction
    row = collect([("probe, 3 seeds", [str(r) for r in seeds])])[0]
    key = next(k for k in row.values if k[0] == "linprobe")
    assert row.problems == []
    assert row.values[key] == pytest.approx(statistics.fmean(values))
    std, n = row.spread[key]
    assert n == 3 and std == pytest.approx(statistics.stdev(values))
    cell = f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f} (3)"
    assert cell in table([row]) and cell.replace("±", r"$\pm$") in table([row], "latex")
    # the ablation shows each difference with its spread: here two rows of the same three runs
    single = collect([("probe, seed 0", [str(seeds[0])])])[0]
    text, _ = ablation([row, single, collect([("again", [str(r) for r in seeds])])[0]])
    assert f"Δ {values[0] - statistics.fmean(values):+.1f}" in text  # one run: a difference without a spread
    assert f"Δ +0.0 ± {(2 * std * std / 3) ** 0.5:.1f}" in text  # two seed means: sqrt(s1²/n1 + s2²/n2)


@pytest.mark.slow
def test_runs_of_two_recipes_are_not_averaged(seeded_probes, tmp_path):
    row = collect([("mixed", [str(seeded_probes["s0"]), str(seeded_probes["lr"])])])[0]
    assert not any(k[0] == "linprobe" for k in row.values)
    assert any("not seeds of one recipe, not averaged: they differ in blr (0.1 -> 0.5)" in p for p in row.problems)
    # the same run named twice is not two seeds
    twice = collect([("twice", [str(seeded_probes["s1"]), str(seeded_probes["s1"])])])[0]
    assert any("the same seed twice" in p for p in twice.problems)


@pytest.mark.slow
def test_a_half_trained_seed_is_not_averaged_with_finished_ones(seeded_probes):
    runs = [str(seeded_probes[k]) for k in ("s0", "s1", "half")]
    row = collect([("with a half-trained seed", runs)])[0]
    assert not any(k[0] == "linprobe" for k in row.values)
    problem = next(p for p in row.problems if "scored at different points" in p)
    assert "s0/cls_metrics.json at epoch 2" in problem and "half/cls_metrics.json at epoch 1" in problem, problem

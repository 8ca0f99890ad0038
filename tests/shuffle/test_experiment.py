import json
import math

import pytest

from longseq.shuffle import experiment as ex
from longseq.shuffle.experiment import ExperimentConfig, RunSpec


def small_cfg(**kw) -> ExperimentConfig:
    return ExperimentConfig(**{"depths": (2, 4), "sweep_depth": 2, "seeds": (0, 1, 2), **kw})


def fake_runner(effects: dict[str, float]):
    """A runner whose accuracies follow a known model: per seed a shared offset, per
    method an effect on test accuracy (twice as large at depth 4), p = 0.5 best."""

    def run(spec: RunSpec, cfg: ExperimentConfig) -> dict:
        base = 0.5 + 0.01 * spec.seed
        effect = effects.get(spec.method, 0.0) * (2 if spec.depth == 4 else 1)
        effect -= 0.02 * abs(spec.p - 0.5) if spec.method in ex.SHUFFLED else 0.0
        test = base + effect + 0.001 * ((spec.seed * 7) % 3)  # a little seed noise
        return {
            "key": spec.key,
            **spec.__dict__,
            "params": 10,
            "train_acc": 0.9,
            "val_acc": test,
            "test_acc": test,
            "gap": 0.9 - test,
            "cpu_seconds": 1.0,
        }

    return run


def test_grid_has_every_setting_once_per_seed():
    cfg = small_cfg()
    sweep = ex.sweep_runs(cfg)
    depth = ex.depth_runs(cfg, {"linear": 0.5, "constant": 0.25})
    keys = [s.key for s in sweep + depth]
    assert len(keys) == len(set(keys))
    # none + drop-path at 2 depths, 2 schedules x 3 p at the sweep depth; linear at depth 4
    assert len(sweep) == 3 * (2 * 2 + 2 * 3)
    assert {(s.depth, s.method, s.p) for s in depth} == {(4, "linear", 0.5)}
    both = small_cfg(depth_schedules=("linear", "constant"))
    assert len(ex.depth_runs(both, {"linear": 0.5, "constant": 0.25})) == 3 * 2
    assert ex.planned(cfg, 2, "constant") and not ex.planned(cfg, 4, "constant")


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="sweep_depth"):
        small_cfg(sweep_depth=3)
    with pytest.raises(ValueError, match="2 seeds"):
        small_cfg(seeds=(0,))
    with pytest.raises(ValueError, match="depth_schedules"):
        small_cfg(depth_schedules=("cosine",))
    with pytest.raises(ValueError, match="p_values"):
        small_cfg(p_values=(0.0, 0.5))


def test_best_p_is_the_highest_mean_validation_accuracy_ties_to_the_smaller():
    cfg = small_cfg(p_values=(0.25, 0.5, 0.75))
    results = {}
    for seed in cfg.seeds:
        for p, val in ((0.25, 0.6), (0.5, 0.7), (0.75, 0.7)):
            for method in ex.SHUFFLED:
                spec = RunSpec(2, method, p, seed)
                v = val if method == "linear" else 0.8 - val  # constant: 0.25 is best
                results[spec.key] = {"val_acc": v}
    assert ex.best_p(results, cfg) == {"linear": 0.5, "constant": 0.25}


def test_run_experiment_resumes_and_trains_the_depth_runs_at_the_chosen_p(tmp_path):
    cfg = small_cfg()
    calls = []
    runner = fake_runner({"linear": 0.05})

    def counting(spec, c):
        calls.append(spec.key)
        return runner(spec, c)

    res = ex.run_experiment(cfg, tmp_path, workers=0, log=lambda s: None, runner=counting)
    n = len(ex.sweep_runs(cfg)) + len(ex.depth_runs(cfg, {"linear": 0.5, "constant": 0.5}))
    assert len(calls) == len(res) == n
    assert all(json.loads((tmp_path / f"{k}.json").read_text())["key"] == k for k in res)
    assert RunSpec(4, "linear", 0.5, 0).key in res  # the best p (0.5) carried to depth 4
    (tmp_path / f"{RunSpec(4, 'linear', 0.5, 1).key}.json").unlink()  # an interrupted run
    calls.clear()
    ex.run_experiment(cfg, tmp_path, workers=0, log=lambda s: None, runner=counting)
    assert calls == [RunSpec(4, "linear", 0.5, 1).key]
    with pytest.raises(ValueError, match="other settings"):
        ex.run_experiment(small_cfg(dim=48), tmp_path, workers=0, runner=counting)


def test_summary_verdicts_follow_the_paired_intervals(tmp_path):
    cfg = small_cfg()
    res = ex.run_experiment(
        cfg, tmp_path, workers=0, log=lambda s: None, runner=fake_runner({"linear": 0.05})
    )
    summary = ex.summarize(res, cfg)
    assert summary["best_p"] == {"linear": 0.5, "constant": 0.5}
    claims = {c["claim"]: c for c in summary["claims"]}
    lin2 = claims[
        "the shuffle (linear, p=0.5) raises test accuracy on top of drop-path at 2 layers"
    ]
    assert lin2["verdict"] == "holds"
    assert math.isclose(lin2["estimate"]["mean"], 0.05, abs_tol=1e-9)
    grow = claims[
        "the shuffle's gain (linear minus drop-path, test accuracy) grows with depth (4 layers minus 2)"
    ]
    assert grow["verdict"] == "holds" and math.isclose(grow["estimate"]["mean"], 0.05, abs_tol=1e-9)
    con = claims[
        "the shuffle (constant, p=0.5) raises test accuracy on top of drop-path at 2 layers"
    ]
    assert con["verdict"] == "not shown"  # no effect, seed noise only
    assert (
        claims["the linear schedule beats the constant one, each at its best p, at 2 layers"][
            "verdict"
        ]
        == "holds"
    )
    assert not any("constant" in c and "4 layers" in c for c in claims)  # not in the grid
    md = ex.to_markdown(summary)
    assert "| 2 | linear (p 0.5) |" in md and "+5.0 [" in md
    ex.write_summary(summary, tmp_path / "out" / "exp")
    assert json.loads((tmp_path / "out" / "exp.json").read_text())["best_p"]["linear"] == 0.5


def test_quick_experiment_trains_real_models(tmp_path):
    """The whole pipeline on tiny Vims: every run trains, results and a plot are written."""
    from longseq.shuffle.plots import depth_plot

    cfg = ExperimentConfig.quick(n_test=64, p_values=(0.5,))
    res = ex.run_experiment(cfg, tmp_path, workers=0, log=lambda s: None)
    assert len(res) == len(ex.sweep_runs(cfg)) + len(ex.depth_runs(cfg, {"linear": 0.5}))
    assert all(0.0 <= r["test_acc"] <= 1.0 and r["cpu_seconds"] > 0 for r in res.values())
    summary = ex.summarize(res, cfg)
    assert depth_plot(summary, tmp_path / "depth.png").stat().st_size > 1000


def test_gate_fails_when_the_unregularized_model_does_not_overfit(tmp_path):
    cfg = small_cfg()
    res = ex.run_experiment(cfg, tmp_path, workers=0, log=lambda s: None, runner=fake_runner({}))
    gates = ex.summarize(res, cfg)["gates"]
    assert all(g["passed"] and g["fits_training_set"] for g in gates)  # 90% train, gap 40
    for r in res.values():
        r["train_acc"], r["gap"] = r["test_acc"] + 0.01, 0.01
    gates = ex.summarize(res, cfg)["gates"]
    assert [g["depth"] for g in gates] == [2, 4] and not any(g["passed"] for g in gates)
    assert not any(g["fits_training_set"] for g in gates)  # about 51% train
    assert "FAILED" in ex.to_markdown(ex.summarize(res, cfg))

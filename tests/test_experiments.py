"""experiments/aggregate.py and experiments/run_all.py on fake run folders (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import aggregate  # noqa: E402
import run_all  # noqa: E402

TABLE = {
    "title": "fake table",
    "baseline": "base",
    "rows": [
        {"label": "baseline", "run": "base", "paper": 50.0},
        {"label": "method", "run": "method", "paper": 51.0},
    ],
}


def write_training_run(
    root: Path, name: str, maps: list[float], *, status: str = "finished", aps=(0.5, 1.0)
) -> Path:
    """A run folder as lsdet.train writes it: summary.json with one evaluation per epoch and
    the last evaluation's per_class.csv."""
    run_dir = root / name
    history = []
    for epoch, value in enumerate(maps, start=1):
        tag = f"main_epoch{epoch}"
        history.append(
            {
                "phase": "main",
                "epoch": epoch,
                "map": value,
                "map_rare": value / 2,
                "map_common": value,
                "map_frequent": min(1.0, value * 1.5),
                "eval_dir": f"eval/{tag}",
            }
        )
        eval_dir = run_dir / "eval" / tag
        eval_dir.mkdir(parents=True)
        pd.DataFrame(
            {"mid": ["/a", "/b"], "name": ["A", "B"], "train_images": [2, 200], "ap": list(aps)}
        ).to_csv(eval_dir / "per_class.csv", index=False)
    summary = {"status": status, "global_step": 10, "history": history, "run_dir": str(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_collect_runs_reads_last_evaluation_and_skips_unfinished(tmp_path):
    write_training_run(tmp_path, "base_s0", [0.2, 0.4])
    write_training_run(tmp_path, "base_s1", [0.1, 0.3], status="interrupted")
    (tmp_path / "logs").mkdir()  # not a run folder
    runs, unfinished = aggregate.collect_runs(tmp_path)
    assert list(runs["run"]) == ["base"] and list(runs["seed"]) == [0]
    assert runs["map"].iloc[0] == pytest.approx(0.4)
    assert runs["map_rare"].iloc[0] == pytest.approx(0.2)
    assert [h["map"] for h in runs["history"].iloc[0]] == [0.2, 0.4]
    assert runs["per_class_csv"].iloc[0].endswith("eval/main_epoch2/per_class.csv")
    assert unfinished == ["base_s1"]


def test_collect_runs_reads_evaluation_only_runs(tmp_path):
    run_dir = tmp_path / "rescored_s3"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"map": 0.25}))
    pd.DataFrame({"bucket": ["rare", "frequent"], "mean_ap": [0.1, 0.7]}).to_csv(
        run_dir / "frequency_buckets.csv", index=False
    )
    runs, _ = aggregate.collect_runs(tmp_path)
    row = runs.iloc[0]
    assert (row["run"], row["seed"]) == ("rescored", 3)
    assert (row["map"], row["map_rare"], row["map_frequent"]) == (0.25, 0.1, 0.7)
    assert np.isnan(row["map_common"])


def test_summarize_table_mean_std_and_paired_delta(tmp_path):
    # baseline mAP 0.40, 0.50, 0.60; method 0.45, 0.53, 0.70 (seed 2 of the method missing
    # from the baseline would not be paired: here all three pair up).
    for seed, value in enumerate([0.40, 0.50, 0.60]):
        write_training_run(tmp_path, f"base_s{seed}", [value])
    for seed, value in enumerate([0.45, 0.53, 0.70]):
        write_training_run(tmp_path, f"method_s{seed}", [value])
    runs, _ = aggregate.collect_runs(tmp_path)
    summary = aggregate.summarize_table(runs, TABLE).set_index("run")
    assert summary.loc["base", "map_mean"] == pytest.approx(50.0)
    assert summary.loc["base", "map_std"] == pytest.approx(10.0)  # sample std of 40, 50, 60
    assert summary.loc["method", "map_mean"] == pytest.approx(56.0)
    # paired differences 5, 3, 10 -> mean 6, sample std sqrt(((-1)^2 + 3^2 + 4^2) / 2)
    assert summary.loc["method", "delta_mean"] == pytest.approx(6.0)
    assert summary.loc["method", "delta_std"] == pytest.approx(np.sqrt(13.0))
    assert summary.loc["method", "seeds"] == 3 and summary.loc["method", "delta_seeds"] == 3
    assert summary.loc["base", "delta_mean"] == pytest.approx(0.0)


def test_summarize_table_pairs_only_common_seeds_and_handles_missing_rows(tmp_path):
    write_training_run(tmp_path, "base_s0", [0.40])
    write_training_run(tmp_path, "method_s0", [0.50])
    write_training_run(tmp_path, "method_s1", [0.90])  # no baseline for seed 1
    runs, _ = aggregate.collect_runs(tmp_path)
    table = {**TABLE, "rows": TABLE["rows"] + [{"label": "absent", "run": "nothing"}]}
    summary = aggregate.summarize_table(runs, table).set_index("run")
    assert summary.loc["method", "map_mean"] == pytest.approx(70.0)
    assert summary.loc["method", "delta_mean"] == pytest.approx(10.0)
    assert summary.loc["method", "delta_seeds"] == 1 and np.isnan(
        summary.loc["method", "delta_std"]
    )
    assert summary.loc["nothing", "seeds"] == 0 and np.isnan(summary.loc["nothing", "map_mean"])
    text = aggregate.markdown_table(aggregate.summarize_table(runs, table), table)
    assert "| method | 2 | 70.0 ± 28.3 | 10.00 |" in text
    assert "| absent | 0 | n/a |" in text
    assert "(baseline)" in text


def test_curves_mean_and_std_per_epoch(tmp_path):
    write_training_run(tmp_path, "base_s0", [0.2, 0.4])
    write_training_run(tmp_path, "base_s1", [0.4, 0.6])
    runs, _ = aggregate.collect_runs(tmp_path)
    c = aggregate.curves(runs, "base")
    assert list(c["epoch"]) == [1, 2]
    assert list(c["mean"]) == pytest.approx([30.0, 50.0])
    assert list(c["std"]) == pytest.approx([np.sqrt(200.0), np.sqrt(200.0)])
    assert aggregate.curves(runs, "nothing").empty


def test_per_class_ap_averages_seeds(tmp_path):
    write_training_run(tmp_path, "base_s0", [0.3], aps=(0.2, 0.8))
    write_training_run(tmp_path, "base_s1", [0.3], aps=(0.4, 1.0))
    runs, _ = aggregate.collect_runs(tmp_path)
    t = aggregate.per_class_ap(runs, "base").set_index("mid")
    assert t.loc["/a", "ap"] == pytest.approx(30.0) and t.loc["/b", "ap"] == pytest.approx(90.0)
    assert t.loc["/a", "seeds"] == 2 and t.loc["/b", "train_images"] == 200


def test_aggregate_writes_tables_figures_and_missing(tmp_path):
    runs_dir, out = tmp_path / "runs", tmp_path / "out"
    for seed, value in enumerate([0.4, 0.5]):
        write_training_run(runs_dir, f"base_s{seed}", [value / 2, value])
    write_training_run(runs_dir, "method_s0", [0.3, 0.6])
    sweeps = {
        "seeds": [0, 1],
        "runs": {"base": {}, "method": {}},
        "tables": {"t": TABLE},
        "figure4": [{"label": "base", "run": "base"}, {"label": "method", "run": "method"}],
        "figure5": [{"label": "base", "run": "base"}],
    }
    text = aggregate.aggregate(runs_dir, out, sweeps)
    assert "missing: ['method_s1']" in text
    table = pd.read_csv(out / "t.csv").set_index("run")
    assert table.loc["base", "map_mean"] == pytest.approx(45.0)
    assert table.loc["method", "delta_mean"] == pytest.approx(20.0)
    for name in ["t.md", "figure4_map_per_lambda.png", "figure5_ap_vs_frequency.png"]:
        assert (out / name).stat().st_size > 0
    bins = pd.read_csv(out / "figure5_ap_by_frequency_bin.csv")
    assert bins["classes"].sum() == 2  # each class in exactly one bin
    assert sorted(bins["mean_ap"]) == pytest.approx([50.0, 100.0])


def test_build_tasks_orders_by_seed_and_adds_rescoring(tmp_path):
    sweeps = {
        "common_overrides": ["logger=disabled"],
        "sizes": {"small": {"data": {"root": "data/x", "generate.num_train_images": 10}}},
        "runs": {
            "a": {"experiment": "t1_softmax"},
            "b": {"experiment": "t3", "overrides": ["sampler.lam=0.3"]},
        },
        "rescoring": {
            "a_cs": {"from": "a", "checkpoint": "phase_main.pt", "scoring": "concurrent_softmax"}
        },
    }
    tasks = run_all.build_tasks(sweeps, "small", tmp_path, [0, 1], python="py", threads=1)
    assert [t.name for t in tasks] == ["a_s0", "a_cs_s0", "b_s0", "a_s1", "a_cs_s1", "b_s1"]
    b0 = tasks[2].command
    assert b0[:4] == ["py", "-m", "lsdet.train", "+experiment=t3"]
    for arg in [
        "sampler.lam=0.3",
        "data.root=data/x",
        "data.generate.num_train_images=10",
        "logger=disabled",
        "train.threads=1",
        "seed=0",
        f"hydra.run.dir={tmp_path / 'b_s0'}",
    ]:
        assert arg in b0
    rescore = tasks[1]
    assert rescore.depends_on == ["a_s0"]
    assert rescore.command[:3] == ["py", "-m", "lsdet.evaluate"]
    checkpoint = tmp_path / "a_s0" / "checkpoints" / "phase_main.pt"
    for arg in [
        f"checkpoint={checkpoint}",
        "scoring=concurrent_softmax",
        "data.root=data/x",
        f"output_dir={tmp_path / 'a_cs_s0'}",
    ]:
        assert arg in rescore.command
    with pytest.raises(ValueError, match="no size 'huge'"):
        run_all.build_tasks(sweeps, "huge", tmp_path, [0])


def test_run_tasks_respects_dependencies_and_skips_after_failure(tmp_path):
    def task(name: str, code: str, deps=()) -> run_all.Task:
        run_dir = tmp_path / name
        write = f"import pathlib; p=pathlib.Path({str(run_dir)!r}); p.mkdir(); "
        write += "(p / 'metrics.json').write_text('{}')"
        return run_all.Task(name, [sys.executable, "-c", write + code], run_dir, list(deps))

    tasks = [
        task("ok_s0", ""),
        task("bad_s0", "; raise SystemExit(3)"),
        task("after_ok_s0", "", ["ok_s0"]),
        task("after_bad_s0", "", ["bad_s0"]),
    ]
    failed = run_all.run_tasks(tasks, tmp_path / "logs", jobs=2, threads=1)
    assert sorted(failed) == ["after_bad_s0", "bad_s0"]
    assert (tmp_path / "after_ok_s0" / "metrics.json").is_file()
    assert not (tmp_path / "after_bad_s0").exists()
    assert "raise SystemExit(3)" in (tmp_path / "logs" / "bad_s0.log").read_text()
    # a second call finds everything done except the failures and their dependants
    assert run_all.run_tasks(tasks[:1] + tasks[2:3], tmp_path / "logs", jobs=1, threads=None) == []


def test_dotted_overrides_of_nested_settings():
    settings = {"root": "data/x", "generate": {"seed": 0, "size": [0.1, 0.5], "noise": {"a": 0.08}}}
    assert run_all.dotted(settings, "data.") == [
        "data.root=data/x",
        "data.generate.seed=0",
        "data.generate.size=[0.1,0.5]",
        "data.generate.noise.a=0.08",
    ]


def test_sweeps_yaml_pins_every_generator_setting_of_the_data_config():
    from omegaconf import OmegaConf

    sweeps = run_all.load_sweeps()
    defaults = OmegaConf.load(EXPERIMENTS.parent / "conf" / "data" / "synth.yaml")
    for size, spec in sweeps["sizes"].items():
        assert set(spec["data"]["generate"]) == set(defaults.generate), size
    assert sweeps["sizes"]["small"]["data"]["generate"]["num_train_images"] == 1000
    table_runs = {r["run"] for t in sweeps["tables"].values() for r in t["rows"]}
    assert table_runs <= set(sweeps["runs"]) | set(sweeps["rescoring"])


def test_align_rescored_buckets_uses_the_training_runs_buckets(tmp_path):
    write_training_run(tmp_path, "base_s0", [0.4], aps=(0.2, 0.8))  # /a rare, /b frequent
    pd.DataFrame(
        {"mid": ["/a", "/b"], "train_images": [2, 200], "bucket": ["rare", "frequent"]}
    ).to_csv(tmp_path / "base_s0" / "eval" / "main_epoch1" / "per_class.csv", index=False)
    per_class = tmp_path / "base_s0" / "eval" / "main_epoch1" / "per_class.csv"
    pd.read_csv(per_class).assign(ap=[0.2, 0.8]).to_csv(per_class, index=False)
    rescored = tmp_path / "rescored_s0"
    rescored.mkdir()
    (rescored / "metrics.json").write_text(json.dumps({"map": 0.5}))
    # the evaluator's own buckets (here: both "common") must be replaced by the training run's
    pd.DataFrame({"bucket": ["common"], "mean_ap": [0.5]}).to_csv(
        rescored / "frequency_buckets.csv", index=False
    )
    pd.DataFrame({"mid": ["/a", "/b"], "ap": [0.3, 0.7], "bucket": ["common", "common"]}).to_csv(
        rescored / "per_class.csv", index=False
    )
    (tmp_path / "orphan_s1").mkdir()
    (tmp_path / "orphan_s1" / "metrics.json").write_text(json.dumps({"map": 0.1}))
    runs, _ = aggregate.collect_runs(tmp_path)
    rescoring = {"rescored": {"from": "base"}, "orphan": {"from": "base"}}
    aligned = aggregate.align_rescored_buckets(runs, rescoring).set_index("run")
    assert aligned.loc["rescored", "map_rare"] == pytest.approx(0.3)
    assert aligned.loc["rescored", "map_frequent"] == pytest.approx(0.7)
    assert np.isnan(aligned.loc["rescored", "map_common"])
    assert aligned.loc["rescored", "map"] == pytest.approx(0.5)
    assert np.isnan(aligned.loc["orphan", "map_rare"])  # seed 1 has no training run
    assert aligned.loc["base", "map_rare"] == pytest.approx(0.2)  # training runs unchanged


def test_leaf_parent_table_splits_the_classes(tmp_path):
    write_training_run(tmp_path, "base_s0", [0.3], aps=(0.2, 0.8))  # /a leaf, /b parent
    write_training_run(tmp_path, "base_s1", [0.3], aps=(0.4, 0.6))
    runs, _ = aggregate.collect_runs(tmp_path)
    table = aggregate.leaf_parent_table(runs, {"/a"}, {"base": "baseline", "none": "absent"})
    base = table.set_index("run").loc["base"]
    assert base["leaf_map_mean"] == pytest.approx(30.0)
    assert base["parent_map_mean"] == pytest.approx(70.0)
    assert base["leaf_map_std"] == pytest.approx(np.sqrt(200.0))
    assert table.set_index("run").loc["none", "seeds"] == 0

"""experiments/run_all.py and experiments/aggregate.py on fake run and result folders (no
training, no data)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import aggregate  # noqa: E402
import run_all  # noqa: E402

SIZE = {
    "data": {
        "root": "data/x",
        "image_size": 64,
        "generate": {"seed": 0, "num_train_images": 10, "val_label_noise": "as_train"},
    },
    "iterations_per_epoch": 3,
    "schedules": {
        "single": ["schedule.phases.main.epochs=2"],
        "hybrid": ["schedule.phases.pretrain.epochs=1", "schedule.phases.finetune.epochs=1"],
    },
}
SWEEPS = {
    "seeds": [0, 1],
    "common_overrides": ["logger=disabled", "train.resume=auto"],
    "sizes": {"tiny": SIZE},
    "runs": {
        "base": {"experiment": "t1_softmax"},
        "hyb": {
            "experiment": "t4_hybrid_softmax",
            "schedule": "hybrid",
            "checkpoint": "phase_finetune.pt",
        },
    },  # fmt: skip
    "rescoring": {
        "base_cs": {
            "from": "base",
            "scoring": "concurrent_softmax",
            "parent_scores": "max_descendants",
        }
    },  # fmt: skip
    "tables": {
        "t": {
            "title": "T: fake",
            "baseline": "base",
            "validation": ["as_train", "clean"],
            "rows": [
                {"label": "baseline", "run": "base", "paper": 50.0},
                {"label": "rescored", "run": "base_cs", "paper": 51.0},
            ],
        },
        "h": {
            "title": "H: fake",
            "baseline": "hyb",
            "validation": ["as_train"],
            "rows": [
                {"label": "hybrid", "run": "hyb", "paper": 60.0},
                {"label": "single", "run": "base", "paper": None, "expected": "lower"},
            ],
        },
    },
    "figure4": [{"label": "base", "run": "base"}],
    "figure5": [{"label": "base", "run": "base"}],
    "statistics": {"alpha": 0.05, "equivalence_margin": 0.5, "power": 0.8},
    "claims": [
        {
            "claim": "rescoring helps",
            "run": "base_cs",
            "against": "base",
            "paper": [51.0, 50.0],
            "registered": "2026-01-01",
        },
        {
            "claim": "rare lower",
            "run": "base_cs",
            "against": "base",
            "metric": "map_rare",
            "expected": "lower",
        },
    ],  # fmt: skip
}


def tasks_of(tmp_path: Path, seeds=(0,)) -> dict[str, run_all.Task]:
    tasks = run_all.build_tasks(
        SWEEPS, "tiny", tmp_path / "runs", tmp_path / "results", list(seeds), python="py"
    )
    return {t.name: t for t in tasks}


# --------------------------------------------------------------------------- run_all
def test_build_tasks_order_commands_and_result_folders(tmp_path):
    tasks = run_all.build_tasks(
        SWEEPS, "tiny", tmp_path / "runs", tmp_path / "res", [0, 1], python="py", threads=1
    )
    assert [t.name for t in tasks][:5] == [
        "base_s0",
        "base_s0_val-clean",
        "base_cs_s0",
        "base_cs_s0_val-clean",
        "hyb_s0",
    ]
    assert [t.name for t in tasks][5] == "base_s1" and len(tasks) == 10
    by_name = {t.name: t for t in tasks}
    train = by_name["base_s0"].command
    assert train[:4] == ["py", "-m", "lsdet.train", "+experiment=t1_softmax"]
    for arg in [
        "schedule.phases.main.epochs=2",
        "train.max_iters_per_epoch=3",  # every run trains the same iterations per epoch
        "data.root=data/x",
        "data.generate.num_train_images=10",
        "train.resume=auto",
        "train.threads=1",
        "seed=0",
        f"hydra.run.dir={tmp_path / 'runs' / 'base_s0'}",
    ]:
        assert arg in train
    assert "schedule.phases.finetune.epochs=1" in by_name["hyb_s0"].command
    assert "schedule.phases.main.epochs=2" not in by_name["hyb_s0"].command
    assert by_name["base_s0"].results_dir == tmp_path / "res/runs/base/val-as_train/seed0"
    # the re-scoring: the training run's final checkpoint, its scoring, own variant's data
    rescore = by_name["base_cs_s0"]
    assert rescore.kind == "evaluate" and rescore.depends_on == ["base_s0"]
    assert rescore.checkpoint == tmp_path / "runs/base_s0/checkpoints/phase_main.pt"
    for arg in ["scoring=concurrent_softmax", "parent_scores=max_descendants", "data.root=data/x"]:
        assert arg in rescore.command
    # the clean variant: its own data root, the scoring as trained (no scoring override)
    clean = by_name["base_s0_val-clean"]
    assert "data.root=data/x_val-clean" in clean.command
    assert "data.generate.val_label_noise=clean" in clean.command
    assert not any(a.startswith("scoring=") for a in clean.command)
    assert clean.results_dir == tmp_path / "res/runs/base/val-clean/seed0"
    rescore_clean = by_name["base_cs_s0_val-clean"]
    assert "scoring=concurrent_softmax" in rescore_clean.command
    assert "data.root=data/x_val-clean" in rescore_clean.command
    assert by_name["hyb_s0"].results_dir.parent.name == "val-as_train"
    assert "hyb_s0_val-clean" not in by_name  # table h is on as_train only
    with pytest.raises(run_all.SweepError, match="no size 'huge'"):
        run_all.build_tasks(SWEEPS, "huge", tmp_path, tmp_path, [0])


def test_task_settings_leave_out_where_and_how_fast_it_runs(tmp_path):
    a = tasks_of(tmp_path / "a")["base_s0"]
    b = run_all.build_tasks(
        SWEEPS, "tiny", tmp_path / "b", tmp_path / "r", [0], python="other", threads=4
    )[0]
    assert a.settings == b.settings  # other folders, python and threads: same result
    assert a.settings[0] == "lsdet.train" and "seed=0" in a.settings
    assert not any(s.startswith(("hydra.", "train.threads", "train.resume")) for s in a.settings)


def test_variant_data_and_table_variants():
    own = run_all.variant_data(SIZE, "as_train")
    assert own == SIZE["data"] and own is not SIZE["data"]
    clean = run_all.variant_data(SIZE, "clean")
    assert clean["root"] == "data/x_val-clean"
    assert clean["generate"]["val_label_noise"] == "clean"
    assert SIZE["data"]["generate"]["val_label_noise"] == "as_train"  # not modified
    assert run_all.table_variants(SWEEPS) == {
        "base": ["as_train", "clean"],
        "base_cs": ["as_train", "clean"],
        "hyb": ["as_train"],
    }


def test_dotted_overrides_of_nested_settings():
    settings = {"root": "data/x", "generate": {"seed": 0, "size": [0.1, 0.5], "noise": {"a": 0.08}}}
    assert run_all.dotted(settings, "data.") == [
        "data.root=data/x",
        "data.generate.seed=0",
        "data.generate.size=[0.1,0.5]",
        "data.generate.noise.a=0.08",
    ]


def test_pinned_differences_names_each_setting():
    size = {
        "data": {"generate": {"seed": 0, "n": 5, "noise": {"a": 0.1}, "old": 1}},
        "differs_from_data_config": ["n"],
    }
    defaults = {"seed": 1, "n": 9, "noise": {"a": 0.1, "b": 0.2}}
    assert run_all.pinned_differences(size, defaults) == [
        "generate.noise.b: not pinned (data config: 0.2)",
        "generate.old: pinned 1, not in the data config",
        "generate.seed: pinned 0, data config 1",
    ]
    assert run_all.pinned_differences(size, {"seed": 0, "noise": {"a": 0.1}, "old": 1}) == []


def test_sweeps_yaml_pins_every_generator_setting_of_the_data_config():
    """The sizes must be re-synced (sweeps.yaml) when conf/data/synth.yaml's generator
    settings change: the differences are listed here."""
    sweeps = run_all.load_sweeps()
    defaults = yaml.safe_load(run_all.DATA_CONFIG.read_text())["generate"]
    for size, spec in sweeps["sizes"].items():
        assert run_all.pinned_differences(spec, defaults) == [], size


def test_sweeps_yaml_is_consistent():
    sweeps = run_all.load_sweeps()
    experiments = {p.stem for p in (EXPERIMENTS.parent / "conf" / "experiment").glob("*.yaml")}
    for run_id, spec in sweeps["runs"].items():
        assert spec["experiment"] in experiments, run_id
    rows = {r["run"] for t in sweeps["tables"].values() for r in t["rows"]}
    assert rows <= set(sweeps["runs"]) | set(sweeps["rescoring"])
    for claim in sweeps["claims"]:
        assert {claim["run"], claim["against"]} <= set(sweeps["runs"]) | set(sweeps["rescoring"])
        assert len(claim.get("paper") or []) == 2 or claim["expected"] in {"higher", "lower"}
    for table in sweeps["tables"].values():
        assert table["baseline"] in {r["run"] for r in table["rows"]}
        assert set(table["validation"]) <= {"as_train", "clean"}
    for size in sweeps["sizes"].values():
        tasks = run_all.build_tasks(sweeps, next(iter(sweeps["sizes"])), Path("o"), Path("r"), [0])
        assert len({t.name for t in tasks}) == len(tasks)
        # Table 4: the hybrid's phases add up to the single-phase epochs (same iterations)
        single = _epochs(size["schedules"]["single"], "main")
        hybrid = _epochs(size["schedules"]["hybrid"], "pretrain")
        hybrid += _epochs(size["schedules"]["hybrid"], "finetune")
        assert single == hybrid
        n = size["data"]["generate"]["num_train_images"]
        assert size["iterations_per_epoch"] == -(-n // 16)  # batch 16 (synth_base)


def _epochs(overrides: list[str], phase: str) -> int:
    key = f"schedule.phases.{phase}.epochs="
    return int(next(o for o in overrides if o.startswith(key)).split("=")[1])


def fake_training_output(task: run_all.Task, maps: list[float], status="finished") -> None:
    """A training run folder as lsdet.train writes it, with a checkpoint and an image."""
    task.run_dir.mkdir(parents=True, exist_ok=True)
    (task.run_dir / "task.json").write_text(json.dumps({"settings": task.settings}))
    history = []
    for epoch, value in enumerate(maps, start=1):
        eval_dir = task.run_dir / "eval" / f"main_epoch{epoch}"
        eval_dir.mkdir(parents=True)
        pd.DataFrame(
            {
                "mid": ["/a", "/b"],
                "name": ["A", "B"],
                "train_images": [2, 200],
                "bucket": ["rare", "frequent"],
                "ap": [value / 2, value],
            }
        ).to_csv(eval_dir / "per_class.csv", index=False)
        (eval_dir / "metrics.json").write_text(json.dumps({"map": value}))
        (eval_dir / "ap_vs_frequency.png").write_bytes(b"png")
        history.append(
            {
                "phase": "main",
                "epoch": epoch,
                "global_step": 3 * epoch,
                "map": value,
                "map_rare": value / 2,
                "map_common": np.nan,
                "map_frequent": value,
                "eval_dir": f"eval/main_epoch{epoch}",
            }
        )
    (task.run_dir / "config.yaml").write_text("seed: 0\n")
    summary = {"status": status, "global_step": 3 * len(maps), "history": history}
    summary["run_dir"] = str(task.run_dir.resolve())  # the trainer records an absolute path
    (task.run_dir / "summary.json").write_text(json.dumps(summary))
    (task.run_dir / "checkpoints").mkdir()
    (task.run_dir / "checkpoints" / "phase_main.pt").write_bytes(b"weights")
    (task.run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")


def fake_evaluation_output(task: run_all.Task, value: float, aps=(0.3, 0.7)) -> None:
    task.run_dir.mkdir(parents=True, exist_ok=True)
    (task.run_dir / "task.json").write_text(json.dumps({"settings": task.settings}))
    (task.run_dir / "metrics.json").write_text(json.dumps({"map": value}))
    pd.DataFrame({"bucket": ["common"], "mean_ap": [value]}).to_csv(
        task.run_dir / "frequency_buckets.csv", index=False
    )
    pd.DataFrame({"mid": ["/a", "/b"], "ap": list(aps), "bucket": ["common", "common"]}).to_csv(
        task.run_dir / "per_class.csv", index=False
    )


def test_copy_results_keeps_small_files_only_and_writes_the_marker_last(tmp_path):
    task = tasks_of(tmp_path)["base_s0"]
    fake_training_output(task, [0.2, 0.4])
    assert run_all.recorded_result(task) is None
    run_all.copy_results(task, data_hash="abc", wall_seconds=61.23)
    copied = sorted(str(p.relative_to(task.results_dir)) for p in task.results_dir.rglob("*"))
    assert "checkpoints" not in " ".join(copied) and ".pt" not in " ".join(copied)
    assert not any(name.endswith(".png") for name in copied)
    for name in ["config.yaml", "summary.json", "run.json", "eval/main_epoch2/per_class.csv"]:
        assert name in copied
    record = run_all.recorded_result(task)
    assert record["settings"] == task.settings and record["data_settings_hash"] == "abc"
    assert record["wall_seconds"] == 61.2 and record["kind"] == "train"
    assert record["git_commit"] is None  # task.json from before the runner recorded it
    assert "eval/main_epoch1/metrics.json" in record["files"]
    # the committed copy names no path of this machine
    summary = json.loads((task.results_dir / "summary.json").read_text())
    assert summary["run_dir"] == os.path.relpath(task.run_dir.resolve(), run_all.REPO)
    assert not Path(summary["run_dir"]).is_absolute() and summary["history"]


def test_copy_results_records_the_start_and_copies_the_concurrent_rates(tmp_path):
    task = tasks_of(tmp_path)["base_s0"]
    fake_training_output(task, [0.2, 0.4])
    started = {"settings": task.settings, "started_at": "2026-12-06T10:00:00"}
    (task.run_dir / "task.json").write_text(json.dumps(started))
    rates = "class_i_mid,class_i_name,class_j_mid,class_j_name,rate\n/a,A,/b,B,0.25\n"
    (task.run_dir / "concurrent_rates.csv").write_text(rates)
    run_all.copy_results(task, data_hash=None, wall_seconds=5.0)
    record = run_all.recorded_result(task)
    assert record["started_at"] == "2026-12-06T10:00:00"
    assert (task.results_dir / "concurrent_rates.csv").read_text() == rates
    assert "concurrent_rates.csv" in record["files"]


def test_plan_skips_collects_runs_and_handles_missing_checkpoints(tmp_path):
    tasks = tasks_of(tmp_path)
    ordered = list(tasks.values())
    assert set(run_all.plan(ordered).values()) == {"run"}
    base = tasks["base_s0"]
    # finished in its run folder but not copied: collect, the evaluations can run
    fake_training_output(base, [0.2, 0.4])
    actions = run_all.plan(ordered)
    assert actions["base_s0"] == "collect" and actions["base_cs_s0"] == "run"
    # a run folder of other settings is not taken for this task's
    (base.run_dir / "task.json").write_text(json.dumps({"settings": ["other"]}))
    assert run_all.plan(ordered)["base_s0"] == "run"
    (base.run_dir / "task.json").write_text(json.dumps({"settings": base.settings}))
    run_all.copy_results(base, data_hash=None, wall_seconds=None)
    assert run_all.plan(ordered)["base_s0"] == "done"
    # the checkpoint is gone, the results are committed: skip the evaluations and say so ...
    (base.run_dir / "checkpoints" / "phase_main.pt").unlink()
    actions = run_all.plan(ordered)
    assert actions["base_cs_s0"] == "no checkpoint" and actions["base_s0_val-clean"] == (
        "no checkpoint"
    )
    assert actions["base_s0"] == "done"
    # ... or train that seed again for the checkpoint only
    actions = run_all.plan(ordered, retrain_missing_checkpoints=True)
    assert actions["base_s0"] == "retrain" and actions["base_cs_s0"] == "run"
    # evaluations already in the repository need no checkpoint
    fake_evaluation_output(tasks["base_cs_s0"], 0.5)
    run_all.copy_results(tasks["base_cs_s0"], data_hash=None, wall_seconds=None)
    assert run_all.plan(ordered)["base_cs_s0"] == "done"
    # an incomplete copy (no run.json) is not done: copied again from the run folder
    (tasks["base_cs_s0"].results_dir / "run.json").unlink()
    assert run_all.plan(ordered)["base_cs_s0"] == "collect"


def test_check_recorded_refuses_results_of_other_settings_or_data(tmp_path):
    task = tasks_of(tmp_path)["base_s0"]
    run_all.check_recorded(task, "h1")  # nothing recorded: fine
    fake_training_output(task, [0.4])
    run_all.copy_results(task, data_hash="h1", wall_seconds=1.0)
    run_all.check_recorded(task, "h1")
    run_all.check_recorded(task, None)  # data not generated (dry run): not checked
    with pytest.raises(run_all.SweepError, match="other data .*h1.*h2"):
        run_all.check_recorded(task, "h2")
    changed = run_all.build_tasks(
        SWEEPS, "tiny", tmp_path / "runs", tmp_path / "results", [0], extra=["optim.lr=0.1"]
    )[0]
    with pytest.raises(run_all.SweepError, match=r"other settings .*optim.lr=0.1"):
        run_all.check_recorded(changed, "h1")


def _script_task(tmp_path: Path, name: str, code: str, deps=(), kind="evaluate") -> run_all.Task:
    run_dir = tmp_path / "runs" / name
    write = f"import pathlib; p=pathlib.Path({str(run_dir)!r}); "
    write += "(p / 'metrics.json').write_text('{\"map\": 0.5}'); "
    write += "(p / 'checkpoints').mkdir(); (p / 'checkpoints' / 'x.pt').write_text('w')"
    command = [sys.executable, "-c", write + code]
    results_dir = tmp_path / "results" / name
    return run_all.Task(
        name, kind, name, 0, "as_train", command, run_dir, results_dir, "data/none", list(deps)
    )


def test_run_tasks_copies_results_skips_done_and_dependants_of_failures(tmp_path, monkeypatch):
    # each call gives another commit: the record must keep the one of the task's start
    commits = (f"commit-{k}" for k in range(100))
    monkeypatch.setattr(run_all, "_git_commit", lambda: next(commits))
    tasks = [
        _script_task(tmp_path, "ok_s0", ""),
        _script_task(tmp_path, "bad_s0", "; raise SystemExit(3)"),
        _script_task(tmp_path, "after_ok_s0", "", ["ok_s0"]),
        _script_task(tmp_path, "after_bad_s0", "", ["bad_s0"]),
    ]
    report = run_all.run_tasks(tasks, tmp_path / "logs", jobs=2, threads=1)
    assert sorted(report.failed) == ["after_bad_s0", "bad_s0"] and report.ran == 3
    assert run_all.recorded_result(tasks[0])["task"] == "ok_s0"
    started = json.loads((tasks[2].run_dir / "task.json").read_text())["git_commit"]
    assert started.startswith("commit-")
    # the start time is recorded when the task starts and kept with its results
    started_at = json.loads((tasks[2].run_dir / "task.json").read_text())["started_at"]
    assert run_all.recorded_result(tasks[2])["started_at"] == started_at
    assert run_all.recorded_result(tasks[2])["git_commit"] == started
    assert (tasks[2].results_dir / "metrics.json").is_file()
    assert not (tasks[0].results_dir / "checkpoints").exists()
    assert run_all.recorded_result(tasks[1]) is None  # a failed task leaves no results
    assert "raise SystemExit(3)" in (tmp_path / "logs" / "bad_s0.log").read_text()
    # a second start (e.g. on another machine, run folders gone) runs only what is not done
    for task in tasks:
        if task.run_dir.exists():
            for path in sorted(task.run_dir.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
    report = run_all.run_tasks(tasks[:1] + tasks[2:3], tmp_path / "logs", jobs=1, threads=None)
    assert report.ran == 0 and report.failed == []


# --------------------------------------------------------------------------- aggregate
def write_result(
    results: Path, run: str, seed: int, maps: list[float], *, variant="as_train", kind="train"
) -> Path:
    """A result folder as run_all.copy_results leaves it."""
    out = results / "runs" / run / f"val-{variant}" / f"seed{seed}"
    out.mkdir(parents=True)
    if kind == "train":
        history = []
        for epoch, value in enumerate(maps, start=1):
            eval_dir = out / "eval" / f"main_epoch{epoch}"
            eval_dir.mkdir(parents=True)
            pd.DataFrame(
                {
                    "mid": ["/a", "/b"],
                    "name": ["A", "B"],
                    "train_images": [2, 200],
                    "bucket": ["rare", "frequent"],
                    "ap": [value / 2, value * 1.5],
                }
            ).to_csv(eval_dir / "per_class.csv", index=False)
            history.append({"phase": "main", "epoch": epoch, "global_step": 10 * epoch})
            history[-1].update({"map": value, "map_rare": value / 2, "map_common": value})
            history[-1].update({"map_frequent": value * 1.5, "eval_dir": f"eval/main_epoch{epoch}"})
        summary = {"status": "finished", "history": history}
        (out / "summary.json").write_text(json.dumps(summary))
    else:
        (out / "metrics.json").write_text(json.dumps({"map": maps[0]}))
        pd.DataFrame({"mid": ["/a", "/b"], "ap": [0.1, 0.9], "bucket": ["x", "x"]}).to_csv(
            out / "per_class.csv", index=False
        )
    record = {"row": run, "seed": seed, "validation": variant, "kind": kind}
    (out / "run.json").write_text(json.dumps(record))
    return out


def test_read_result_history_and_incomplete_folders(tmp_path):
    out = write_result(tmp_path, "base", 0, [0.2, 0.4, 0.5])
    result = aggregate.read_result(out)
    assert (result["run"], result["seed"], result["kind"]) == ("base", 0, "training")
    assert result["map"] == pytest.approx(0.5) and result["map_rare"] == pytest.approx(0.25)
    assert [h["iteration"] for h in result["history"]] == [10, 20, 30]
    assert result["per_class_csv"].endswith("eval/main_epoch3/per_class.csv")
    # an epoch without an evaluation still counts in epoch_total
    summary = json.loads((out / "summary.json").read_text())
    summary["history"].insert(0, {"phase": "main", "epoch": 0, "global_step": 5})
    (out / "summary.json").write_text(json.dumps(summary))
    assert [h["epoch_total"] for h in aggregate.read_result(out)["history"]] == [2, 3, 4]
    (out / "run.json").unlink()
    assert aggregate.read_result(out) is None
    runs, incomplete = aggregate.collect_results(tmp_path)
    assert runs.empty and incomplete == ["runs/base/val-as_train/seed0"]


def test_evaluations_table_one_line_per_evaluation(tmp_path):
    write_result(tmp_path, "base", 0, [0.2, 0.4])
    write_result(tmp_path, "base", 1, [0.3, 0.5])
    write_result(tmp_path, "base_cs", 0, [0.45], kind="evaluate")
    write_result(tmp_path, "base", 0, [0.6], variant="clean", kind="evaluate")
    runs, _ = aggregate.collect_results(tmp_path)
    runs = aggregate.align_buckets(runs, SWEEPS)
    table = aggregate.evaluations_table(runs, SWEEPS)
    assert list(table.columns) == aggregate.EVAL_COLUMNS
    assert len(table) == 2 + 2 + 1 + 1
    rescored = table[table["row"] == "base_cs"].iloc[0]
    assert rescored["phase"] == "final checkpoint" and rescored["iteration"] == 20
    assert rescored["map"] == pytest.approx(0.45)
    # buckets of the training run (/a rare, /b frequent), not the evaluation's own
    assert rescored["map_rare"] == pytest.approx(0.1)
    assert rescored["map_frequent"] == pytest.approx(0.9)
    clean = table[(table["row"] == "base") & (table["validation"] == "clean")].iloc[0]
    assert clean["epoch_total"] == 2 and clean["kind"] == "evaluation"
    seed1 = table[(table["row"] == "base") & (table["seed"] == 1)]
    assert list(seed1["iteration"]) == [10, 20] and list(seed1["map"]) == [0.3, 0.5]


def test_difference_verdict_is_the_t_test_and_tost_rule():
    settings = aggregate.statistics_settings(SWEEPS)
    # mean 3, sd 1, n 3: t = 5.20, df 2, p = 0.035
    assert aggregate.difference_verdict(np.array([2.0, 3.0, 4.0]), settings) == "higher"
    assert aggregate.difference_verdict(np.array([-2.0, -3.0, -4.0]), settings) == "lower"
    # just above and just below the critical t(3) = 3.182 (sd 1, n 4: standard error 0.5);
    # the old rule (|mean| > 2 standard errors) called both "higher"
    d = np.array([-0.5, 0.5, -0.5, 0.5]) * np.sqrt(3)  # sd exactly 1
    assert aggregate.difference_verdict(d + 1.60, settings) == "higher"
    assert aggregate.difference_verdict(d + 1.58, settings) == "cannot tell"
    # small, tight differences: equivalent within +-0.5 points
    assert aggregate.difference_verdict(np.array([0.1, -0.1, 0.1, -0.1]), settings) == (
        "equivalent"
    )
    assert aggregate.difference_verdict(np.array([5.0]), settings) == "n/a"


def test_statistics_settings_name_the_missing_key():
    with pytest.raises(ValueError, match="no `statistics:` block"):
        aggregate.statistics_settings({})
    with pytest.raises(ValueError, match="statistics.power is missing"):
        aggregate.statistics_settings({"statistics": {"alpha": 0.05, "equivalence_margin": 1}})
    with pytest.raises(ValueError, match="0 < alpha < 1"):
        aggregate.statistics_settings(
            {"statistics": {"alpha": 5, "equivalence_margin": 0.5, "power": 0.8}}
        )


def test_paper_direction_and_agreement():
    assert aggregate.paper_direction(56.58, 55.45) == "higher"
    assert aggregate.paper_direction(50.18, 55.45) == "lower"
    assert aggregate.paper_direction(None, 67.09, "lower") == "lower"
    assert aggregate.paper_direction(None, 55.45) == ""
    assert aggregate.agreement("higher", "higher") == "reproduces"
    assert aggregate.agreement("lower", "higher") == "opposite"
    assert aggregate.agreement("cannot tell", "lower") == "cannot tell"
    assert aggregate.agreement("equivalent", "lower") == "no difference"
    assert aggregate.agreement("higher", "") == "" and aggregate.agreement("n/a", "higher") == ""


def test_convergence_rule():
    history = [{"map": m} for m in [0.50, 0.70, 0.80, 0.805]]
    n, diff, plateau = aggregate.convergence(history)
    assert (n, plateau) == (4, True) and diff == pytest.approx(0.5)
    assert aggregate.convergence([{"map": m} for m in [0.5, 0.7, 0.80, 0.815]])[2] is False
    assert aggregate.convergence([{"map": m} for m in [0.7, 0.80, 0.801]])[2] is False  # < 4
    assert aggregate.convergence([{"map": 0.5}])[:1] == (1,)


def test_summarize_table_paired_differences_verdicts_and_convergence(tmp_path):
    # baseline 0.40, 0.50, 0.60; rescored 0.45, 0.53, 0.70 -> diffs 5, 3, 10 points
    for seed, value in enumerate([0.40, 0.50, 0.60]):
        write_result(tmp_path, "base", seed, [value - 0.2, value - 0.1, value - 0.005, value])
    for seed, value in enumerate([0.45, 0.53, 0.70]):
        write_result(tmp_path, "base_cs", seed, [value], kind="evaluate")
    runs, _ = aggregate.collect_results(tmp_path)
    converged = aggregate.convergence_table(runs)
    assert list(converged["plateau"]) == [True, True, True]
    settings = aggregate.statistics_settings(SWEEPS)
    summary = aggregate.summarize_table(
        runs, SWEEPS["tables"]["t"], "as_train", converged, SWEEPS, settings
    )
    summary = summary.set_index("run")
    assert summary.loc["base", "map_mean"] == pytest.approx(50.0)
    assert summary.loc["base", "map_std"] == pytest.approx(10.0)
    assert summary.loc["base_cs", "delta_mean"] == pytest.approx(6.0)
    assert summary.loc["base_cs", "delta_std"] == pytest.approx(np.sqrt(13.0))
    assert summary.loc["base_cs", "delta_se"] == pytest.approx(np.sqrt(13.0 / 3))
    # t = 6 / 2.08 = 2.88, df 2: p = 0.10, not significant (the old 2-standard-error rule
    # called it "higher"); not equivalent within 0.5 points either
    expected = stats.ttest_1samp([5.0, 3.0, 10.0], 0.0)
    assert summary.loc["base_cs", "t"] == pytest.approx(expected.statistic)
    assert summary.loc["base_cs", "p"] == pytest.approx(expected.pvalue)
    assert summary.loc["base_cs", "df"] == 2
    assert summary.loc["base_cs", "verdict"] == "cannot tell"
    assert summary.loc["base_cs", "paper_direction"] == "higher"
    assert summary.loc["base_cs", "agreement"] == "cannot tell"
    assert summary.loc["base", "verdict"] == "baseline"
    # a re-scoring row's convergence is that of the training run it scores
    assert summary.loc["base_cs", "plateau"] == "3 of 3 seeds"
    assert summary.loc["base_cs", "evaluations"] == 4
    assert summary.loc["base_cs", "last_two_diff_max"] == pytest.approx(0.5)
    clean = aggregate.summarize_table(
        runs, SWEEPS["tables"]["t"], "clean", converged, SWEEPS, settings
    )
    assert list(clean["seeds"]) == [0, 0]
    text = aggregate.markdown_table(clean, SWEEPS["tables"]["t"], "clean")
    assert "| baseline | 0 | n/a | (baseline) |" in text


def test_summarize_claims_paired_differences_on_the_claims_metric(tmp_path):
    # as in the table test: map diffs 5, 3, 10 points; the rescored rows' map_rare is
    # missing (an evaluation folder has map only), so that claim has no paired seeds
    for seed, value in enumerate([0.40, 0.50, 0.60]):
        write_result(tmp_path, "base", seed, [value])
    for seed, value in enumerate([0.45, 0.53, 0.70]):
        write_result(tmp_path, "base_cs", seed, [value], kind="evaluate")
    runs, _ = aggregate.collect_results(tmp_path)
    settings = aggregate.statistics_settings(SWEEPS)
    claims = aggregate.summarize_claims(runs, SWEEPS["claims"], "as_train", settings, SWEEPS)
    claims = claims.set_index("claim")
    helps = claims.loc["rescoring helps"]
    assert helps["delta_mean"] == pytest.approx(6.0)
    assert helps["delta_std"] == pytest.approx(np.sqrt(13.0))
    expected = stats.ttest_rel([45.0, 53.0, 70.0], [40.0, 50.0, 60.0])
    assert helps["t"] == pytest.approx(expected.statistic)
    assert helps["p"] == pytest.approx(expected.pvalue) and helps["df"] == 2
    assert helps["delta_seeds"] == 3 and helps["verdict"] == "cannot tell"
    assert not helps["equivalent"] and helps["tost_p"] > 0.05
    assert helps["paper_delta"] == pytest.approx(1.0)
    assert helps["seeds_for_power"] > 3  # an effect of 1 point at sd 3.6
    # the fake results record no start time: the registration cannot be checked
    assert helps["registration"] == "unknown" and helps["registered"] == "2026-01-01"
    rare = claims.loc["rare lower"]
    assert rare["metric"] == "map_rare" and rare["paper_direction"] == "lower"
    assert rare["delta_seeds"] == 0 and rare["verdict"] == "n/a"
    assert rare["registration"] == "not registered"
    text = aggregate.markdown_claims(claims.reset_index(), "as_train", settings)
    assert "| rescoring helps | map | 3 | 6.00 ± 3.61 | 2.88 (2) | 0.102 |" in text
    assert "**cannot tell** | +1.00 |" in text


def test_aggregate_writes_every_output_and_lists_what_is_missing(tmp_path):
    for seed, value in enumerate([0.4, 0.5]):
        # seed 1's last two differ by exactly 1.0 point: a plateau (at most 1.0)
        write_result(tmp_path, "base", seed, [value / 2, value * 0.9, value * 0.98, value])
        write_result(tmp_path, "hyb", seed, [value / 2, value + 0.05])  # 2 evaluations only
    write_result(tmp_path, "base_cs", 0, [0.6], kind="evaluate")
    write_result(tmp_path, "base", 5, [0.9])  # a seed beyond the sweep's: not in the tables
    text = aggregate.aggregate(tmp_path, SWEEPS)
    assert "base_cs/val-as_train/seed1" in text and "base/val-clean/seed0" in text
    assert "left out of the tables (1): ['base/val-as_train/seed5']" in text
    assert "training runs without a plateau (2)" in text
    evaluations = pd.read_csv(tmp_path / "evaluations.csv")
    assert len(evaluations) == 4 * 2 + 2 * 2 + 1
    t = pd.read_csv(tmp_path / "t_as_train.csv").set_index("run")
    assert t.loc["base", "map_mean"] == pytest.approx(45.0)
    assert t.loc["base_cs", "delta_mean"] == pytest.approx(20.0)
    h = pd.read_csv(tmp_path / "h_as_train.csv").set_index("run")
    assert h.loc["base", "delta_mean"] == pytest.approx(-5.0)
    assert h.loc["base", "agreement"] == "reproduces"  # -5, -5: sd 0, p = 0
    assert h.loc["hyb", "plateau"] == "0 of 2 seeds"
    for name in [
        "t_clean.csv",
        "tables.md",
        "claims.md",
        "claims_as_train.csv",
        "convergence.csv",
        "convergence.png",
        "figure4_as_train.png",
        "figure5_as_train.png",
        "figure4_map_per_epoch_as_train.csv",
    ]:
        assert (tmp_path / name).stat().st_size > 0, name
    all_runs = pd.read_csv(tmp_path / "all_runs.csv")
    assert all(not Path(p).is_absolute() for p in all_runs["per_class_csv"])
    assert all((tmp_path / p).is_file() for p in all_runs["per_class_csv"])
    bins = pd.read_csv(tmp_path / "figure5_ap_by_frequency_bin_as_train.csv")
    assert bins["classes"].sum() == 2  # each class in exactly one bin
    curve = pd.read_csv(tmp_path / "figure4_map_per_epoch_as_train.csv")
    assert list(curve["mean"]) == pytest.approx([22.5, 40.5, 44.1, 45.0])


def test_curves_and_per_class_ap_average_seeds(tmp_path):
    write_result(tmp_path, "base", 0, [0.2, 0.4])
    write_result(tmp_path, "base", 1, [0.4, 0.6])
    runs, _ = aggregate.collect_results(tmp_path)
    evaluations = aggregate.evaluations_table(runs, SWEEPS)
    c = aggregate.curves(evaluations, "base", "as_train")
    assert list(c["epoch_total"]) == [1, 2] and list(c["mean"]) == pytest.approx([30.0, 50.0])
    assert list(c["std"]) == pytest.approx([np.sqrt(200.0), np.sqrt(200.0)])
    assert aggregate.curves(evaluations, "base", "clean").empty
    t = aggregate.per_class_ap(runs, "base", "as_train").set_index("mid")
    assert t.loc["/a", "ap"] == pytest.approx(25.0) and t.loc["/b", "ap"] == pytest.approx(75.0)
    assert t.loc["/a", "seeds"] == 2


def test_leaf_parent_table_splits_the_classes(tmp_path):
    write_result(tmp_path, "base", 0, [0.4])  # /a 0.2, /b 0.6
    write_result(tmp_path, "base", 1, [0.2])  # /a 0.1, /b 0.3
    runs, _ = aggregate.collect_results(tmp_path)
    table = aggregate.leaf_parent_table(runs, {"/a"}, {"base": "b", "none": "n"}, "as_train")
    base = table.set_index("run").loc["base"]
    assert base["leaf_map_mean"] == pytest.approx(15.0)
    assert base["parent_map_mean"] == pytest.approx(45.0)
    assert table.set_index("run").loc["none", "seeds"] == 0


def test_expected_results_cover_every_variant_of_every_row():
    expected = aggregate.expected_results(SWEEPS)
    assert ("base", "clean", 1) in expected and ("base_cs", "clean", 0) in expected
    assert ("hyb", "as_train", 0) in expected and ("hyb", "clean", 0) not in expected
    assert len(expected) == 2 * 2 + 2 * 2 + 1 * 2


def test_leaf_mids_of_the_hierarchy_beside_the_results(tmp_path):
    hierarchy = {
        "LabelName": "/m/root",
        "Subcategory": [
            {"LabelName": "/p", "Subcategory": [{"LabelName": "/a"}]},
            {"LabelName": "/b"},
        ],
    }
    (tmp_path / "hierarchy.json").write_text(json.dumps(hierarchy))
    assert aggregate.leaf_mids_of(tmp_path / "hierarchy.json") == {"/a", "/b"}
    assert aggregate.leaf_mids_of(tmp_path / "absent.json") == set()


def test_generate_data_writes_each_variant_once_and_reads_its_hash(tmp_path):
    calls = tmp_path / "calls.txt"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake_python.chmod(0o755)
    roots = run_all.generate_data(SWEEPS, "tiny", python=str(fake_python))
    assert roots == ["data/x", "data/x_val-clean"]
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("-m lsdet.data.synth root=data/x ")
    assert "generate.val_label_noise=clean" in lines[1]
    assert run_all.data_settings_hash(tmp_path) is None
    (tmp_path / "manifest.json").write_text(json.dumps({"settings_hash": "f00"}))
    assert run_all.data_settings_hash(tmp_path) == "f00"


def test_committed_results_folder_is_not_git_ignored():
    import shutil
    import subprocess

    if shutil.which("git") is None or not (EXPERIMENTS.parent / ".git").exists():
        pytest.skip("not a git checkout")
    probe = "experiments/results/converged/runs/t1_softmax/val-as_train/seed0/run.json"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", probe], cwd=EXPERIMENTS.parent, check=False
    ).returncode
    assert ignored == 1, f"{probe} is git-ignored: a sweep's results would never be committed"


# --------------------------------------------------------------------------- registered protocols
def test_slope_test_matches_scipy_linregress():
    import claim_statistics as cs

    rng = np.random.default_rng(1)
    x = np.repeat([0.0, 0.1, 0.2, 0.4], 7)
    y = 2.5 * x - 0.8 + rng.normal(0, 1.0, len(x))
    test = cs.slope_test(x, y)
    reference = stats.linregress(x, y)
    assert test.slope == pytest.approx(reference.slope)
    assert test.intercept == pytest.approx(reference.intercept)
    assert test.se == pytest.approx(reference.stderr)
    assert test.p == pytest.approx(reference.pvalue)
    assert test.df == 26 and test.n == 28 and test.mean == test.slope
    assert np.isnan(test.tost_p) and not test.equivalent
    # TOST on the slope: both one-sided tests at +-margin
    margin = 6.0
    tost = cs.slope_test(x, y, margin=margin)
    lower = stats.t.sf((tost.slope + margin) / tost.se, 26)
    upper = stats.t.cdf((tost.slope - margin) / tost.se, 26)
    assert tost.tost_p == pytest.approx(max(lower, upper))
    assert tost.equivalent == (tost.tost_p < 0.05)
    # missing values are left out; too few points or one x value give nan
    with_nan = cs.slope_test(np.append(x, 0.3), np.append(y, np.nan))
    assert with_nan.slope == pytest.approx(reference.slope) and with_nan.n == 28
    assert np.isnan(cs.slope_test([0.1, 0.2], [1.0, 2.0]).p)
    assert np.isnan(cs.slope_test([0.1, 0.1, 0.1], [1.0, 2.0, 3.0]).slope)
    assert cs.verdict(test, "higher") in cs.VERDICTS


def test_multi_labelled_leaves_from_the_objects_table(tmp_path):
    import diagnosis

    hierarchy = {
        "LabelName": "/m/0bl9f",
        "Subcategory": [
            {"LabelName": "/p", "Subcategory": [{"LabelName": "/a"}, {"LabelName": "/b"}]},
            {"LabelName": "/c"},
        ],
    }
    (tmp_path / "hierarchy.json").write_text(json.dumps(hierarchy))
    objects = pd.DataFrame(
        {
            "TrueLabelName": ["/a"] * 4 + ["/b"] * 10 + ["/c"] * 2,
            # /a: 1 of 4 with two leaves; /b: 1 of 10 with a leaf and its parent only (one
            # leaf) and 1 with two leaves; /c: none
            "LabelNames": ["/a;/c", "/a", "/a", "/a"]
            + ["/b;/p", "/b;/a"] + ["/b"] * 8
            + ["/c", "/p"],
        }
    )  # fmt: skip
    objects.to_csv(tmp_path / "train-objects.csv", index=False)
    leaves = diagnosis.multi_labelled_leaves(
        tmp_path / "train-objects.csv", tmp_path / "hierarchy.json", 0.1
    )
    assert leaves == ["/a", "/b"]
    assert diagnosis.multi_labelled_leaves(
        tmp_path / "train-objects.csv", tmp_path / "hierarchy.json", 0.2
    ) == ["/a"]


PROTOCOL_SWEEPS = {
    **SWEEPS,
    "diagnosis_sweep": {
        "results": "diag",
        "seeds": [0, 1, 2, 3],
        "benchmarks": {
            "m0": {"root": "data/m0", "multi_label_rate": 0.0},
            "m0.2": {"root": "data/m0.2", "multi_label_rate": 0.2},
            "m0.4": {"root": "data/m0.4", "multi_label_rate": 0.4},
        },
        "claims": [
            {"claim": "slope", "kind": "slope", "run": "cs", "against": "sm",
             "benchmarks": ["m0", "m0.2", "m0.4"], "expected": "higher",
             "registered": "2026-01-01T00:00"},
            {"claim": "multi", "kind": "pooled", "run": "cs", "against": "sm",
             "benchmarks": ["m0.2", "m0.4"], "metric": "map_multi_labelled",
             "expected": "higher", "registered": "2026-01-01T00:00"},
            {"claim": "sanity", "kind": "equivalence", "run": "cs", "against": "sm",
             "benchmarks": ["m0"], "registered": "2026-01-01T00:00"},
        ],
    },
    "crt_protocol": {
        "results": "crt",
        "seeds": [0, 1, 2],
        "claims": [
            {"claim": "cs vs softmax", "run": "cs_default", "against": "softmax",
             "expected": "higher", "registered": "2026-01-01T00:00"},
        ],
    },
}  # fmt: skip


def fake_protocol_training(folder: Path, row: str, seed: int, maps: list[float], aps) -> None:
    """A diagnosis training result as run_all.py copies it: run.json, summary.json and the
    per-class APs of each evaluation (aps[i]: AP of /a and /b at evaluation i)."""
    result = folder / "runs" / row / "val-as_train" / f"seed{seed}"
    history = []
    for epoch, (value, (ap_a, ap_b)) in enumerate(zip(maps, aps, strict=True), start=1):
        eval_dir = result / "eval" / f"main_epoch{epoch}"
        eval_dir.mkdir(parents=True)
        pd.DataFrame({"mid": ["/a", "/b"], "ap": [ap_a, ap_b]}).to_csv(
            eval_dir / "per_class.csv", index=False
        )
        history.append(
            {"phase": "main", "epoch": epoch, "global_step": epoch, "map": value,
             "eval_dir": f"eval/main_epoch{epoch}"}
        )  # fmt: skip
    (result / "summary.json").write_text(json.dumps({"status": "finished", "history": history}))
    record = {"row": row, "validation": "as_train", "seed": seed, "kind": "train",
              "started_at": "2026-02-01T00:00:00"}  # fmt: skip
    (result / "run.json").write_text(json.dumps(record))


def test_registered_protocols_not_run_yet_then_judged(tmp_path):
    settings = aggregate.statistics_settings(PROTOCOL_SWEEPS)
    summary = aggregate.summarize_protocols(tmp_path, PROTOCOL_SWEEPS, settings)
    assert list(summary["status"]) == ["not run yet"] * 4
    assert "| diagnosis_sweep | slope | not run yet |" in aggregate.markdown_protocols(summary)

    # Diagnosis results: Δ(seed, m) of the last two evaluations' mean mAP, in points.
    rng = np.random.default_rng(0)
    rates = {"m0": 0.0, "m0.2": 0.2, "m0.4": 0.4}
    expected_x, expected_y = [], []
    for benchmark, m in rates.items():
        for seed in range(4):
            delta = 0.01 * (3.0 * m + rng.normal(0, 0.5))  # fraction (mAP 0-1)
            base = 0.5 + 0.01 * seed
            # three evaluations; only the last two count
            fake_protocol_training(
                tmp_path / "diag", f"sm_{benchmark}", seed, [0.1, base, base + 0.002],
                [(0.2, 0.2), (0.4, 0.6), (0.4, 0.6)],
            )  # fmt: skip
            fake_protocol_training(
                tmp_path / "diag", f"cs_{benchmark}", seed,
                [0.1, base + delta - 0.001, base + 0.002 + delta + 0.001],
                [(0.2, 0.2), (0.5, 0.6), (0.45, 0.6)],
            )  # fmt: skip
            expected_x.append(m)
            expected_y.append(delta * 100)
    # cRT results: lsdet.crt's run.json (an evaluation), one per arm and seed
    for arm, value in (("softmax", 0.50), ("cs_default", 0.52)):
        for seed in range(3):
            result = tmp_path / "crt" / "runs" / arm / "val-as_train" / f"seed{seed}"
            result.mkdir(parents=True)
            (result / "metrics.json").write_text(json.dumps({"map": value + 0.001 * seed**2}))
            record = {"row": arm, "validation": "as_train", "seed": seed, "kind": "evaluation",
                      "started_at": "2025-12-01T00:00:00"}  # fmt: skip
            (result / "run.json").write_text(json.dumps(record))
    summary = aggregate.summarize_protocols(tmp_path, PROTOCOL_SWEEPS, settings).set_index("claim")
    slope = summary.loc["slope"]
    reference = stats.linregress(expected_x, expected_y)
    assert slope["status"] == "run" and slope["df"] == 10
    assert slope["estimate"] == pytest.approx(reference.slope)
    assert slope["p"] == pytest.approx(reference.pvalue)
    assert slope["registration"] == "pre-registered"
    # without the multi-labelled classes the secondary claim says what it needs
    assert summary.loc["multi", "status"] == "needs diag/multi_labelled_classes.csv"
    sanity = summary.loc["sanity"]
    assert sanity["n"] == 4 and sanity["verdict"] in (
        "higher",
        "lower",
        "equivalent",
        "cannot tell",
    )
    crt = summary.loc["cs vs softmax"]
    assert crt["estimate"] == pytest.approx(2.0) and crt["verdict"] == "reproduces"
    assert crt["registration"] == "post hoc"  # its results started before 2026-01-01
    table = aggregate.markdown_protocols(summary.reset_index())
    assert "| crt_protocol | cs vs softmax | run |" in table
    assert "post hoc (" in table and "first result started 2025-12-01T00:00" in table

    # the multi-labelled classes (/a only): CS's AP of /a is 0.475 against 0.4, every seed
    pd.DataFrame({"benchmark": ["m0.2", "m0.4"], "mid": ["/a", "/a"]}).to_csv(
        tmp_path / "diag" / aggregate.MULTI_LABELLED_CSV, index=False
    )
    summary = aggregate.summarize_protocols(tmp_path, PROTOCOL_SWEEPS, settings).set_index("claim")
    multi = summary.loc["multi"]
    assert multi["status"] == "run" and multi["estimate"] == pytest.approx(7.5)
    assert multi["df"] == 8 - 2 and multi["verdict"] == "reproduces"


def fake_crt_result(folder: Path, arm: str, seed: int, value: float, started: str) -> None:
    """A cRT arm's result as run_all.py copies it (lsdet.crt's metrics.json, run.json)."""
    result = folder / "runs" / arm / "val-as_train" / f"seed{seed}"
    result.mkdir(parents=True)
    (result / "metrics.json").write_text(json.dumps({"map": value}))
    record = {"row": arm, "validation": "as_train", "seed": seed, "kind": "evaluation",
              "started_at": started}  # fmt: skip
    (result / "run.json").write_text(json.dumps(record))


def test_registered_claims_get_no_verdict_before_their_design_is_complete(tmp_path):
    """Seed 0 of every benchmark, or some of the cRT seeds: the claim is "in progress: k of
    n seed pairs" with its interim estimate and sd, and no t, p, TOST or verdict; a seed
    outside the registered ones does not complete it; all registered pairs: judged."""
    settings = aggregate.statistics_settings(PROTOCOL_SWEEPS)
    evaluations = [(0.4, 0.6), (0.4, 0.6)]
    for benchmark, delta in (("m0", 0.0), ("m0.2", 0.01), ("m0.4", 0.02)):
        fake_protocol_training(tmp_path / "diag", f"sm_{benchmark}", 0, [0.5, 0.5], evaluations)
        fake_protocol_training(
            tmp_path / "diag", f"cs_{benchmark}", 0, [0.5 + delta, 0.5 + delta], evaluations
        )
    # cRT: seeds 0 and 1 of the registered 0-2, and seed 7 (not registered) of both arms
    for seed, (softmax, cs_default) in {0: (0.50, 0.52), 1: (0.50, 0.53), 7: (0.5, 0.6)}.items():
        fake_crt_result(tmp_path / "crt", "softmax", seed, softmax, "2026-02-01T00:00:00")
        fake_crt_result(tmp_path / "crt", "cs_default", seed, cs_default, "2026-02-01T00:00:00")
    summary = aggregate.summarize_protocols(tmp_path, PROTOCOL_SWEEPS, settings).set_index("claim")
    slope = summary.loc["slope"]
    assert slope["status"] == "in progress: 3 of 12 seed pairs"
    assert slope["estimate"] == pytest.approx(5.0)  # Δ 0, 1, 2 points at m 0, 0.2, 0.4
    assert slope["sd"] == pytest.approx(0.0, abs=1e-9) and slope["pairs"] == 3
    assert summary.loc["sanity", "status"] == "in progress: 1 of 4 seed pairs"
    crt = summary.loc["cs vs softmax"]
    assert crt["status"] == "in progress: 2 of 3 seed pairs" and crt["n"] == 2
    assert crt["estimate"] == pytest.approx(2.5)  # seed 7 is not counted
    assert crt["sd"] == pytest.approx(np.std([2.0, 3.0], ddof=1))
    for claim in ("slope", "sanity", "cs vs softmax"):
        row = summary.loc[claim]
        assert row["verdict"] == "" and pd.isna(row["p"]) and pd.isna(row["t"])
        assert pd.isna(row["tost_p"])
    table = aggregate.markdown_protocols(summary.reset_index())
    line = next(x for x in table.splitlines() if x.startswith("| crt_protocol | cs vs softmax"))
    assert "| in progress: 2 of 3 seed pairs | +2.50 | 0.71 |  |  |  | no verdict yet |" in line
    assert not any(word in table for word in ("reproduces", "cannot tell", "opposite", "<0.001"))
    assert "every registered seed pair" in table

    # the last registered cRT seed: the design is complete, the claim judged (n = 3)
    fake_crt_result(tmp_path / "crt", "softmax", 2, 0.50, "2026-02-01T00:00:00")
    fake_crt_result(tmp_path / "crt", "cs_default", 2, 0.525, "2026-02-01T00:00:00")
    summary = aggregate.summarize_protocols(tmp_path, PROTOCOL_SWEEPS, settings).set_index("claim")
    crt = summary.loc["cs vs softmax"]
    assert crt["status"] == "run" and crt["n"] == 3 and crt["df"] == 2
    assert crt["estimate"] == pytest.approx(2.5) and crt["verdict"] == "reproduces"
    assert summary.loc["slope", "status"] == "in progress: 3 of 12 seed pairs"
    # beside claims still in progress (df nan) the judged claim's df reads as an integer
    table = aggregate.markdown_protocols(summary.reset_index())
    line = next(x for x in table.splitlines() if x.startswith("| crt_protocol | cs vs softmax"))
    assert f"{crt['t']:.2f} (2) |" in line


def test_last_two_mean_is_the_final_metric(tmp_path):
    assert np.isnan(aggregate.last_two_mean([{"map": 0.5}]))
    history = [{"map": 0.1}, {"map": 0.4}, {"map": 0.5}]
    assert aggregate.last_two_mean(history) == pytest.approx(0.45)


def test_sweeps_yaml_registered_protocols_are_consistent():
    from lsdet.data.synth import SynthSettings, build_taxonomy, target_image_counts

    sweeps = run_all.load_sweeps()
    defaults = yaml.safe_load(run_all.DATA_CONFIG.read_text())["generate"]
    spec = sweeps["diagnosis_sweep"]
    size = spec["size"]
    assert run_all.pinned_differences(size, defaults) == []
    assert size["data"]["generate"]["num_val_images"] == 4000
    assert size["data"]["generate"]["val_min_images_per_class"] == 25
    converged = sweeps["sizes"]["converged"]
    assert size["schedules"]["single"] == [
        o for o in converged["schedules"]["single"] if not o.startswith("train.eval_every")
    ]
    assert size["iterations_per_epoch"] == converged["iterations_per_epoch"]
    assert sorted(b["multi_label_rate"] for b in spec["benchmarks"].values()) == [0, 0.1, 0.2, 0.4]
    assert len({b["root"] for b in spec["benchmarks"].values()}) == 4
    for name, benchmark in spec["benchmarks"].items():
        generate = {**size["data"]["generate"], "multi_label_rate": benchmark["multi_label_rate"]}
        settings = SynthSettings.from_mapping(
            {**generate, "image_size": size["data"]["image_size"]}
        )
        counts = target_image_counts(settings, build_taxonomy(settings))
        assert counts["validation"].min() >= 25, name
    assert 7 <= len(spec["seeds"]) <= 9
    experiments = {p.stem for p in (EXPERIMENTS.parent / "conf" / "experiment").glob("*.yaml")}
    assert {r["experiment"] for r in spec["runs"].values()} <= experiments
    crt = sweeps["crt_protocol"]
    assert len(crt["seeds"]) >= 10 and crt["detector"]["run"] in sweeps["runs"]
    for claim in spec["claims"] + crt["claims"]:
        assert aggregate.registration_time(claim["registered"]) is not None
        if claim in spec["claims"]:
            assert {claim["run"], claim["against"]} <= set(spec["runs"])
            assert set(claim["benchmarks"]) <= set(spec["benchmarks"])
        else:
            assert {claim["run"], claim["against"]} <= set(crt["arms"])
    # the runner does not take these blocks for sizes: the converged sweep's tasks are as before
    assert "diagnosis" not in sweeps["sizes"]


def test_crt_m0_claims_are_judged_paired_by_seed_without_a_direction(tmp_path):
    """sweeps.yaml `crt_m0:` (cRT on the m = 0 benchmark's detector): each arm against softmax,
    paired by the registered seeds, the verdict words of a claim without a direction; a claim
    whose runs started before its registration is post hoc."""
    sweeps = {
        "statistics": PROTOCOL_SWEEPS["statistics"],
        "crt_m0": {
            "results": "crt/m0",
            "seeds": [0, 1, 2, 3, 4],
            "claims": [
                {"claim": "default", "run": "cs_default", "against": "softmax",
                 "registered": "2026-03-01T00:00"},
                {"claim": "off", "run": "cs_terms_off", "against": "softmax",
                 "registered": "2026-03-01T00:00"},
                {"claim": "late", "run": "cs_default", "against": "softmax",
                 "registered": "2026-04-01T00:00"},
            ],
        },
    }  # fmt: skip
    folder = tmp_path / "crt" / "m0"
    noise = [0.001, -0.002, 0.0005, 0.0015, -0.001]
    for seed in range(5):
        base = 0.70 + 0.01 * seed
        fake_crt_result(folder, "softmax", seed, base, "2026-03-02T00:00:00")
        fake_crt_result(folder, "cs_default", seed, base - 0.02 + noise[seed], "2026-03-02T00:00")
        fake_crt_result(folder, "cs_terms_off", seed, base + noise[seed], "2026-03-02T00:00")
    settings = aggregate.statistics_settings(sweeps)
    summary = aggregate.summarize_protocols(tmp_path, sweeps, settings).set_index("claim")
    diffs = 100 * np.array(noise)  # points
    default = summary.loc["default"]
    assert default["protocol"] == "crt_m0" and default["status"] == "run"
    assert default["df"] == 4 and default["estimate"] == pytest.approx(-2.0 + diffs.mean())
    assert default["verdict"] == "lower"
    off = summary.loc["off"]
    reference = stats.ttest_1samp(diffs, 0.0)
    assert off["p"] == pytest.approx(reference.pvalue) and off["verdict"] == "equivalent"
    assert off["registration"] == "pre-registered" and summary.loc["late", "registration"] == (
        "post hoc"
    )

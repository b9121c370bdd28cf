"""experiments/run_all.py --protocol diagnosis | crt: the tasks of the protocols registered in
sweeps.yaml (diagnosis_sweep, crt_protocol), their plan, their results folders and the
secondary claim's class list; nothing is trained."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import aggregate  # noqa: E402
import run_all  # noqa: E402

SWEEPS = run_all.load_sweeps()


def diagnosis_tasks(tmp_path: Path, seeds=(0, 1)) -> list[run_all.Task]:
    return run_all.build_diagnosis_tasks(
        SWEEPS, tmp_path / "runs", tmp_path / "results", list(seeds), python="py"
    )


def option(task: run_all.Task, key: str) -> str:
    values = [a.split("=", 1)[1] for a in task.command if a.startswith(key + "=")]
    assert len(values) == 1, (key, task.command)
    return values[0]


# --------------------------------------------------------------------------- diagnosis
def test_diagnosis_tasks_per_seed_benchmark_and_run_in_the_registered_order(tmp_path):
    spec = SWEEPS["diagnosis_sweep"]
    tasks = diagnosis_tasks(tmp_path)
    expected = [
        f"{run}_{benchmark}_s{seed}"
        for seed in (0, 1)
        for benchmark in spec["benchmarks"]
        for run in spec["runs"]
    ]
    assert [t.name for t in tasks] == expected
    assert len(diagnosis_tasks(tmp_path, spec["seeds"])) == 4 * 2 * 7
    for task in tasks:
        benchmark = task.row.split("_")[-1]
        assert task.kind == "train"
        assert option(task, "data.root") == spec["benchmarks"][benchmark]["root"] == task.data_root
        assert float(option(task, "data.generate.multi_label_rate")) == pytest.approx(
            spec["benchmarks"][benchmark]["multi_label_rate"]
        )
        assert option(task, "data.generate.num_val_images") == "4000"
        assert option(task, "data.generate.confused_pairs.placement") == "across_frequency"
        assert option(task, "train.eval_epochs") == "[6,7]"
        assert option(task, "train.eval_every") == "epoch"
        assert option(task, "train.eval_image_records") == "true"
        assert option(task, "train.max_iters_per_epoch") == "188"
        assert option(task, "+experiment") == spec["runs"][task.row.rsplit("_", 1)[0]]["experiment"]
        # the layout experiments/aggregate.py pairs: runs/<run id>_<benchmark>/val-as_train/
        assert task.results_dir == (
            tmp_path / "results" / "runs" / task.row / "val-as_train" / f"seed{task.seed}"
        )
        assert task.run_dir == tmp_path / "runs" / task.name
        assert f"seed={task.seed}" in task.command


def test_diagnosis_runs_and_rows_can_be_selected(tmp_path):
    tasks = run_all.build_diagnosis_tasks(
        SWEEPS, tmp_path, tmp_path, [0], only=["d_softmax", "d_concurrent_softmax_m0.4"]
    )
    assert [t.name for t in tasks] == [
        "d_softmax_m0_s0",
        "d_softmax_m0.1_s0",
        "d_softmax_m0.2_s0",
        "d_softmax_m0.4_s0",
        "d_concurrent_softmax_m0.4_s0",
    ]


def test_diagnosis_evaluation_follows_the_registered_final_metric():
    spec = SWEEPS["diagnosis_sweep"]
    assert run_all.diagnosis_evaluation_overrides(spec)[-2:] == [
        "train.eval_epochs=[6,7]",
        "train.eval_image_records=true",
    ]
    other = {**spec, "final_metric": "ema"}
    with pytest.raises(run_all.SweepError, match="final_metric='ema'"):
        run_all.diagnosis_evaluation_overrides(other)
    longer = json.loads(json.dumps(spec))
    longer["size"]["schedules"]["single"][0] = "schedule.phases.main.epochs=9"
    assert "train.eval_epochs=[8,9]" in run_all.diagnosis_evaluation_overrides(longer)


def test_diagnosis_tasks_compose_as_training_configs(tmp_path):
    """The overrides of a diagnosis run are valid for lsdet.train (keys exist, eval_epochs in
    range of the schedule)."""
    from train_helpers import compose_train

    from lsdet.config_schema.checks import check_training_config

    task = diagnosis_tasks(tmp_path, seeds=[3])[1]
    overrides = [a for a in task.command[3:] if not a.startswith("hydra.")]
    cfg = compose_train(overrides)
    check_training_config(cfg)
    assert list(cfg.train.eval_epochs) == [6, 7] and cfg.train.eval_image_records is True
    assert cfg.loss.name == "concurrent_softmax" and cfg.seed == 3


def write_benchmark(root: Path, labels: list[str]) -> None:
    hierarchy = {
        "LabelName": "/m/0bl9f",
        "Subcategory": [
            {"LabelName": "/p", "Subcategory": [{"LabelName": "/a"}, {"LabelName": "/b"}]},
        ],
    }
    root.mkdir(parents=True)
    (root / "hierarchy.json").write_text(json.dumps(hierarchy))
    objects = pd.DataFrame({"TrueLabelName": ["/a", "/a", "/b", "/b"], "LabelNames": labels})
    objects.to_csv(root / "train-objects.csv", index=False)


def test_multi_labelled_classes_of_every_benchmark(tmp_path):
    spec = {
        "multi_labelled_min_share": 0.5,
        "benchmarks": {
            "m0": {"root": str(tmp_path / "m0"), "multi_label_rate": 0.0},
            "m0.4": {"root": str(tmp_path / "m0.4"), "multi_label_rate": 0.4},
        },
        "size": {"data": {"generate": {}}},
    }
    write_benchmark(tmp_path / "m0", ["/a", "/a", "/b", "/b"])
    write_benchmark(tmp_path / "m0.4", ["/a;/b", "/a", "/b;/a", "/b;/a"])
    path = run_all.write_multi_labelled_classes(spec, tmp_path / "out" / "classes.csv")
    assert path.read_text() == "benchmark,mid\nm0.4,/a\nm0.4,/b\n"
    # what aggregate.py reads: the classes per benchmark
    table = pd.read_csv(path)
    assert {b: set(g["mid"]) for b, g in table.groupby("benchmark")} == {"m0.4": {"/a", "/b"}}
    run_all.write_multi_labelled_classes(spec, path)  # the same rows: fine
    path.write_text("benchmark,mid\nm0.4,/a\n")
    with pytest.raises(run_all.SweepError, match="other multi-labelled classes"):
        run_all.write_multi_labelled_classes(spec, path)
    assert path.read_text() == "benchmark,mid\nm0.4,/a\n"  # never overwritten


def test_diagnosis_dry_run_lists_the_tasks(tmp_path, capsys):
    code = run_all.main(
        ["--protocol", "diagnosis", "--dry-run", "--seeds", "0", "--out", str(tmp_path / "runs"),
         "--results", str(tmp_path / "results")]
    )  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-1] == "8 tasks: {'run': 8}"
    assert all(line.startswith("[run] ") and "-m lsdet.train" in line for line in out[:-1])
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


def test_diagnosis_results_are_copied_and_read_as_the_final_metric(tmp_path):
    """A finished diagnosis run (evaluations after epochs 6 and 7 only) copied as the sweep
    copies it: configs, evaluations, per-class AP, image records, concurrent rates, never
    checkpoints; aggregate.py reads the two evaluations for the final metric."""
    task = diagnosis_tasks(tmp_path, seeds=[0])[0]
    run = task.run_dir
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"weights")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "concurrent_rates.csv").write_text("mid_i,mid_j,rate\n")
    history = [{"phase": "main", "epoch": e, "global_step": 188 * e} for e in range(1, 8)]
    for h, value in zip(history[5:], (0.4, 0.6), strict=True):
        tag = f"main_epoch{h['epoch']}"
        folder = run / "eval" / tag
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"map": value}))
        pd.DataFrame({"mid": ["/a", "/b"], "ap": [value, value]}).to_csv(
            folder / "per_class.csv", index=False
        )
        (folder / "image_records.npz").write_bytes(b"npz")
        h.update(map=value, eval_dir=f"eval/{tag}")
    summary = {"status": "finished", "history": history, "run_dir": str(run)}
    (run / "summary.json").write_text(json.dumps(summary))
    run_all.copy_results(task, data_hash="h", wall_seconds=1.0)
    copied = sorted(
        str(p.relative_to(task.results_dir)) for p in task.results_dir.rglob("*") if p.is_file()
    )
    assert "eval/main_epoch7/image_records.npz" in copied
    assert not any("checkpoints" in p for p in copied)
    assert {"config.yaml", "concurrent_rates.csv", "summary.json", "run.json"} <= set(copied)
    result = aggregate.read_result(task.results_dir)
    assert result["run"] == "d_softmax_m0" and len(result["history"]) == 2
    assert aggregate.last_two_mean(result["history"]) == pytest.approx(0.5)


# --------------------------------------------------------------------------- cRT
def crt_plan(tmp_path: Path, **kwargs) -> run_all.CrtPlan:
    (plan,) = run_all.build_crt_plans(
        SWEEPS, tmp_path / "runs", tmp_path / "results", python="py", **kwargs
    )
    return plan


def test_crt_tasks_detector_cache_and_every_arm_and_seed(tmp_path):
    spec = SWEEPS["crt_protocol"]
    crt = crt_plan(tmp_path)
    detector = spec["detector"]
    assert crt.base.name == f"{detector['run']}_s{detector['seed']}" and crt.base.kind == "train"
    assert crt.base.results_dir == (
        tmp_path / "results" / "converged" / "runs" / "t1_softmax" / "val-as_train" / "seed0"
    )
    assert crt.checkpoint == (
        tmp_path / "runs" / "converged" / "t1_softmax_s0" / "checkpoints" / "phase_main.pt"
    )
    assert crt.cache.depends_on == [crt.base.name]
    assert option(crt.cache, "stage") == "cache"
    cache_file = tmp_path / "runs" / "crt" / "roi_cache.pt"
    assert option(crt.cache, "cache_file") == str(cache_file) == str(crt.cache.output)
    assert len(crt.arms) == len(spec["arms"]) * len(spec["seeds"]) == 60
    assert [t.name for t in crt.arms[:6]] == [f"crt_{arm}_s0" for arm in spec["arms"]]
    for task in crt.arms:
        assert task.depends_on == [crt.cache.name]
        assert option(task, "checkpoint") == str(crt.checkpoint)
        assert option(task, "cache_file") == str(cache_file)
        assert option(task, "seeds") == f"[{task.seed}]" and option(task, "arm") == task.row
        for override in spec["arms"][task.row]:
            assert override in task.command
        assert task.results_dir == (
            tmp_path / "results" / "crt" / "runs" / task.row / "val-as_train" / f"seed{task.seed}"
        )
        assert task.output == task.run_dir / "metrics.json"
        # where the files are is not what the task computes
        assert not any(
            s.startswith(("cache_file=", "overwrite=", "checkpoint=")) for s in task.settings
        )
    only = crt_plan(tmp_path, seeds=[3], arms=["cs_prior_count0"])
    assert [t.name for t in only.arms] == ["crt_cs_prior_count0_s3"]
    assert "rates.prior_count=0" in only.arms[0].command
    with pytest.raises(run_all.SweepError, match="no arm"):
        crt_plan(tmp_path, arms=["cs_other"])


def test_crt_lsdet_crt_accepts_every_arms_overrides(tmp_path):
    from hydra import compose, initialize_config_dir
    from train_helpers import CONF_DIR

    from lsdet import crt

    for task in crt_plan(tmp_path, seeds=[0]).arms:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("crt", overrides=task.command[3:])
        overrides = crt.arm_rates_overrides(cfg.rates)
        assert cfg.arm == task.row and list(cfg.seeds) == [0]
        if task.row == "cs_hierarchy_rate0":
            assert overrides == {"hierarchy_rate": 0.0}
        elif task.row == "cs_prior_count0":
            assert overrides == {"prior_count": 0.0}
        else:
            assert overrides == {}
        if task.row == "cs_annotated_targets":
            assert cfg.loss.positive_targets == "annotated"
        if task.row == "cs_mean_reduction":
            assert cfg.loss.positive_reduction == "mean"


def record_results(task: run_all.Task) -> None:
    task.run_dir.mkdir(parents=True, exist_ok=True)
    (task.run_dir / "metrics.json").write_text(json.dumps({"map": 0.5}))
    run_all.copy_results(task, data_hash=None, wall_seconds=None)


def test_crt_plan_remakes_what_the_arms_need(tmp_path):
    crt = crt_plan(tmp_path, seeds=[0], arms=["softmax", "cs_default"])
    actions = run_all.plan_crt(crt)
    assert actions == {t.name: "run" for t in crt.tasks}
    # the detector's results recorded by the converged sweep, its checkpoint gone: trained
    # again for the checkpoint only
    record_results(crt.base)
    assert run_all.plan_crt(crt)[crt.base.name] == "retrain"
    crt.checkpoint.parent.mkdir(parents=True)
    crt.checkpoint.write_bytes(b"weights")
    assert run_all.plan_crt(crt)[crt.base.name] == "done"
    # the cache recorded but its file gone while an arm still has to run: made again
    record_results(crt.cache)
    assert run_all.plan_crt(crt)[crt.cache.name] == "retrain"
    crt.cache.output.parent.mkdir(parents=True, exist_ok=True)
    crt.cache.output.write_bytes(b"cache")
    assert run_all.plan_crt(crt)[crt.cache.name] == "done"
    for task in crt.arms:
        record_results(task)
    crt.cache.output.unlink()
    assert set(run_all.plan_crt(crt).values()) == {"done"}  # nothing left needs the cache
    # the checkpoint gone once results were made from it: continuing would mix detectors
    crt.checkpoint.unlink()
    more = crt_plan(tmp_path, seeds=[0, 1], arms=["softmax", "cs_default"])
    with pytest.raises(run_all.SweepError, match="checkpoint .* is gone.*crt_softmax_s0"):
        run_all.plan_crt(more)


def test_crt_arm_results_are_copied_without_the_classifier_and_read_as_evaluations(tmp_path):
    task = crt_plan(tmp_path, seeds=[2], arms=["cs_default"]).arms[0]
    task.run_dir.mkdir(parents=True)
    (task.run_dir / "classifier.pt").write_bytes(b"weights")
    (task.run_dir / "metrics.json").write_text(json.dumps({"map": 0.25}))
    pd.DataFrame({"mid": ["/a"], "ap": [0.25]}).to_csv(task.run_dir / "per_class.csv")
    (task.run_dir / "task.json").write_text(json.dumps({"settings": task.settings}))
    assert run_all.run_finished(task)
    run_all.copy_results(task, data_hash=None, wall_seconds=3.0)
    assert not (task.results_dir / "classifier.pt").exists()
    row = aggregate.read_result(task.results_dir)
    assert row["run"] == "cs_default" and row["seed"] == 2 and row["map"] == 0.25
    assert row["kind"] == "evaluation" and row["validation"] == "as_train"


def test_crt_dry_run_lists_the_tasks_and_takes_no_overrides(tmp_path, capsys):
    args = ["--protocol", "crt", "--dry-run", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--seeds", "0", "1"]  # fmt: skip
    assert run_all.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "14 tasks: {'run': 14}"
    assert "-m lsdet.train" in out[0] and "stage=cache" in out[1]
    with pytest.raises(SystemExit, match="takes no extra overrides"):
        run_all.main(["optim.lr=0.1", *args])


def test_crt_m0_tasks_on_the_diagnosis_detector(tmp_path):
    """`--protocol crt_m0`: the m = 0 benchmark's softmax detector of the diagnosis sweep
    (its run folder, results and checkpoint as that sweep makes them), the cache and every
    arm and seed in runs/crt_m0/, results in results/crt/m0/."""
    spec = SWEEPS["crt_m0"]
    crt = crt_plan(tmp_path, protocol="crt_m0")
    detector = spec["detector"]
    assert detector["benchmark"] == "m0"
    row = f"{detector['run']}_{detector['benchmark']}"
    assert crt.base.name == f"{row}_s{detector['seed']}" and crt.base.kind == "train"
    assert crt.base.data_root == SWEEPS["diagnosis_sweep"]["benchmarks"]["m0"]["root"]
    assert crt.base.results_dir == (
        tmp_path / "results" / "diagnosis" / "runs" / row / "val-as_train" / "seed2"
    )
    assert crt.checkpoint == (
        tmp_path / "runs" / "diagnosis" / f"{row}_s2" / "checkpoints" / "phase_main.pt"
    )
    # the same task as the diagnosis sweep's own: its recorded results are the detector's
    (same,) = run_all.build_diagnosis_tasks(
        SWEEPS, tmp_path / "runs" / "diagnosis", tmp_path / "results" / "diagnosis", [2],
        python="py", only=[row],
    )  # fmt: skip
    assert same.command == crt.base.command and same.run_dir == crt.base.run_dir
    assert option(crt.cache, "cache_file") == str(tmp_path / "runs" / "crt_m0" / "roi_cache.pt")
    assert len(crt.arms) == len(spec["arms"]) * len(spec["seeds"])
    assert crt.arms[0].name == "crt_m0_softmax_s0"
    for task in crt.arms:
        for override in spec["arms"][task.row]:
            assert override in task.command
        assert task.results_dir == (
            tmp_path / "results" / "crt" / "m0" / "runs" / task.row / "val-as_train"
            / f"seed{task.seed}"
        )  # fmt: skip
    # every claim compares two of the block's arms
    for claim in spec["claims"]:
        assert {claim["run"], claim["against"]} <= set(spec["arms"])
    with pytest.raises(run_all.SweepError, match="crt_m0 has no arm"):
        crt_plan(tmp_path, protocol="crt_m0", arms=["cs_prior_count0"])
    other = {**SWEEPS, "crt_m0": {**spec, "detector": {**detector, "benchmark": "m9"}}}
    with pytest.raises(run_all.SweepError, match="benchmark 'm9'"):
        run_all.build_crt_plans(other, tmp_path, tmp_path, protocol="crt_m0")


def test_generate_benchmarks_writes_every_benchmark_or_only_those_asked(monkeypatch):
    """One `python -m lsdet.data.synth` per benchmark, with its root and multi-label rate; a
    cRT detector of one benchmark (crt_m0) needs only that one."""
    spec = SWEEPS["diagnosis_sweep"]
    commands = []
    monkeypatch.setattr(run_all.subprocess, "run", lambda cmd, check: commands.append(cmd))
    roots = run_all.generate_benchmarks(spec, python="py")
    assert roots == [b["root"] for b in spec["benchmarks"].values()]
    for command, benchmark in zip(commands, spec["benchmarks"].values(), strict=True):
        assert command[:3] == ["py", "-m", "lsdet.data.synth"]
        assert f"root={benchmark['root']}" in command
        assert f"generate.multi_label_rate={benchmark['multi_label_rate']}" in command
    commands.clear()
    assert run_all.generate_benchmarks(spec, python="py", only=["m0"]) == ["data/synth_m0"]
    assert len(commands) == 1


def test_crt_m0_lsdet_crt_accepts_every_arms_overrides(tmp_path):
    from hydra import compose, initialize_config_dir
    from train_helpers import CONF_DIR

    from lsdet import crt

    for task in crt_plan(tmp_path, protocol="crt_m0", seeds=[0]).arms:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("crt", overrides=task.command[3:])
        assert cfg.arm == task.row
        if task.row == "cs_terms_off":
            assert crt.arm_rates_overrides(cfg.rates) == {"hierarchy_rate": 0.0}
            assert cfg.loss.positive_targets == "annotated"
            assert cfg.eval.parent_scores == "subtree_sum"  # softmax's parent scoring


def test_crt_m0_dry_run_lists_the_tasks(tmp_path, capsys):
    args = ["--protocol", "crt_m0", "--dry-run", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--seeds", "0"]  # fmt: skip
    assert run_all.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    arms = len(SWEEPS["crt_m0"]["arms"])
    assert out[-1] == f"{arms + 2} tasks: {{'run': {arms + 2}}}"
    assert "-m lsdet.train" in out[0] and "data.root=data/synth_m0" in out[0]
    assert "stage=cache" in out[1]


# --------------------------------------------------------------------------- cRT confirmation
CRT_ARMS = list(SWEEPS["crt_protocol"]["arms"])
CRT_SEEDS = list(SWEEPS["crt_protocol"]["seeds"])


def record_crt_results(tmp_path: Path, shifts: dict[str, tuple[float, float]], skip=()) -> None:
    """Every registered cRT arm and seed (and the detector and cache before them) recorded as
    run_all.py records them, an arm's mAP 0.40 + a
    per-seed jitter shared by the arms (paired seeds) + the arm's (shift, noise) in points:
    shift + noise * (a fixed pattern of mean 0 and sd 1 over the seeds)."""
    pattern = np.array([1.2, -0.8, 0.3, -1.5, 0.9, 0.1, -0.4, 1.6, -1.1, -0.3])
    pattern = (pattern - pattern.mean()) / pattern.std(ddof=1)
    seed_jitter = np.linspace(-0.02, 0.02, len(CRT_SEEDS))
    crt = crt_plan(tmp_path)
    record_results(crt.base)  # the detector and the RoI cache as recorded before the arms
    record_results(crt.cache)
    for task in crt.arms:
        if (task.row, task.seed) in skip:
            continue
        shift, noise = shifts.get(task.row, (0.0, 0.1))
        k = CRT_SEEDS.index(task.seed)
        # each arm its own order of the pattern, so that the arms' noise differs
        value = (
            0.40
            + seed_jitter[k]
            + (shift + noise * np.roll(pattern, CRT_ARMS.index(task.row))[k]) / 100
        )
        task.run_dir.mkdir(parents=True, exist_ok=True)
        (task.run_dir / "metrics.json").write_text(json.dumps({"map": value}))
        run_all.copy_results(task, data_hash=None, wall_seconds=1.0)


@pytest.mark.parametrize(
    "shifts, chosen",
    [
        # one arm clearly higher than cs_default
        ({"cs_mean_reduction": (2.0, 0.5)}, "cs_mean_reduction"),
        # none higher: softmax beats cs_default but is not a flip of it; one flip lower; one
        # with a high mean that is not significant
        ({"softmax": (5.0, 0.2), "cs_prior_count0": (-2.0, 0.3),
          "cs_annotated_targets": (1.0, 4.0)}, None),
        # two higher: the higher mean of the two; a higher mean that is not significant does
        # not count
        ({"cs_hierarchy_rate0": (1.0, 0.3), "cs_prior_count0": (2.0, 0.5),
          "cs_annotated_targets": (3.0, 12.0)}, "cs_prior_count0"),
    ],
)  # fmt: skip
def test_crt_confirmation_picks_the_best_arm_significantly_above_cs_default(
    tmp_path, shifts, chosen
):
    record_crt_results(tmp_path, shifts)
    choice = aggregate.choose_crt_confirmation(SWEEPS, tmp_path / "results")
    assert choice.complete and choice.arm == chosen, choice.reason
    if chosen is None:
        assert "no arm is significantly higher than cs_default" in choice.reason
        assert "nothing to confirm" in choice.reason
    else:
        assert choice.reason.startswith(f"{chosen}: the highest mean Δ")
        # the one-arm case names one qualified arm, the two-arm case both
        qualified = choice.reason.split("cs_default (", 1)[1].split(";")[0].split(", ")
        assert qualified == [chosen] if len(shifts) == 1 else len(qualified) == 2


def test_crt_confirmation_waits_for_every_registered_arm_and_seed(tmp_path):
    record_crt_results(tmp_path, {"cs_mean_reduction": (2.0, 0.5)}, skip=[("softmax", 9)])
    choice = aggregate.choose_crt_confirmation(SWEEPS, tmp_path / "results")
    assert choice.arm is None and not choice.complete
    assert "incomplete (59 of 60 arm and seed results)" in choice.reason


def test_crt_confirmation_tasks_train_the_arm_against_t1_concurrent_softmax(tmp_path):
    from train_helpers import compose_train

    confirm = SWEEPS["crt_protocol"]["confirm"]
    tasks = run_all.build_crt_confirmation_tasks(
        SWEEPS, "cs_hierarchy_rate0", tmp_path / "runs", tmp_path / "results", python="py"
    )
    arm = [t for t in tasks if t.row == "crt_confirm_cs_hierarchy_rate0"]
    baseline = [t for t in tasks if t.row == confirm["against"]]
    assert len(arm) + len(baseline) == len(tasks) and all(t.kind == "train" for t in tasks)
    assert [t.seed for t in arm] == confirm["seeds"] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert [t.seed for t in baseline] == [3, 4, 5, 6, 7]  # the converged sweep has 0-2
    # seed by seed, the arm first: a sweep cut short leaves complete pairs
    assert [(t.seed, t.row == arm[0].row) for t in tasks] == [(0, True), (1, True), (2, True)] + [
        (s, is_arm) for s in range(3, 8) for is_arm in (True, False)
    ]
    # the converged sweep's own task of t1_concurrent_softmax: the same command and folders
    converged = run_all.build_tasks(
        SWEEPS, "converged", tmp_path / "runs" / "converged", tmp_path / "results" / "converged",
        [3], python="py", only=[confirm["against"]],
    )  # fmt: skip
    assert baseline[0].command == converged[0].command
    assert baseline[0].results_dir == converged[0].results_dir
    for task in arm:
        assert option(task, "+experiment") == "t1_concurrent_softmax"
        assert "rates.hierarchy_rate=0" in task.command and f"seed={task.seed}" in task.command
        assert task.run_dir == tmp_path / "runs" / "converged" / f"{task.row}_s{task.seed}"
        assert task.results_dir == (
            tmp_path / "results" / "crt" / "confirm" / "runs" / task.row / "val-as_train"
            / f"seed{task.seed}"
        )  # fmt: skip

        # the same schedule, data and common settings as the run it is judged against
        def own(settings: list[str]) -> list[str]:
            return [a for a in settings if not a.startswith(("seed=", "name="))]

        arm_overrides = ["loss=concurrent_softmax", "rates.hierarchy_rate=0"]
        assert own(task.settings)[:4] == [*own(converged[0].settings)[:2], *arm_overrides]
        assert own(task.settings)[4:] == own(converged[0].settings)[2:]
    for name, check in (
        ("cs_hierarchy_rate0", lambda cfg: cfg.rates.hierarchy_rate == 0),
        ("cs_mean_reduction", lambda cfg: cfg.loss.positive_reduction == "mean"),
        ("cs_prior_count0", lambda cfg: cfg.rates.prior_count == 0),
        ("cs_annotated_targets", lambda cfg: cfg.loss.positive_targets == "annotated"),
    ):
        task = run_all.build_crt_confirmation_tasks(SWEEPS, name, tmp_path, tmp_path)[0]
        cfg = compose_train([a for a in task.command[3:] if not a.startswith("hydra.")])
        assert cfg.loss.name == "concurrent_softmax" and check(cfg), name
    with pytest.raises(run_all.SweepError, match="no arm 'cs_other'"):
        run_all.build_crt_confirmation_tasks(SWEEPS, "cs_other", tmp_path, tmp_path)


def test_crt_dry_run_lists_the_confirmation_the_results_imply(tmp_path, capsys):
    args = ["--protocol", "crt", "--dry-run", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results")]  # fmt: skip
    record_crt_results(tmp_path, {"cs_mean_reduction": (2.0, 0.5)})
    assert run_all.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    confirm = [line for line in out if "name=crt_confirm_" in line]
    assert [line.split("name=")[1].split()[0] for line in confirm] == [
        f"crt_confirm_cs_mean_reduction_s{k}" for k in range(8)
    ]
    assert all(
        line.startswith("[run] ") and "+experiment=t1_concurrent_softmax" in line
        and "loss.positive_reduction=mean" in line for line in confirm
    )  # fmt: skip
    baseline = [line for line in out if "name=t1_concurrent_softmax_s" in line]
    assert [line.split("name=")[1].split()[0] for line in baseline] == [
        f"t1_concurrent_softmax_s{k}" for k in range(3, 8)
    ]
    assert out[-2].startswith("cRT confirmation: cs_mean_reduction: the highest mean Δ")
    assert out[-1] == "75 tasks: {'done': 62, 'run': 13}"  # 8 + 5 trainings to run

    # no arm qualifies: the cRT tasks only, and the line that says so
    record_crt_results(tmp_path / "other", {})
    args[-1] = str(tmp_path / "other" / "results")
    assert run_all.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert not any("crt_confirm_" in line or "t1_concurrent_softmax_s" in line for line in out)
    assert "nothing to confirm" in out[-2] and out[-1] == "62 tasks: {'done': 62}"


def record_training(task: run_all.Task, final_maps: dict[str, float], started: str) -> None:
    """A finished training task recorded as run_all.py records it: two evaluations on each
    validation variant's data (their last is the final evaluation), started at `started`."""
    task.run_dir.mkdir(parents=True, exist_ok=True)
    (task.run_dir / "task.json").write_text(json.dumps({"started_at": started}))
    final = final_maps["as_train"]
    history = []
    for epoch, value in ((1, 0.3), (2, final)):  # the first is the same for every run
        tag = f"main_epoch{epoch}"
        (task.run_dir / "eval" / tag).mkdir(parents=True)
        (task.run_dir / "eval" / tag / "metrics.json").write_text(json.dumps({"map": value}))
        history.append({"phase": "main", "epoch": epoch, "global_step": epoch, "map": value,
                        "eval_dir": f"eval/{tag}"})  # fmt: skip
    summary = {"status": "finished", "history": history}
    (task.run_dir / "summary.json").write_text(json.dumps(summary))
    run_all.copy_results(task, data_hash=None, wall_seconds=1.0)
    for variant, value in final_maps.items():  # another validation variant's evaluation
        if variant == "as_train":
            continue
        other = task.results_dir.parent.parent / f"val-{variant}" / f"seed{task.seed}"
        other.mkdir(parents=True)
        (other / "metrics.json").write_text(json.dumps({"map": value}))
        record = {"row": task.row, "validation": variant, "seed": task.seed,
                  "kind": "evaluate", "started_at": started}  # fmt: skip
        (other / "run.json").write_text(json.dumps(record))


def confirmation_claim(results: Path) -> pd.Series:
    settings = aggregate.statistics_settings(SWEEPS)
    summary = aggregate.summarize_protocols(results, SWEEPS, settings)
    rows = summary[summary["claim"].str.startswith("cRT confirmation")]
    assert len(rows) == 1
    return rows.iloc[0]


def test_crt_confirmation_claim_judges_final_evaluation_map_against_t1_concurrent_softmax(
    tmp_path,
):
    """The registered confirmation: final-evaluation mAP (as_train) of crt_confirm_<arm>
    minus t1_concurrent_softmax's, paired over seeds 0-7 (df 7), expected higher; no
    verdict before all 8 pairs; post hoc when a judged run started before the rule was
    registered; nothing to judge while the cRT results are incomplete or pick no arm."""
    results = tmp_path / "results"
    confirm = SWEEPS["crt_protocol"]["confirm"]
    record_crt_results(tmp_path / "waiting", {"cs_mean_reduction": (2.0, 0.5)}, [("softmax", 9)])
    assert confirmation_claim(tmp_path / "waiting" / "results")["status"] == (
        "waits for the cRT results"
    )
    record_crt_results(tmp_path / "none", {})
    assert confirmation_claim(tmp_path / "none" / "results")["status"] == "no arm to confirm"

    record_crt_results(tmp_path, {"cs_mean_reduction": (2.0, 0.5)})
    after = "2026-12-07T02:00:00"  # later than the rule's registration
    record_training(crt_plan(tmp_path).base, {"as_train": 0.5}, after)  # the cRT's detector
    claim = confirmation_claim(results)
    assert claim["status"] == "not run yet"
    assert claim["claim"] == (
        "cRT confirmation: crt_confirm_cs_mean_reduction (full training) beats "
        "t1_concurrent_softmax"
    )
    tasks = run_all.build_crt_confirmation_tasks(
        SWEEPS, "cs_mean_reduction", tmp_path / "runs", results, python="py"
    )
    converged_seeds = run_all.build_tasks(
        SWEEPS, "converged", tmp_path / "runs" / "converged", results / "converged", [0, 1, 2],
        python="py", only=[confirm["against"]],
    )  # fmt: skip
    arm = {t.seed: t for t in tasks if t.row == "crt_confirm_cs_mean_reduction"}
    baseline = {
        t.seed: t
        for t in tasks + converged_seeds
        if t.row == confirm["against"] and t.kind == "train"
    }
    assert sorted(arm) == sorted(baseline) == list(range(8))
    deltas = [1.0, 0.5, 1.5, 0.8, 1.2, 0.9, 1.1, 0.7]  # points, arm minus baseline
    for seed in range(7):
        record_training(baseline[seed], {"as_train": 0.60, "clean": 0.10}, after)
        record_training(arm[seed], {"as_train": 0.60 + deltas[seed] / 100}, after)
    claim = confirmation_claim(results)
    assert claim["status"] == "in progress: 7 of 8 seed pairs" and claim["verdict"] == ""
    assert pd.isna(claim["p"]) and claim["estimate"] == pytest.approx(np.mean(deltas[:7]))

    record_training(baseline[7], {"as_train": 0.60, "clean": 0.10}, after)
    record_training(arm[7], {"as_train": 0.60 + deltas[7] / 100}, after)
    claim = confirmation_claim(results)
    reference = stats.ttest_1samp(deltas, 0.0)
    assert claim["status"] == "run" and claim["n"] == 8 and claim["df"] == 7
    assert claim["estimate"] == pytest.approx(np.mean(deltas))
    assert claim["t"] == pytest.approx(reference.statistic)
    assert claim["p"] == pytest.approx(reference.pvalue)
    assert claim["verdict"] == "reproduces" and claim["registration"] == "pre-registered"

    # a baseline seed that started before the rule was registered makes the claim post hoc
    old = baseline[0].results_dir / "run.json"
    old.write_text(json.dumps({**json.loads(old.read_text()), "started_at": "2026-11-25T00:00"}))
    assert confirmation_claim(results)["registration"] == "post hoc"


# --------------------------------------------------------------------------- cRT on other features
def test_crt_features_tasks_per_detector_of_the_sweep_and_of_the_confirmation(tmp_path):
    spec = SWEEPS["crt_features"]
    plans = run_all.build_crt_plans(
        SWEEPS, tmp_path / "runs", tmp_path / "results", protocol="crt_features", python="py"
    )
    assert [p.base.name for p in plans] == [f"{d['run']}_s{d['seed']}" for d in spec["detectors"]]
    by_name = {p.base.name: p for p in plans}
    sweep_run = by_name["t1_concurrent_softmax_s6"]
    assert sweep_run.base.results_dir == (
        tmp_path / "results" / "converged" / "runs" / "t1_concurrent_softmax" / "val-as_train"
        / "seed6"
    )  # fmt: skip
    confirmed = by_name["crt_confirm_cs_mean_reduction_s7"]
    assert "loss.positive_reduction=mean" in confirmed.base.command
    assert confirmed.base.results_dir == (
        tmp_path / "results" / "crt" / "confirm" / "runs" / "crt_confirm_cs_mean_reduction"
        / "val-as_train" / "seed7"
    )  # fmt: skip
    assert confirmed.checkpoint == (
        tmp_path / "runs" / "converged" / "crt_confirm_cs_mean_reduction_s7" / "checkpoints"
        / "phase_main.pt"
    )  # fmt: skip
    crt_dir = tmp_path / "runs" / "crt_features" / "crt_confirm_cs_mean_reduction_s7"
    assert option(confirmed.cache, "cache_file") == str(crt_dir / "roi_cache.pt")
    assert confirmed.cache.name == "crt_features_crt_confirm_cs_mean_reduction_s7_cache"
    assert confirmed.cache.depends_on == [confirmed.base.name]
    assert len(confirmed.arms) == len(spec["arms"]) * len(spec["seeds"])
    for task in confirmed.arms:
        assert task.row in spec["arms"] and option(task, "arm") == task.row
        assert option(task, "checkpoint") == str(confirmed.checkpoint)
        for override in SWEEPS["crt_protocol"]["arms"][task.row]:
            assert override in task.command
        assert task.results_dir == (
            tmp_path / "results" / "crt" / "features" / "crt_confirm_cs_mean_reduction_s7"
            / "runs" / task.row / "val-as_train" / f"seed{task.seed}"
        )  # fmt: skip
    # the same arm tasks as the cRT protocol's, on another checkpoint
    protocol = {t.name.removeprefix("crt_"): t for t in crt_plan(tmp_path).arms}
    prefix = "crt_features_crt_confirm_cs_mean_reduction_s7_"
    for task in confirmed.arms:
        assert task.settings == protocol[task.name.removeprefix(prefix)].settings
    only = run_all.build_crt_plans(
        SWEEPS, tmp_path / "runs", tmp_path / "results", protocol="crt_features", python="py",
        seeds=[1], arms=["softmax"],
    )  # fmt: skip
    assert {t.name for p in only for t in p.arms} == {
        f"crt_features_{d['run']}_s{d['seed']}_softmax_s1" for d in spec["detectors"]
    }
    with pytest.raises(run_all.SweepError, match="crt_features has no arm"):
        run_all.build_crt_plans(
            SWEEPS, tmp_path / "runs", tmp_path / "results", protocol="crt_features",
            arms=["cs_prior_count0"],
        )  # fmt: skip
    unknown = {**SWEEPS, "crt_features": {**spec, "detectors": [{"run": "t9_x", "seed": 0}]}}
    with pytest.raises(run_all.SweepError, match="neither a run of the sweep"):
        run_all.build_crt_plans(unknown, tmp_path, tmp_path, protocol="crt_features")
    outside = {**SWEEPS, "crt_features": {**spec, "detectors": [{"run": "t1_softmax", "seed": 9}]}}
    plans = run_all.build_crt_plans(outside, tmp_path, tmp_path, protocol="crt_features")
    assert plans[0].base.name == "t1_softmax_s9"  # any seed of a sweep run is a detector

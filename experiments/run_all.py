"""Run every sweep of experiments/sweeps.yaml, keep each finished run's small results in the
repository, and aggregate the tables and figures.

    python experiments/run_all.py --size converged --jobs 2 --threads 1   # `make experiments`
    python experiments/run_all.py --size converged --dry-run               # the plan, nothing run
    python experiments/run_all.py --protocol diagnosis --jobs 2 --threads 1  # diagnosis_sweep
    python experiments/run_all.py --protocol crt --threads 2                 # crt_protocol
    python experiments/run_all.py --protocol crt_features --threads 2        # crt_features
    python experiments/run_all.py --protocol crt_m0 --jobs 2 --threads 1     # crt_m0

Each task (a training run, a re-scoring of a checkpoint, or a re-evaluation on another
validation variant) runs in runs/experiments/<size>/<task>/ (checkpoints stay there, git-
ignored). When it finishes, its small results (resolved config, summary with every
evaluation, per-class AP of each evaluation, timings; no checkpoints, no images) are copied to
experiments/results/<size>/runs/<run id>/val-<variant>/seed<k>/, and a task whose results are
there is skipped: starting the command again, on any machine that has the repository,
continues the sweep. A training run cut short continues from its own checkpoint
(train.resume=auto). Seed 0 of every run comes first, then seed 1, and so on. At the end
experiments/aggregate.py writes the tables and figures to experiments/results/<size>/.

The protocols registered before their runs (sweeps.yaml `diagnosis_sweep:`, `crt_protocol:`,
`crt_m0:`) run with --protocol. `diagnosis`: one data root per benchmark (multi-label rate
m), the d_softmax / d_concurrent_softmax runs per seed and benchmark (seed by seed),
evaluated after the last two epochs only with per-image records kept for an image bootstrap;
results in experiments/results/diagnosis/ as above, with multi_labelled_classes.csv (the secondary
claim's classes). `crt`: the base detector the protocol names (trained as the converged sweep
trains it when its checkpoint is absent), its RoI features cached once, then every arm x seed
of `python -m lsdet.crt`, results in experiments/results/crt/; once every arm and seed has
its result, the confirmation `crt_protocol.confirm` implies (aggregate.choose_crt_confirmation): the
arm with the highest mean among those significantly above cs_default, trained in full on the
converged benchmark (crt_confirm_<arm>, t1_concurrent_softmax's preset with the arm's
overrides, seeds 0-7, results in experiments/results/crt/confirm/) and
t1_concurrent_softmax's seeds 3-7 beside the converged sweep's; none when no arm qualifies
(the command says so; --dry-run lists them). `crt_features` (post hoc, descriptive): the
listed cRT arms on the features of each detector of `crt_features.detectors` (a run of the
converged sweep or of the confirmation, and a seed: its checkpoint, trained again when it is
gone before any of its cRT results exist), results in
experiments/results/crt/features/<run>_s<seed>/. `crt_m0`: as `crt`, on the features of the
diagnosis sweep's m = 0 softmax detector (a diagnosis run, trained as that sweep trains it
when its checkpoint is absent), results in experiments/results/crt/m0/; no confirmation.
Each then aggregates the converged results folder, whose claims.md and registered.csv report
the registered claims.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aggregate  # experiments/aggregate.py, beside this script
import yaml

from lsdet.apps.launch import evaluate_command, train_command
from lsdet.engine.run_folder import EvaluationFolder, RunFolder

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SWEEPS = HERE / "sweeps.yaml"
DATA_CONFIG = REPO / "conf" / "data" / "synth.yaml"

# Overrides that say where or how fast a task runs, not what it computes: left out of the
# settings recorded with the results (a sweep may continue on another machine).
MACHINE_KEYS = (
    "hydra.",
    "train.threads=",
    "train.device=",
    "train.num_workers=",
    "train.eval_batch_size=",
    "train.resume=",
    "output_dir=",
    "cache_file=",
    "overwrite=",
    "checkpoint=",
    "device=",
    "num_workers=",
    "batch_size=",
)
# The files of an evaluation (the output folder of an evaluate task, eval/<tag>/ of a run).
EVALUATION_FILES = (
    EvaluationFolder.METRICS,
    EvaluationFolder.PER_CLASS,
    EvaluationFolder.FREQUENCY_BUCKETS,
)
# What is copied from a task's run folder into the repository (paths relative to it).
RESULT_FILES = (
    RunFolder.CONFIG,
    RunFolder.SUMMARY,
    RunFolder.DATA_REPORT,
    *EVALUATION_FILES,
    *(f"{RunFolder.evaluation_name('*')}/{name}" for name in EVALUATION_FILES),
    # the per-image records of an evaluation that kept them (train.eval_image_records: the
    # diagnosis runs), for experiments/bootstrap.py
    f"{RunFolder.evaluation_name('*')}/{EvaluationFolder.IMAGE_RECORDS}",
    # the trainer's concurrent rates r_ij of the training split (absent in older runs): the
    # per-class diagnosis of experiments/aggregate.py groups classes by them
    RunFolder.CONCURRENT_RATES,
)
RESULT_MARKER = "run.json"  # written last: a results folder without it is incomplete
# The secondary claim's classes of the diagnosis sweep (aggregate.py reads it by this name).
MULTI_LABELLED_CSV = "multi_labelled_classes.csv"


class SweepError(RuntimeError):
    """The sweep cannot go on as configured (the message says what to do)."""


@dataclass
class Task:
    """One command of the sweep: a training run ("train") or an evaluation of a training
    run's final checkpoint ("evaluate": a re-scoring or another validation variant)."""

    name: str  # <run id>_s<seed>, or <run id>_s<seed>_val-<variant>; the run folder's name
    kind: str  # train | evaluate
    row: str  # the run id of sweeps.yaml (a table row)
    seed: int
    variant: str  # validation variant of benchmark v2: as_train | clean
    command: list[str]
    run_dir: Path
    results_dir: Path
    data_root: str
    depends_on: list[str] = field(default_factory=list)
    checkpoint: Path | None = None  # evaluate tasks: the checkpoint they score
    # the file whose presence says the task finished (the cRT tasks: the RoI cache, an arm's
    # metrics.json); None: a training run's summary or an evaluation's metrics.json
    output: Path | None = None

    @property
    def settings(self) -> list[str]:
        """The overrides that define the task's result (recorded with it, checked on skip)."""
        args = self.command[3:]  # after "<python> -m <module>"
        return [self.command[2], *(a for a in args if not a.startswith(MACHINE_KEYS))]


# --------------------------------------------------------------------------- configuration
def load_sweeps(path: Path = SWEEPS) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def dotted(mapping: dict, prefix: str = "") -> list[str]:
    """key=value overrides of a nested mapping ({"a": {"b": [1, 2]}} -> ["a.b=[1,2]"])."""
    out = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            out += dotted(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            out.append(f"{prefix}{key}=[{','.join(str(v) for v in value)}]")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


def pinned_differences(size_cfg: dict, data_generate: dict) -> list[str]:
    """Where a size's pinned generator settings differ from the data config's `generate`
    block, other than the settings the size lists in `differs_from_data_config`: one line per
    setting (missing, unknown or another value). Empty when the pins are in sync."""
    pinned = _flat(size_cfg["data"]["generate"])
    defaults = _flat(data_generate)
    on_purpose = set(size_cfg.get("differs_from_data_config") or [])
    lines = []
    for key in sorted(set(pinned) | set(defaults)):
        if key in on_purpose:
            continue
        if key not in pinned:
            lines.append(f"generate.{key}: not pinned (data config: {defaults[key]!r})")
        elif key not in defaults:
            lines.append(f"generate.{key}: pinned {pinned[key]!r}, not in the data config")
        elif pinned[key] != defaults[key]:
            lines.append(f"generate.{key}: pinned {pinned[key]!r}, data config {defaults[key]!r}")
    return lines


def _flat(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def variant_data(size_cfg: dict, variant: str) -> dict:
    """The size's data settings for a validation variant: the size's own variant (its pinned
    `val_label_noise`) as pinned; another one in its own root (<root>_val-<variant>). The
    generator draws each split from its own random stream, so the training files are the
    same in both roots."""
    data = json.loads(json.dumps(size_cfg["data"]))  # a deep copy
    if variant == data["generate"]["val_label_noise"]:
        return data
    data["root"] = f"{data['root']}_val-{variant}"
    data["generate"]["val_label_noise"] = variant
    return data


def table_variants(sweeps: dict) -> dict[str, list[str]]:
    """Run id -> the validation variants some table reports it on (its own variant first)."""
    out: dict[str, list[str]] = {}
    for table in sweeps["tables"].values():
        for row in table["rows"]:
            for variant in table.get("validation") or []:
                if variant not in out.setdefault(row["run"], []):
                    out[row["run"]].append(variant)
    return out


# --------------------------------------------------------------------------- tasks
def build_tasks(
    sweeps: dict,
    size: str,
    out: Path,
    results: Path,
    seeds: list[int],
    *,
    python: str = sys.executable,
    threads: int | None = None,
    only: list[str] | None = None,
    extra: list[str] | None = None,
) -> list[Task]:
    """The sweep's tasks in run order: seed by seed, runs in the order of sweeps.yaml, each
    followed by the evaluations of its checkpoint (re-scorings, other validation variants)."""
    if size not in sweeps["sizes"]:
        raise SweepError(f"{SWEEPS}: no size {size!r} (sizes: {', '.join(sweeps['sizes'])})")
    size_cfg = sweeps["sizes"][size]
    own_variant = size_cfg["data"]["generate"]["val_label_noise"]
    common = common_overrides(sweeps, threads, extra)
    iterations = [f"train.max_iters_per_epoch={size_cfg['iterations_per_epoch']}"]
    variants = table_variants(sweeps)
    rescoring_of: dict[str, list[tuple[str, dict]]] = {}
    for rescore_id, spec in (sweeps.get("rescoring") or {}).items():
        if spec["from"] not in sweeps["runs"]:
            raise SweepError(f"{SWEEPS}: rescoring.{rescore_id}.from: no run {spec['from']!r}")
        rescoring_of.setdefault(spec["from"], []).append((rescore_id, spec))
    tasks = []
    for seed in seeds:
        for run_id, spec in sweeps["runs"].items():
            if only and run_id not in only:
                continue
            kind = spec.get("schedule", "single")
            if kind not in size_cfg["schedules"]:
                raise SweepError(f"{SWEEPS}: runs.{run_id}.schedule: no schedule {kind!r}")
            schedule = list(size_cfg["schedules"][kind]) + iterations
            data = variant_data(size_cfg, own_variant)
            task = training_task(
                run_id, spec, seed, own_variant, schedule + dotted(data, "data.") + common,
                data["root"], out, results, python=python,
            )  # fmt: skip
            name, run_dir = task.name, task.run_dir
            tasks.append(task)
            folder = RunFolder(run_dir)
            checkpoint = (
                folder.checkpoint_dir / spec["checkpoint"]
                if spec.get("checkpoint")
                else folder.phase_checkpoint("main")
            )
            scorings = [(run_id, {})] + [(r, s) for r, s in rescoring_of.get(run_id, [])]
            for row_id, rescore in scorings:
                for variant in variants.get(row_id, [own_variant]):
                    if row_id == run_id and variant == own_variant:
                        continue  # the training run's own evaluations
                    tasks.append(
                        evaluation_task(
                            row_id, rescore, seed, variant, size_cfg, checkpoint, out, results,
                            python=python, depends_on=name,
                        )
                    )  # fmt: skip
    return tasks


def common_overrides(sweeps: dict, threads: int | None, extra: list[str] | None) -> list[str]:
    """The overrides of every training run: sweeps.yaml's, the caller's, the threads."""
    common = list(sweeps.get("common_overrides", [])) + list(extra or [])
    if threads:
        common.append(f"train.threads={threads}")
    return common


def training_task(
    row: str,
    run: dict,
    seed: int,
    variant: str,
    settings: list[str],
    data_root: str,
    out: Path,
    results: Path,
    *,
    python: str,
) -> Task:
    """The training run of one row and seed: its preset and overrides (sweeps.yaml), then
    `settings` (schedule, data, common overrides), the seed and the run's name and folder."""
    name = f"{row}_s{seed}"
    run_dir = out / name
    overrides = [f"+experiment={run['experiment']}", *run.get("overrides", []), *settings]
    overrides += [f"seed={seed}", f"name={name}", f"hydra.run.dir={run_dir}"]
    results_dir = results / "runs" / row / f"val-{variant}" / f"seed{seed}"
    return Task(
        name, "train", row, seed, variant, train_command(overrides, python=python), run_dir,
        results_dir, data_root,
    )  # fmt: skip


def evaluation_task(
    row_id: str,
    rescore: dict,
    seed: int,
    variant: str,
    size_cfg: dict,
    checkpoint: Path,
    out: Path,
    results: Path,
    *,
    python: str,
    depends_on: str,
) -> Task:
    """`python -m lsdet.evaluate checkpoint=...` with the row's scoring and parent scores (as
    trained when the row is a training run) on a validation variant's data."""
    own = variant == size_cfg["data"]["generate"]["val_label_noise"]
    name = f"{row_id}_s{seed}" + ("" if own else f"_val-{variant}")
    run_dir = out / name
    data = variant_data(size_cfg, variant)
    # lsdet.evaluate estimates the concurrent rates of a checkpoint trained without them
    # (eq. 5 with R = 0 would be plain softmax).
    overrides = [
        f"{key}={rescore[key]}" for key in ("scoring", "parent_scores") if rescore.get(key)
    ]
    overrides += dotted(data, "data.")
    overrides += ["plot=false", f"output_dir={run_dir}", f"hydra.run.dir={run_dir}"]
    command = evaluate_command(checkpoint, overrides, python=python)
    results_dir = results / "runs" / row_id / f"val-{variant}" / f"seed{seed}"
    return Task(
        name, "evaluate", row_id, seed, variant, command, run_dir, results_dir, data["root"],
        [depends_on], checkpoint,
    )  # fmt: skip


# --------------------------------------------------------------------------- state of a task
def run_finished(task: Task) -> bool:
    """The task's run folder holds a finished run (its summary's status) or an evaluation,
    made with the task's settings (the runner's task.json there)."""
    if started_record(task).get("settings") != task.settings:
        return False
    if task.output is not None:
        return task.output.is_file()
    if task.kind == "train":
        return RunFolder(task.run_dir).finished()
    return EvaluationFolder(task.run_dir).metrics.is_file()


def recorded_result(task: Task) -> dict | None:
    """The run.json of the task's results in the repository, or None when there are none
    (or only an incomplete copy)."""
    path = task.results_dir / RESULT_MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def check_recorded(task: Task, data_hash: str | None) -> None:
    """Results in the repository must come from this task's settings and data (generator
    settings hash), else continuing would mix two sweeps: raises SweepError naming the
    folder. ``data_hash`` None (data not generated, e.g. a dry run) skips the data check."""
    record = recorded_result(task)
    if record is None:
        return
    if record["settings"] != task.settings:
        changed = sorted(set(record["settings"]) ^ set(task.settings))
        raise SweepError(
            f"{task.results_dir} was made with other settings than sweeps.yaml now gives "
            f"{task.name} (differing: {changed}); move that folder away to re-run the task, or "
            "restore the settings"
        )
    if data_hash is not None and record.get("data_settings_hash") not in (None, data_hash):
        raise SweepError(
            f"{task.results_dir} was made on other data (settings hash "
            f"{record['data_settings_hash']}, now {data_hash}: the generator or its pinned "
            "settings changed); move the size's results away to start the sweep again"
        )


def plan(tasks: list[Task], *, retrain_missing_checkpoints: bool = False) -> dict[str, str]:
    """What to do with each task: "done" (results in the repository), "collect" (finished in
    its run folder, results not copied yet), "run", "retrain" (a training run whose results
    are in the repository but whose checkpoint an evaluation still needs: trained again for
    the checkpoint only, its results kept) or "no checkpoint" (such an evaluation, skipped
    and reported unless retrain_missing_checkpoints)."""
    by_name = {t.name: t for t in tasks}
    actions = {}
    for task in tasks:
        if recorded_result(task) is not None:
            actions[task.name] = "done"
        elif run_finished(task):
            actions[task.name] = "collect"
        else:
            actions[task.name] = "run"
    for task in tasks:
        if task.kind != "evaluate" or actions[task.name] != "run":
            continue
        if task.checkpoint is not None and task.checkpoint.is_file():
            continue
        trainer = by_name.get(task.depends_on[0]) if task.depends_on else None
        if trainer is None or actions[trainer.name] == "run":
            continue  # the training run will write the checkpoint
        if retrain_missing_checkpoints:
            actions[trainer.name] = "retrain"
        else:
            actions[task.name] = "no checkpoint"
    return actions


# --------------------------------------------------------------------------- results
def copy_results(task: Task, *, data_hash: str | None, wall_seconds: float | None) -> Path:
    """Copies the task's small result files (RESULT_FILES; never checkpoints or images) from
    its run folder to its results folder and writes run.json last (settings, data hash, code
    version, timings): a copy cut short has no run.json and is made again. The code version
    is the commit the task was started with (its task.json), not the one at copying time."""
    task.results_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for pattern in RESULT_FILES:
        for source in sorted(task.run_dir.glob(pattern)):
            relative = source.relative_to(task.run_dir)
            target = task.results_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if relative == Path(RunFolder.SUMMARY):
                target.write_text(portable_summary(source.read_text()))
            else:
                target.write_bytes(source.read_bytes())
            copied.append(str(relative))
    record = {
        "task": task.name,
        "kind": task.kind,
        "row": task.row,
        "seed": task.seed,
        "validation": task.variant,
        "settings": task.settings,
        "data_settings_hash": data_hash,
        "git_commit": started_record(task).get("git_commit"),
        # when the runner started the task (its task.json; None for tasks started before the
        # runner recorded it): the aggregation marks a claim registered later as post hoc
        "started_at": started_record(task).get("started_at"),
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1),
        "collected_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "files": copied,
    }
    tmp = task.results_dir / (RESULT_MARKER + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, task.results_dir / RESULT_MARKER)
    return task.results_dir


def portable_summary(text: str) -> str:
    """A training summary for the repository: its run folder relative to the repository
    (the trainer records this machine's absolute path)."""
    summary = json.loads(text)
    if "run_dir" in summary:
        summary["run_dir"] = os.path.relpath(summary["run_dir"], REPO)
    return json.dumps(summary, indent=1) + "\n"


def started_record(task: Task) -> dict:
    """What the runner wrote into the task's task.json when it started it: the settings and
    the commit (no commit in a run folder from before the runner recorded it; {} when the
    runner never started the task there)."""
    recorded = task.run_dir / "task.json"
    return json.loads(recorded.read_text()) if recorded.is_file() else {}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def data_settings_hash(root: str | Path) -> str | None:
    """The generator's settings hash of a data root (its manifest.json), None if absent."""
    manifest = Path(root) / "manifest.json"
    return json.loads(manifest.read_text()).get("settings_hash") if manifest.is_file() else None


# --------------------------------------------------------------------------- running
@dataclass
class SweepReport:
    failed: list[str] = field(default_factory=list)
    no_checkpoint: list[str] = field(default_factory=list)  # evaluations skipped
    ran: int = 0


def run_tasks(
    tasks: list[Task],
    log_dir: Path,
    *,
    jobs: int,
    threads: int | None,
    jobs_file: Path | None = None,
    retrain_missing_checkpoints: bool = False,
    actions: dict[str, str] | None = None,
) -> SweepReport:
    """Runs what `plan` says (or `actions`, a plan made by the caller), at most `jobs` at a time (or the number written in `jobs_file`,
    read again before every start), dependencies first; copies each finished task's results
    into the repository at once. Returns the failures (their dependants are skipped too) and
    the evaluations skipped for a missing checkpoint."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "disabled")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    hashes: dict[str, str | None] = {}

    def data_hash(task: Task) -> str | None:
        if task.data_root not in hashes:
            hashes[task.data_root] = data_settings_hash(task.data_root)
        return hashes[task.data_root]

    for task in tasks:
        check_recorded(task, data_hash(task))
    if actions is None:
        actions = plan(tasks, retrain_missing_checkpoints=retrain_missing_checkpoints)
    report = SweepReport(no_checkpoint=[n for n, a in actions.items() if a == "no checkpoint"])
    for task in tasks:
        if actions[task.name] == "collect":
            copy_results(task, data_hash=data_hash(task), wall_seconds=None)
    done = {n for n, a in actions.items() if a in ("done", "collect")}
    pending = [t for t in tasks if actions[t.name] in ("run", "retrain")]
    running: dict[str, tuple[subprocess.Popen, float, Task]] = {}
    total = len(pending)
    print(
        f"{len(tasks)} tasks: {len(done)} done, {total} to run ({jobs} at a time), "
        f"{len(report.no_checkpoint)} skipped for a missing checkpoint",
        flush=True,
    )
    finished = 0
    while pending or running:
        for name, (proc, start, task) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            finished += 1
            minutes = (time.time() - start) / 60
            ok = proc.returncode == 0 and run_finished(task)
            if ok and actions[name] != "retrain":
                copy_results(task, data_hash=data_hash(task), wall_seconds=time.time() - start)
            if ok:
                done.add(name)
                status = "ok" + (" (checkpoint only, results kept)" * (actions[name] == "retrain"))
            else:
                report.failed.append(name)
                status = f"FAILED (exit {proc.returncode}, log {log_dir / name}.log)"
            print(f"[{finished}/{total}] {name}: {status} in {minutes:.1f} min", flush=True)
        if jobs_file is not None and jobs_file.is_file():
            jobs = max(1, int(jobs_file.read_text().strip() or jobs))
        for task in list(pending):
            if len(running) >= jobs:
                break
            if any(dep in report.failed for dep in task.depends_on):
                pending.remove(task)
                report.failed.append(task.name)
                print(f"{task.name}: skipped, {task.depends_on} failed", flush=True)
                continue
            if not all(dep in done for dep in task.depends_on):
                continue
            pending.remove(task)
            task.run_dir.mkdir(parents=True, exist_ok=True)
            started = {
                "settings": task.settings,
                "git_commit": _git_commit(),
                "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
            }
            (task.run_dir / "task.json").write_text(json.dumps(started))
            log = open(log_dir / f"{task.name}.log", "w")  # noqa: SIM115 (closed by the child)
            log.write("+ " + " ".join(task.command) + "\n")
            log.flush()
            proc = subprocess.Popen(task.command, stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            running[task.name] = (proc, time.time(), task)
            report.ran += 1
            print(f"started {task.name} ({time.strftime('%H:%M:%S')})", flush=True)
        if pending or running:
            time.sleep(2)
    return report


# --------------------------------------------------------------------------- protocols
# The final metric the diagnosis sweep registered (sweeps.yaml diagnosis_sweep.final_metric):
# the mean of the per-class APs of the last two evaluations, so the runs evaluate after the
# last two epochs of the schedule only (train.eval_epochs) and keep per-image records of
# those evaluations for an image bootstrap (experiments/bootstrap.py).
DIAGNOSIS_FINAL_METRIC = "mean_of_last_two_evaluations"
DIAGNOSIS_EVALUATION = ["train.eval_every=epoch"]
DIAGNOSIS_RECORDS = "train.eval_image_records=true"


def schedule_epochs(schedule: list[str]) -> int:
    """The number of epochs a size's schedule overrides give (the sum over its phases'
    `schedule.phases.<name>.epochs=<n>`)."""
    epochs = [
        int(o.split("=", 1)[1])
        for o in schedule
        if o.startswith("schedule.phases.") and o.split("=", 1)[0].endswith(".epochs")
    ]
    if not epochs:
        raise SweepError(f"{SWEEPS}: the schedule {schedule} gives no schedule.phases.*.epochs")
    return sum(epochs)


def diagnosis_evaluation_overrides(spec: dict) -> list[str]:
    """The evaluation settings of the diagnosis runs: after the last two epochs only (the
    registered final metric), with per-image records."""
    if spec.get("final_metric") != DIAGNOSIS_FINAL_METRIC:
        raise SweepError(
            f"{SWEEPS}: diagnosis_sweep.final_metric={spec.get('final_metric')!r}; the runner "
            f"knows {DIAGNOSIS_FINAL_METRIC!r}"
        )
    last = schedule_epochs(spec["size"]["schedules"]["single"])
    return [*DIAGNOSIS_EVALUATION, f"train.eval_epochs=[{last - 1},{last}]", DIAGNOSIS_RECORDS]


def benchmark_data(spec: dict, benchmark: str) -> dict:
    """The data settings of one diagnosis benchmark: the protocol size's, with the
    benchmark's root and multi-label rate."""
    data = json.loads(json.dumps(spec["size"]["data"]))  # a deep copy
    settings = spec["benchmarks"][benchmark]
    data["root"] = settings["root"]
    data["generate"]["multi_label_rate"] = settings["multi_label_rate"]
    return data


def build_diagnosis_tasks(
    sweeps: dict,
    out: Path,
    results: Path,
    seeds: list[int],
    *,
    python: str = sys.executable,
    threads: int | None = None,
    only: list[str] | None = None,
    extra: list[str] | None = None,
) -> list[Task]:
    """The diagnosis sweep's training runs (sweeps.yaml `diagnosis_sweep:`) in run order:
    seed by seed, and within a seed the benchmarks and runs in their registered order, so that
    a sweep cut short has whole (m, seed) pairs. A row is `<run id>_<benchmark>` (what
    experiments/aggregate.py pairs); `only` selects run ids or rows."""
    spec = sweeps["diagnosis_sweep"]
    size_cfg = spec["size"]
    variant = size_cfg["data"]["generate"]["val_label_noise"]
    common = common_overrides(sweeps, threads, extra)
    schedule = list(size_cfg["schedules"]["single"])
    schedule += [f"train.max_iters_per_epoch={size_cfg['iterations_per_epoch']}"]
    schedule += diagnosis_evaluation_overrides(spec)
    tasks = []
    for seed in seeds:
        for benchmark in spec["benchmarks"]:
            data = benchmark_data(spec, benchmark)
            for run_id, run in spec["runs"].items():
                row = f"{run_id}_{benchmark}"
                if only and run_id not in only and row not in only:
                    continue
                tasks.append(
                    training_task(
                        row, run, seed, variant, schedule + dotted(data, "data.") + common,
                        data["root"], out, results, python=python,
                    )
                )  # fmt: skip
    return tasks


def generate_benchmarks(
    spec: dict, python: str = sys.executable, only: list[str] | None = None
) -> list[str]:
    """Writes (or finds up to date) the data root of every diagnosis benchmark (or of those in
    ``only``), once up front; returns the roots in the registered order."""
    roots = []
    for benchmark in spec["benchmarks"]:
        if only is not None and benchmark not in only:
            continue
        data = benchmark_data(spec, benchmark)
        subprocess.run([python, "-m", "lsdet.data.synth", *dotted(data)], check=True)
        roots.append(data["root"])
    return roots


def write_multi_labelled_classes(spec: dict, path: Path) -> Path:
    """The secondary claim's classes (diagnosis.multi_labelled_leaves: the leaves with at
    least `multi_labelled_min_share` of their training objects carrying two leaf labels) of
    every benchmark, as benchmark,mid rows. A file already there with other rows is an
    error: it was made from other benchmarks."""
    from diagnosis import multi_labelled_leaves  # experiments/diagnosis.py

    rows = []
    for benchmark in spec["benchmarks"]:
        root = Path(benchmark_data(spec, benchmark)["root"])
        leaves = multi_labelled_leaves(
            root / "train-objects.csv",
            root / "hierarchy.json",
            float(spec["multi_labelled_min_share"]),
        )
        rows += [f"{benchmark},{mid}" for mid in leaves]
    text = "\n".join(["benchmark,mid", *rows]) + "\n"
    if path.is_file() and path.read_text() != text:
        raise SweepError(
            f"{path} lists other multi-labelled classes than the benchmarks now give (were the "
            "benchmarks generated with other settings?); move it away to write it again"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


PROTOCOL_BLOCKS = {
    "diagnosis": "diagnosis_sweep",
    "crt": "crt_protocol",
    "crt_features": "crt_features",
    "crt_m0": "crt_m0",
}


@dataclass
class CrtPlan:
    """The tasks of the cRT protocol: the base detector's training run (a task of its size's
    sweep), the RoI cache of its checkpoint and one task per arm and seed."""

    base: Task
    checkpoint: Path
    cache: Task
    arms: list[Task]

    @property
    def tasks(self) -> list[Task]:
        return [self.base, self.cache, *self.arms]


def crt_detector_plan(
    base: Task,
    checkpoint: Path,
    crt_dir: Path,
    results_dir: Path,
    arms: dict[str, list[str]],
    seeds: list[int],
    *,
    name: str,
    python: str = sys.executable,
) -> CrtPlan:
    """The cRT tasks of one detector (its training run ``base`` and its ``checkpoint``):
    `python -m lsdet.crt stage=cache` into <crt_dir>/roi_cache.pt (task <name>_cache, results
    <results_dir>/cache), then per seed every arm (`arm=<arm> seeds=[<seed>]` with the arm's
    overrides; task <name>_<arm>_s<seed>) in <crt_dir>/runs/<arm>/val-as_train/seed<k>/, whose
    small results go to <results_dir>/runs/<arm>/val-as_train/seed<k>/ (the classifier.pt stays
    in the run folder)."""
    cache_file = crt_dir / "roi_cache.pt"
    common = [
        f"checkpoint={checkpoint}",
        f"output_dir={crt_dir}",
        f"cache_file={cache_file}",
        "progress=false",
    ]
    module = [python, "-m", "lsdet.crt"]
    variant = "as_train"  # conf/crt.yaml `validation`: the checkpoint's own validation split
    cache = Task(
        f"{name}_cache", "cache", f"{name}_cache", base.seed, variant,
        [*module, *common, "stage=cache"], crt_dir,
        results_dir / "cache", base.data_root, [base.name], checkpoint,
        output=cache_file,
    )  # fmt: skip
    arm_tasks = []
    for seed in seeds:
        for arm, overrides in arms.items():
            run_dir = crt_dir / "runs" / arm / f"val-{variant}" / f"seed{seed}"
            command = [*module, *common, f"arm={arm}", f"seeds=[{seed}]", *overrides]
            # a run folder left by a task cut short holds a classifier without metrics: the
            # task is run again over it (the runner re-runs only unfinished tasks)
            command += ["stage=all", "overwrite=true"]
            arm_tasks.append(
                Task(
                    f"{name}_{arm}_s{seed}", "crt", arm, seed, variant, command, run_dir,
                    results_dir / "runs" / arm / f"val-{variant}" / f"seed{seed}",
                    base.data_root, [cache.name], checkpoint,
                    output=EvaluationFolder(run_dir).metrics,
                )
            )  # fmt: skip
    return CrtPlan(base, checkpoint, cache, arm_tasks)


def _chosen_arms(spec_arms: dict, arms: list[str] | None, where: str) -> dict[str, list[str]]:
    unknown = sorted(set(arms or []) - set(spec_arms))
    if unknown:
        raise SweepError(f"{SWEEPS}: {where} has no arm {unknown} (arms: {list(spec_arms)})")
    return {arm: overrides for arm, overrides in spec_arms.items() if not arms or arm in arms}


def detector_training_task(
    sweeps: dict,
    detector: dict,
    runs_root: Path,
    results_root: Path,
    *,
    python: str = sys.executable,
    threads: int | None = None,
) -> Task:
    """The training run of a cRT detector as the sweep that owns it makes it: {benchmark, run,
    seed} a run of the diagnosis sweep on that benchmark (row <run>_<benchmark>, run folder
    under <runs_root>/<diagnosis size>/, results under <results_root>/<diagnosis results>/);
    {size, run, seed} a run of that size's sweep (run folder under <runs_root>/<size>/,
    results under <results_root>/<size>/) or, for run crt_confirm_<arm>, of the cRT
    confirmation (build_crt_confirmation_tasks)."""
    seed, run_id = int(detector["seed"]), detector["run"]
    if "benchmark" in detector:
        spec = sweeps["diagnosis_sweep"]
        if detector["benchmark"] not in spec["benchmarks"]:
            raise SweepError(
                f"{SWEEPS}: a cRT detector names benchmark {detector['benchmark']!r}; "
                f"diagnosis_sweep.benchmarks has {list(spec['benchmarks'])}"
            )
        tasks = build_diagnosis_tasks(
            sweeps, runs_root / spec["size"]["name"], results_root / spec["results"], [seed],
            python=python, threads=threads, only=[f"{run_id}_{detector['benchmark']}"],
        )  # fmt: skip
    elif run_id in sweeps["runs"]:
        size = detector["size"]
        tasks = build_tasks(
            sweeps, size, runs_root / size, results_root / size, [seed],
            python=python, threads=threads, only=[run_id],
        )  # fmt: skip
    elif run_id.startswith("crt_confirm_"):
        tasks = build_crt_confirmation_tasks(
            sweeps, run_id.removeprefix("crt_confirm_"), runs_root, results_root,
            python=python, threads=threads,
        )  # fmt: skip
        tasks = [t for t in tasks if t.name == f"{run_id}_s{seed}"]
    else:
        raise SweepError(
            f"{SWEEPS}: the cRT detector {run_id!r} is neither a run of the sweep nor a "
            "crt_confirm_<arm> run of the cRT confirmation"
        )
    base = next((t for t in tasks if t.kind == "train"), None)
    if base is None:
        raise SweepError(
            f"{SWEEPS}: the cRT detector {run_id!r} has no training run of seed {seed}"
        )
    return base


def build_crt_plans(
    sweeps: dict,
    runs_root: Path,
    results_root: Path,
    *,
    protocol: str = "crt",
    python: str = sys.executable,
    threads: int | None = None,
    seeds: list[int] | None = None,
    arms: list[str] | None = None,
) -> list[CrtPlan]:
    """A cRT protocol's tasks, one CrtPlan per detector: its training run
    (detector_training_task), then crt_detector_plan's cache and arm tasks. `crt`
    (sweeps.yaml `crt_protocol:`) and `crt_m0` (`crt_m0:`): the block's one detector and
    arms, tasks in <runs_root>/<protocol>/, results in <results_root>/<block's results>/.
    `crt_features`: every listed detector (a run of the cRT detector's size, or a
    crt_confirm_<arm> run, and a seed) with the listed arms of `crt_protocol.arms`, tasks in
    <runs_root>/crt_features/<run>_s<seed>/, results in <results_root>/<crt_features
    results>/<run>_s<seed>/. ``seeds`` and ``arms`` select among the registered ones."""
    block = PROTOCOL_BLOCKS[protocol]
    spec = sweeps[block]
    if protocol == "crt_features":
        crt = sweeps["crt_protocol"]
        registered = _chosen_arms(crt["arms"], spec["arms"], "crt_protocol")
        located = []  # (detector, task folder, results folder, task name prefix)
        for listed in spec["detectors"]:
            detector = {**crt["detector"], "run": listed["run"], "seed": listed["seed"]}
            label = f"{listed['run']}_s{listed['seed']}"
            located.append(
                (detector, runs_root / protocol / label, results_root / spec["results"] / label,
                 f"{protocol}_{label}")
            )  # fmt: skip
    else:
        registered = spec["arms"]
        located = [
            (spec["detector"], runs_root / protocol, results_root / spec["results"], protocol)
        ]
    chosen = _chosen_arms(registered, arms, block)
    plans = []
    for detector, crt_dir, results_dir, name in located:
        base = detector_training_task(
            sweeps, detector, runs_root, results_root, python=python, threads=threads
        )
        plans.append(
            crt_detector_plan(
                base,
                RunFolder(base.run_dir).checkpoint_dir / detector["checkpoint"],
                crt_dir,
                results_dir,
                chosen,
                spec["seeds"] if seeds is None else seeds,
                name=name,
                python=python,
            )
        )
    return plans


def plan_crt(crt: CrtPlan) -> dict[str, str]:
    """`plan` for the cRT tasks, with what they need that is not a result: the RoI cache file
    (made again when an arm still has to run and the file is gone) and the detector's
    checkpoint (its run trained again for it, its results kept, when the cache or an arm has to
    run and the checkpoint is gone)."""
    actions = plan(crt.tasks)
    arms_to_run = any(actions[t.name] == "run" for t in crt.arms)
    if arms_to_run and actions[crt.cache.name] == "done" and not crt.cache.output.is_file():
        actions[crt.cache.name] = "retrain"
    needs_checkpoint = arms_to_run or actions[crt.cache.name] in ("run", "retrain")
    if needs_checkpoint and not crt.checkpoint.is_file():
        if actions[crt.base.name] in ("done", "collect"):
            actions[crt.base.name] = "retrain"
        # a detector trained now is not the one whose features the cache or the arms' results
        # hold: continuing would mix two detectors
        made = [t.name for t in crt.arms if actions[t.name] in ("done", "collect")]
        if crt.cache.output.is_file():
            made.insert(0, f"the RoI cache {crt.cache.output}")
        if made:
            raise SweepError(
                f"the detector checkpoint {crt.checkpoint} is gone, but the cRT protocol has "
                f"results made from it ({', '.join(made)}); restore the checkpoint, or move the "
                "cache and the protocol's results away to start it again"
            )
    return actions


def build_crt_confirmation_tasks(
    sweeps: dict,
    arm: str,
    runs_root: Path,
    results_root: Path,
    *,
    python: str = sys.executable,
    threads: int | None = None,
) -> list[Task]:
    """The full training of `crt_protocol.confirm` for a chosen arm: run id
    crt_confirm_<arm>, the preset of the run it is confirmed against (t1_concurrent_softmax)
    with that run's overrides and the arm's, on the detector's size (converged) for the
    registered seeds (run folders under <runs_root>/<size>/, results under
    <results_root>/<cRT results>/confirm/runs/), and the training runs of the run it is
    judged against for the seeds its size's sweep does not have (seeds 3-7), as that
    sweep's tasks (results beside the sweep's, <results_root>/<size>/runs/). Seed by seed,
    the arm before the baseline, so that a sweep cut short leaves complete seed pairs."""
    spec = sweeps["crt_protocol"]
    confirm = spec["confirm"]
    against = confirm["against"]
    if arm not in spec["arms"]:
        raise SweepError(f"{SWEEPS}: crt_protocol has no arm {arm!r}")
    if against not in sweeps["runs"]:
        raise SweepError(f"{SWEEPS}: crt_protocol.confirm.against: no run {against!r}")
    size = spec["detector"]["size"]
    seeds = [int(s) for s in confirm["seeds"]]
    base = sweeps["runs"][against]
    run_id = f"crt_confirm_{arm}"
    run = {**base, "overrides": [*base.get("overrides", []), *spec["arms"][arm]]}
    with_arm = {**sweeps, "runs": {**sweeps["runs"], run_id: run}}
    arm_tasks = build_tasks(
        with_arm, size, runs_root / size, results_root / spec["results"] / "confirm", seeds,
        python=python, threads=threads, only=[run_id],
    )  # fmt: skip
    added = [s for s in seeds if s not in {int(k) for k in sweeps["seeds"]}]
    baseline = build_tasks(
        sweeps, size, runs_root / size, results_root / size, added,
        python=python, threads=threads, only=[against],
    )  # fmt: skip
    return sorted((t for t in arm_tasks + baseline if t.kind == "train"), key=lambda t: t.seed)


def crt_confirmation(
    args: argparse.Namespace, sweeps: dict, runs_root: Path, results_root: Path
) -> tuple[list[Task], str]:
    """The confirmation tasks the recorded cRT results imply and the line that says why:
    none while they are incomplete or when no arm qualifies."""
    choice = aggregate.choose_crt_confirmation(sweeps, results_root)
    line = f"cRT confirmation: {choice.reason}"
    if choice.arm is None:
        return [], line
    tasks = build_crt_confirmation_tasks(
        sweeps, choice.arm, runs_root, results_root, threads=args.threads
    )
    return tasks, line


def generate_data(sweeps: dict, size: str, python: str = sys.executable) -> list[str]:
    """Writes (or finds up to date) the data roots of a size's validation variants, once up
    front so that parallel runs do not race to write them; returns the roots."""
    size_cfg = sweeps["sizes"][size]
    own = size_cfg["data"]["generate"]["val_label_noise"]
    roots = []
    for variant in [own, *{v for vs in table_variants(sweeps).values() for v in vs} - {own}]:
        data = variant_data(size_cfg, variant)
        subprocess.run([python, "-m", "lsdet.data.synth", *dotted(data)], check=True)
        roots.append(data["root"])
    return roots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/run_all.py", description=__doc__)
    parser.add_argument("--size", default="converged", help="a size of sweeps.yaml")
    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOL_BLOCKS),
        default=None,
        help="run a protocol of sweeps.yaml (diagnosis_sweep, crt_protocol, crt_features, crt_m0) "
        "instead of a size's sweep",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="run folders (runs/experiments/<size>; with --protocol: runs/experiments)",
    )
    parser.add_argument(
        "--results",
        default=None,
        help="results (experiments/results/<size>; with --protocol the folder that holds the "
        "protocol's and the converged results: experiments/results)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: sweeps.yaml")
    parser.add_argument("--runs", nargs="+", default=None, help="only these run ids")
    parser.add_argument("--jobs", type=int, default=1, help="tasks at the same time")
    parser.add_argument("--jobs-file", default=None, help="a file holding the number of jobs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per task")
    parser.add_argument(
        "--retrain-missing-checkpoints",
        action="store_true",
        help="train a run again when an evaluation needs its checkpoint and only its results "
        "are left (default: skip the evaluation and report it)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    parser.add_argument("--no-aggregate", action="store_true", help="skip the tables/figures")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of every training run")
    args = parser.parse_args(argv)

    sweeps = load_sweeps()
    if args.protocol is not None:
        try:
            return run_protocol(args, sweeps)
        except SweepError as error:
            raise SystemExit(f"error: {error}") from None
    out = Path(args.out or f"runs/experiments/{args.size}")
    results = Path(args.results or HERE / "results" / args.size)
    seeds = args.seeds if args.seeds is not None else list(sweeps["seeds"])
    with open(DATA_CONFIG) as f:
        differences = pinned_differences(sweeps["sizes"][args.size], yaml.safe_load(f)["generate"])
    for line in differences:
        print(f"note: sweeps.yaml sizes.{args.size} vs {DATA_CONFIG.name}: {line}")
    try:
        return _run(args, sweeps, out, results, seeds)
    except SweepError as error:
        raise SystemExit(f"error: {error}") from None


def _run(args: argparse.Namespace, sweeps: dict, out: Path, results: Path, seeds: list[int]):
    tasks = build_tasks(
        sweeps,
        args.size,
        out,
        results,
        seeds,
        threads=args.threads,
        only=args.runs,
        extra=args.overrides,
    )
    if args.dry_run:
        for task in tasks:
            check_recorded(task, None)
        actions = plan(tasks, retrain_missing_checkpoints=args.retrain_missing_checkpoints)
        for task in tasks:
            print(f"[{actions[task.name]}] " + " ".join(task.command))
        counts = {a: list(actions.values()).count(a) for a in sorted(set(actions.values()))}
        print(f"{len(tasks)} tasks: {counts}")
        return 0
    roots = generate_data(sweeps, args.size)
    # The class hierarchy beside the results: the aggregation splits leaf and parent classes.
    results.mkdir(parents=True, exist_ok=True)
    (results / "hierarchy.json").write_bytes((Path(roots[0]) / "hierarchy.json").read_bytes())
    start = time.time()
    report = run_tasks(
        tasks,
        out / "logs",
        jobs=args.jobs,
        threads=args.threads,
        jobs_file=Path(args.jobs_file) if args.jobs_file else None,
        retrain_missing_checkpoints=args.retrain_missing_checkpoints,
    )
    print(
        f"sweep: {(time.time() - start) / 60:.1f} min, {report.ran} tasks run, "
        f"{len(report.failed)} failed: {report.failed}"
    )
    if report.no_checkpoint:
        print(
            f"{len(report.no_checkpoint)} evaluations skipped: their training run's results are "
            f"in {results} but its checkpoint is gone ({report.no_checkpoint}); run again with "
            "--retrain-missing-checkpoints to train those seeds again for the checkpoint"
        )
    if not args.no_aggregate:
        from aggregate import main as aggregate_main  # experiments/aggregate.py

        aggregate_main(["--results", str(results)])
    return 1 if report.failed else 0


def run_protocol(args: argparse.Namespace, sweeps: dict) -> int:
    """`--protocol diagnosis | crt | crt_features | crt_m0`: the tasks of a protocol, run (or
    listed with --dry-run) as a size's sweep is, then the converged results aggregated again
    (their claims.md and registered.csv report the protocols' claims)."""
    spec = sweeps[PROTOCOL_BLOCKS[args.protocol]]
    runs_root = Path(args.out or "runs/experiments")
    results_root = Path(args.results or HERE / "results")
    results = results_root / spec["results"]
    if args.protocol == "diagnosis":
        seeds = args.seeds if args.seeds is not None else list(spec["seeds"])
        tasks = build_diagnosis_tasks(
            sweeps, runs_root / spec["size"]["name"], results, seeds,
            threads=args.threads, only=args.runs, extra=args.overrides,
        )  # fmt: skip
        actions = None
        log_dir = runs_root / spec["size"]["name"] / "logs"
    else:
        if args.overrides:
            raise SweepError(
                f"--protocol {args.protocol} takes no extra overrides ({args.overrides}): the "
                "arms' settings are registered in sweeps.yaml "
                f"{PROTOCOL_BLOCKS[args.protocol]}.arms"
            )
        chosen = {"threads": args.threads, "seeds": args.seeds, "arms": args.runs}
        plans = build_crt_plans(sweeps, runs_root, results_root, protocol=args.protocol, **chosen)
        tasks = [task for crt in plans for task in crt.tasks]
        actions = {name: action for crt in plans for name, action in plan_crt(crt).items()}
        log_dir = runs_root / args.protocol / "logs"
    confirmation_line = ""
    if args.protocol == "crt" and args.dry_run:
        # the confirmation the recorded cRT results imply, listed after the cRT tasks
        confirmation, confirmation_line = crt_confirmation(args, sweeps, runs_root, results_root)
        tasks = tasks + confirmation
        actions = {**actions, **plan(confirmation)}
    if args.dry_run:
        for task in tasks:
            check_recorded(task, None)
        if actions is None:
            actions = plan(tasks)
        for task in tasks:
            print(f"[{actions[task.name]}] " + " ".join(task.command))
        if confirmation_line:
            print(confirmation_line)
        counts = {a: list(actions.values()).count(a) for a in sorted(set(actions.values()))}
        print(f"{len(tasks)} tasks: {counts}")
        return 0
    if args.protocol == "diagnosis":
        roots = generate_benchmarks(spec)
        results.mkdir(parents=True, exist_ok=True)
        (results / "hierarchy.json").write_bytes((Path(roots[0]) / "hierarchy.json").read_bytes())
        written = write_multi_labelled_classes(spec, results / MULTI_LABELLED_CSV)
        print(f"multi-labelled classes of the benchmarks: {written}")
    elif "benchmark" in spec.get("detector", {}):  # a diagnosis benchmark's detector
        generate_benchmarks(sweeps["diagnosis_sweep"], only=[spec["detector"]["benchmark"]])
    else:
        size_cfg = sweeps["sizes"][sweeps["crt_protocol"]["detector"]["size"]]
        data = variant_data(size_cfg, size_cfg["data"]["generate"]["val_label_noise"])
        subprocess.run([sys.executable, "-m", "lsdet.data.synth", *dotted(data)], check=True)
    jobs_file = Path(args.jobs_file) if args.jobs_file else None

    def run(batch: list[Task], **kwargs) -> SweepReport:
        return run_tasks(
            batch, log_dir, jobs=args.jobs, threads=args.threads, jobs_file=jobs_file, **kwargs
        )

    start = time.time()
    report = run(tasks, actions=actions)
    print(
        f"{spec['results']}: {(time.time() - start) / 60:.1f} min, {report.ran} tasks run, "
        f"{len(report.failed)} failed: {report.failed}"
    )
    if args.protocol == "crt" and not report.failed:
        confirmation, line = crt_confirmation(args, sweeps, runs_root, results_root)
        print(line)
        if confirmation:
            start = time.time()
            confirmed = run(confirmation)
            print(
                f"cRT confirmation: {(time.time() - start) / 60:.1f} min, {confirmed.ran} tasks "
                f"run, {len(confirmed.failed)} failed: {confirmed.failed}"
            )
            report.failed += confirmed.failed
    converged = results_root / "converged"
    if not args.no_aggregate and converged.is_dir():
        from aggregate import main as aggregate_main  # experiments/aggregate.py

        aggregate_main(["--results", str(converged)])
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())

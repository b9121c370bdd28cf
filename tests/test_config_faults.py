"""Config and launch faults: out-of-range thresholds, IoUs and fractions, unparsable numbers,
a refused start that must leave its run folder as it was, a read-only run folder, and the
resume command printed after an interrupted run or sweep."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write
from train_helpers import CONF_DIR, compose_train, tiny_overrides

from lsdet.config_schema.checks import check_training_config, schema_rules
from lsdet.config_schema.settings import RANGE
from lsdet.data.synth import ensure_synthetic_benchmark
from lsdet.engine.run_folder import RunFolderNotWritableError, check_writable
from lsdet.engine.signals import resume_advice
from lsdet.engine.trainer import name_as_written

REPO = Path(__file__).resolve().parents[1]

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # No detection is kept at a score threshold of 1 or more (scores are <= 1).
        (
            ["model.roi.score_thresh=2"],
            r"model\.roi\.score_thresh=2\.0: expected a number >= 0 and < 1",
        ),
        (["model.roi.score_thresh=1"], r"model\.roi\.score_thresh=1\.0: expected"),
        (["rates.iou_threshold=1.5"], r"rates\.iou_threshold=1\.5: expected a number > 0 and <= 1"),
        (
            ["model.roi.fg_iou_thresh=-0.5"],
            r"model\.roi\.fg_iou_thresh=-0\.5: expected a number >= 0",
        ),
        (
            ["model.roi.bg_iou_thresh=0.7"],
            r"model\.roi\.bg_iou_thresh=0\.7 is above model\.roi\.fg",
        ),
        (
            ["model.rpn.nms_thresh=1.2"],
            r"model\.rpn\.nms_thresh=1\.2: expected a number >= 0 and <= 1",
        ),
        (
            ["model.roi.positive_fraction=0"],
            r"model\.roi\.positive_fraction=0\.0: expected a number > 0",
        ),
        (["model.prior_prob=1"], r"model\.prior_prob=1\.0: expected a number > 0 and < 1"),
        (["rates.floor=-0.1"], r"rates\.floor=-0\.1: expected"),
        (["loss.beta=1"], r"loss\.beta=1\.0: expected a number >= 0 and < 1"),
        (["loss=co_bce", "loss.cooccur_threshold=2"], r"loss\.cooccur_threshold=2\.0: expected"),
        (["loss=focal", "loss.alpha=1.5"], r"loss\.alpha=1\.5: expected a number <= 1"),
        (
            ["sampler=repeat_factor", "sampler.repeat_threshold=5"],
            r"sampler\.repeat_threshold=5\.0: expected",
        ),
        (["sampler=soft_balance", "sampler.lam=-1"], r"sampler\.lam=-1\.0: expected a number >= 0"),
        (
            ["schedule=hybrid", "schedule.phases.pretrain.lr.warmup_factor=2"],
            r"schedule\.phases\.pretrain\.lr\.warmup_factor=2\.0: expected a number > 0 and <= 1",
        ),
    ],
)
def test_thresholds_ious_and_fractions_are_range_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_training_config(compose_train(overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=abc"], r"seed='abc': expected an integer >= 0"),
        (["seed=-1"], r"seed=-1: expected an integer >= 0"),
    ],
)
def test_unparsable_numbers_name_their_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_training_config(compose_train(overrides))


@pytest.mark.parametrize(
    ("override", "full_key"),
    [
        ("schedule.phases.main.epochs=two", "schedule.phases.main.epochs"),
        ("train.batch_size=abc", "train.batch_size"),
        ("model.roi.score_thresh=low", "model.roi.score_thresh"),
        ("schedule.phases.main.lr.milestones=[a]", "schedule.phases.main.lr.milestones"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_by_hydra_naming_the_key(override, full_key):
    with pytest.raises(ConfigCompositionException) as caught:
        compose_train([override])
    assert f"full_key: {full_key}" in f"{caught.value} {caught.value.__cause__}"


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_passes_the_checks(preset):
    check_training_config(compose_train([f"+experiment={preset}"]))


@pytest.mark.parametrize("loss", sorted(p.stem for p in (CONF_DIR / "loss").glob("*.yaml")))
def test_every_loss_passes_the_checks_with_its_defaults(loss):
    check_training_config(compose_train([f"loss={loss}"]))


def test_every_threshold_iou_and_fraction_key_of_conf_is_checked():
    # Every number of these groups whose name says threshold, IoU, fraction, probability, rate
    # or lambda has a range in its schema (lsdet.config_schema).
    words = ("thresh", "iou", "fraction", "prob", "rate", "floor", "lam", "beta")
    for overrides in (["sampler=repeat_factor", "schedule=hybrid"], ["loss=co_bce"]):
        cfg = compose_train(overrides)
        ranged = {key for key, _, rule in schema_rules(cfg) if RANGE in rule}
        keys = [
            key
            for group in ("model", "rates", "loss", "sampler", "schedule", "optim")
            for key, value in _leaves(cfg[group], group)
            if any(w in key.rsplit(".", 1)[-1] for w in words)
            and not isinstance(value, (str, bool))
        ]
        assert [k for k in keys if k not in ranged] == []
    assert {"model.roi.score_thresh", "rates.iou_threshold", "loss.cooccur_threshold"} <= (
        ranged | set(keys)
    )


def _leaves(node, prefix):
    from omegaconf import DictConfig, OmegaConf

    for key in node:
        if OmegaConf.is_interpolation(node, key):
            continue  # checked where it is defined
        value = node[key]
        if isinstance(value, DictConfig):
            yield from _leaves(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", value


# --------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "synth"
    ensure_synthetic_benchmark(compose_train(tiny_overrides(root)).data)
    return root


def tiny(data_root) -> list[str]:
    return [o for o in tiny_overrides(data_root) if not o.startswith("name=")]


def train_cli(args: list[str], cwd: Path = REPO, prefix: list[str] | None = None):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, *(prefix or ["-m", "lsdet.train"]), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_refused_start_leaves_the_run_folder_as_it_was(data_root, tmp_path):
    run = tmp_path / "run"
    args = [*tiny(data_root), f"hydra.run.dir={run}"]
    first = train_cli([*args, "train.stop_after_iters=1"])
    assert first.returncode == 0, first.stderr[-3000:]
    # Hydra's record, written by lsdet once the start was accepted
    assert OmegaConf.load(run / ".hydra" / "config.yaml").train.stop_after_iters == 1
    assert "train.stop_after_iters=1" in OmegaConf.load(run / ".hydra" / "overrides.yaml")
    assert OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.job.name == "train"
    before = folder_contents(run)

    refused = train_cli([*args, "train.resume=true", "optim.lr=0.5"])
    assert refused.returncode != 0
    assert (
        "the config differs from the checkpoint" in refused.stderr and "optim.lr" in refused.stderr
    )
    assert folder_contents(run) == before


@contextlib.contextmanager
def unwritable(folder: Path):
    """``folder`` made unwritable for this user (root writes into read-only folders, but not
    into immutable ones)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: no folder is unwritable")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_an_unwritable_run_folder_is_an_error_naming_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with unwritable(run):
        result = train_cli([f"hydra.run.dir={run}", "logger.mode=disabled"])
    assert result.returncode != 0
    assert f"run folder {run} is not writable" in result.stderr, result.stderr[-3000:]
    assert "Unable to configure handler" not in result.stderr
    assert list(run.iterdir()) == []


def test_check_writable_names_the_parent_that_cannot_hold_a_new_run_folder(tmp_path):
    parent = tmp_path / "runs"
    parent.mkdir()
    with unwritable(parent), pytest.raises(RunFolderNotWritableError, match=f"folder {parent}"):
        check_writable(parent / "new_run")
    check_writable(parent / "new_run")  # writable again


# --------------------------------------------------------------------------- resume advice
@contextlib.contextmanager
def hydra_job(overrides: list[str], mode: RunMode, output_dir: Path):
    """The HydraConfig of a job of ``mode`` writing to ``output_dir``, as inside a run."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = mode
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    try:
        yield cfg
    finally:
        HydraConfig.instance().cfg = None


def test_resume_advice_of_a_single_run(tmp_path):
    with hydra_job([], RunMode.RUN, tmp_path / "runs" / "x") as cfg:
        advice = resume_advice(tmp_path / "runs" / "x", name_as_written(cfg))
    assert advice.endswith("same command plus: train.resume=true")
    # a run folder named by the time of the start: the same command would start a new one
    timestamped = ["hydra.run.dir=outputs/${now:%H-%M-%S-%f}"]
    with hydra_job(timestamped, RunMode.RUN, tmp_path / "outputs" / "t") as cfg:
        advice = resume_advice(tmp_path / "outputs" / "t", name_as_written(cfg))
    assert advice.endswith(f"train.resume=true hydra.run.dir={tmp_path / 'outputs' / 't'}")


def test_resume_advice_of_a_sweep_names_its_folder_and_resumes_or_starts_each_job(tmp_path):
    sweep = tmp_path / "sweep"
    with hydra_job([f"hydra.sweep.dir={sweep}"], RunMode.MULTIRUN, sweep / "0") as cfg:
        advice = resume_advice(sweep / "0", name_as_written(cfg))
    assert advice.endswith(f"same command plus: train.resume=auto hydra.sweep.dir={sweep}")


# Job 0 of the sweep gets a Ctrl-C during its first step; job 1 never starts.
CTRL_C_IN_JOB_0 = """
import os, runpy, signal
from hydra.core.hydra_config import HydraConfig
import lsdet.engine.trainer as trainer

original = trainer.train_step

def step_then_ctrl_c(run, images, targets):
    if HydraConfig.get().job.num == 0 and run.position.global_step == 0:
        os.kill(os.getpid(), signal.SIGINT)
    return original(run, images, targets)

trainer.train_step = step_then_ctrl_c
runpy.run_module("lsdet.train", run_name="__main__", alter_sys=True)
"""


def test_the_printed_command_continues_a_sweep_stopped_by_ctrl_c(data_root, tmp_path):
    args = [
        "-m",
        "loss=softmax,concurrent_softmax",
        *tiny(data_root),
        "train.max_iters_per_epoch=1",
        "schedule.phases.main.lr.milestones=[]",
    ]
    # The default sweep folder, multirun/<date and time>, under the working directory.
    stopped = train_cli(args, cwd=tmp_path, prefix=["-c", CTRL_C_IN_JOB_0])
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").iterdir()
    assert not (sweep / "1").exists()  # never started
    advice = stopped.stdout.split("same command plus: ", 1)[1].splitlines()[0]
    assert shlex.split(advice) == ["train.resume=auto", f"hydra.sweep.dir={sweep}"]

    resumed = train_cli([*args, *shlex.split(advice)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list((tmp_path / "multirun").iterdir()) == [sweep]
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["global_step"] == 2, summary

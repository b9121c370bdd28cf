"""The Hydra application: every preset composes, bad keys/values get clear errors, sweeps run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from train_helpers import CONF_DIR, compose_train, tiny_overrides

from lsdet.losses import LOSSES
from lsdet.sampling.schedule import Schedule

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_presets_cover_the_paper_tables_and_open_images():
    for required in (
        "demo",
        "t1_softmax",
        "t1_concurrent_softmax",
        "t1_bce",
        "t1_focal",
        "t1_co_bce",
        "t1_dist_ce",
        "t2_softmax_test_cs",
        "t2_cs_test_softmax",
        "t3_non_balance",
        "t3_class_aware",
        "t3_effective_number",
        "t3_soft_balance",
        "t4_hybrid_softmax",
        "t4_hybrid_cs",
        "oid_r50_fpn_1x_softmax",
        "oid_r50_fpn_hybrid_cs",
    ):
        assert required in PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_into_a_valid_schedule(preset):
    cfg = compose_train([f"+experiment={preset}"])
    schedule = Schedule.from_config(cfg.schedule)
    assert cfg.loss.name in LOSSES
    assert cfg.model.scoring in ("auto", "softmax", "concurrent_softmax", "sigmoid")
    assert schedule.total_epochs >= 1
    if preset.startswith("t4") or "hybrid" in preset:
        assert [p.sampler["name"] for p in schedule.phases] == ["sequential", "soft_balance"]
        assert schedule.phases[1].init_from_previous


def test_preset_rows_differ_in_what_their_table_is_about():
    t1 = compose_train(["+experiment=t1_concurrent_softmax"])
    assert (t1.loss.name, t1.sampler.name) == ("concurrent_softmax", "class_aware")
    t2 = compose_train(["+experiment=t2_softmax_test_cs"])
    assert (t2.loss.name, t2.model.scoring) == ("softmax", "concurrent_softmax")
    t3 = compose_train(["+experiment=t3_soft_balance", "sampler.lam=0.3"])
    assert t3.sampler.lam == 0.3 and t3.name == "t3_soft_balance_lam0.3_s0"
    t3e = compose_train(["+experiment=t3_effective_number"])
    assert t3e.loss.weighting == "effective_number" and t3e.sampler.name == "sequential"


def test_unknown_key_is_hydras_clear_error():
    with pytest.raises(ConfigCompositionException, match="train.bacth_size"):
        compose_train(["train.bacth_size=4"])
    with pytest.raises(ConfigCompositionException, match="los"):
        compose_train(["los=softmax"])
    with pytest.raises(ConfigCompositionException, match="nonexistent"):
        compose_train(["+experiment=nonexistent"])


def test_unknown_key_from_the_command_line_names_it():
    result = subprocess.run(
        [sys.executable, "-m", "lsdet.train", "train.bacth_size=4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    # Refused by the train schema (lsdet.config_schema.TrainSettings), which Hydra names.
    assert "Key 'bacth_size' not in 'TrainSettings'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_setting_from_the_command_line_is_one_line_naming_the_key(tmp_path):
    command = [sys.executable, "-m", "lsdet.train", "seed=abc", f"hydra.run.dir={tmp_path}/run"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "error: seed='abc': expected an integer" in result.stderr
    assert "Traceback" not in result.stderr
    full = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert "Traceback" in full.stderr and "seed='abc'" in full.stderr


def test_multirun_sweep_runs_every_combination(tmp_path):
    sweep_dir = tmp_path / "sweep"
    overrides = [
        o for o in tiny_overrides(tmp_path / "synth", run_name="sweep") if not o.startswith("name=")
    ]
    overrides += [
        "train.max_iters_per_epoch=1",
        "schedule.phases.main.epochs=1",
        "schedule.phases.main.lr.milestones=[]",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "lsdet.train", "-m", "loss=softmax,concurrent_softmax"] + overrides,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = set()
    for job in ("0", "1"):
        summary = json.loads((sweep_dir / job / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["global_step"] == 1
        losses.add(OmegaConf.load(sweep_dir / job / "config.yaml").loss.name)
    assert losses == {"softmax", "concurrent_softmax"}


def test_bad_values_get_errors_naming_the_key(tmp_path):
    from lsdet.engine.trainer import run_training

    base = tiny_overrides(tmp_path / "synth")
    with pytest.raises(ValueError, match="train.eval_every"):
        run_training(compose_train(base + ["train.eval_every=sometimes"]), tmp_path / "a")
    with pytest.raises(ValueError, match="train.batch_size=0"):
        run_training(compose_train(base + ["train.batch_size=0"]), tmp_path / "c")
    with pytest.raises(ValueError, match="train.hflip_prob=1.5"):
        run_training(compose_train(base + ["train.hflip_prob=1.5"]), tmp_path / "d")
    with pytest.raises(ValueError, match="train.device"):
        run_training(compose_train(base + ["train.device=tpu"]), tmp_path / "b")

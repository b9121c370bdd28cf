"""`make gpu-check` on CPU: the no-GPU path, section error capture, report writing, the
input-pipeline benchmark on tiny images, the kernel-test section's plumbing, the helpers."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lsdet.bench import gpu_check, input_pipeline
from lsdet.bench.gpu_check import Context, SectionResult


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "no CUDA GPU" in printed
    assert not any(tmp_path.iterdir())  # no report


def test_unknown_section_is_an_error_naming_it(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--sections", "kernel_tests,warp_drive"])
    assert "warp_drive" in capsys.readouterr().err


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path):
    ctx = Context(scratch=tmp_path, device_name="test")

    def broken(ctx):
        raise RuntimeError("CUDA error: an illegal memory access")

    def fine(ctx):
        return SectionResult("x", "", passed=True, figures={"value": 1.5})

    failed = gpu_check.run_section("broken", "A broken section", broken, ctx)
    ok = gpu_check.run_section("fine", "A fine section", fine, ctx)
    assert not failed.passed and "illegal memory access" in failed.error
    assert "Traceback" in failed.error and failed.title == "A broken section"
    assert ok.passed and ok.name == "fine" and ok.figures == {"value": 1.5}
    assert set(ctx.results) == {"broken", "fine"} and ok.seconds >= 0


def test_report_markdown_and_json_from_fake_results(tmp_path):
    results = [
        SectionResult(
            "kernel_bench",
            "Kernel benchmark",
            passed=True,
            seconds=61.2,
            figures={
                "peak_gbs": 3352.3,
                "copy_gbs_measured": float("nan"),
                "float32 goals met (fwd+bwd sizes)": {"lsdet/CE <= 2": "7/9"},
                "tables": {"float32": [{"N": 2048, "lsdet ms": 0.1}]},
            },
            table="| N | lsdet ms |\n|---|---|\n| 2048 | 0.10 |",
            notes=["goals are findings"],
        ),
        SectionResult(
            "training",
            "Training",
            passed=False,
            seconds=3.0,
            notes=["AMP training output:\nline 1\nline 2"],
            error="Traceback (most recent call last):\nRuntimeError: NCCL error",
        ),
    ]
    meta = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.14.1", "commit": "abc1234"}
    out = gpu_check.report_dir(tmp_path, meta["gpu"], gpu_check.dt.date(2030, 1, 2))
    assert out == tmp_path / "2030-01-02-nvidia-h100-80gb-hbm3"
    md_path = gpu_check.write_report(results, meta, out)

    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False and report["meta"] == meta
    bench, training = report["sections"]
    assert bench["figures"]["copy_gbs_measured"] is None  # NaN is not valid JSON
    assert bench["figures"]["tables"]["float32"][0]["lsdet ms"] == 0.1
    assert training["passed"] is False and "NCCL error" in training["error"]

    md = md_path.read_text()
    assert md.startswith("# gpu-check: NVIDIA H100 80GB HBM3")
    assert "| Kernel benchmark | pass | 61 |" in md and "| Training | **FAIL** | 3 |" in md
    assert "## Training: FAIL" in md and "RuntimeError: NCCL error" in md
    assert "lsdet/CE <= 2 = 7/9" in md and "| 2048 | 0.10 |" in md
    assert "3352.300" in md and "| nan |" in md  # the scalar figures as a table
    assert "```\nAMP training output:\nline 1\nline 2\n```" in md


def test_markdown_table_cells():
    table = gpu_check.markdown_table(
        [{"a": 1, "b": 0.123456, "goal": True}, {"a": 2, "b": float("nan"), "goal": None}],
        digits=3,
    )
    assert table.splitlines() == [
        "| a | b | goal |",
        "|---|---|---|",
        "| 1 | 0.123 | met |",
        "| 2 | nan | n/a |",
    ]
    assert gpu_check.markdown_table([]) == ""


def test_peak_bandwidth_from_properties_or_the_data_sheet(monkeypatch):
    def props(name, clock_khz, bus_bits):
        return SimpleNamespace(name=name, memory_clock_rate=clock_khz, memory_bus_width=bus_bits)

    # H100 SXM: 2,619 MHz HBM3 on a 5,120-bit bus, two transfers per clock = 3,352 GB/s.
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda d: props("H100", 2_619_000, 5120)
    )
    gbs, source = gpu_check.peak_bandwidth_gbs()
    assert gbs == pytest.approx(3352.32) and source == "CUDA device properties"
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda d: props("NVIDIA A100-SXM4-40GB", 0, 0)
    )
    assert gpu_check.peak_bandwidth_gbs() == (1555.0, "data sheet (A100-SXM4-40GB)")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props("Mystery GPU", 0, 0))
    assert gpu_check.peak_bandwidth_gbs()[0] is None


def test_slug():
    assert gpu_check.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu_check.slug("NVIDIA A100-SXM4-40GB") == "nvidia-a100-sxm4-40gb"
    assert gpu_check.slug("???") == "gpu"


def test_kernel_tests_section_reports_skips_as_not_run(tmp_path):
    # On CPU without the interpreter every kernel test skips: the section must not pass.
    result = gpu_check.section_kernel_tests(Context(scratch=tmp_path, device_name="cpu"))
    assert not result.passed
    assert result.figures["tests"] > 0 and result.figures["skipped"] == result.figures["tests"]
    assert any("skipped" in note for note in result.notes)


def test_junit_counts(tmp_path):
    path = tmp_path / "j.xml"
    path.write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/></testsuites>'
    )
    assert gpu_check.junit_counts(path) == {"tests": 5, "failures": 1, "errors": 0, "skipped": 2}


def test_input_pipeline_on_tiny_images(tmp_path):
    paths = input_pipeline.write_jpegs(tmp_path / "jpegs", 3, size=(40, 30), seed=1)
    with Image.open(paths[0]) as image:
        assert image.format == "JPEG" and image.size == (40, 30)
    decoded = input_pipeline.JpegFolder(paths, hflip_prob=0.0)[0]
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 30, 40)
    flipped = input_pipeline.JpegFolder(paths, hflip_prob=1.0)[0]
    assert torch.equal(flipped, decoded.flip(-1))
    with Image.open(paths[0]) as image:
        assert np.array_equal(decoded.permute(1, 2, 0).numpy(), np.array(image.convert("RGB")))

    rows = input_pipeline.run(images=4, size=(48, 32), worker_counts=[0, 1], batch_size=2)
    assert [r["workers"] for r in rows] == [0, 1]
    assert all(r["images_per_s"] > 0 and r["image_size"] == "48x32" for r in rows)
    assert input_pipeline.default_worker_counts(6) == [0, 1, 2, 4, 6]
    assert input_pipeline.default_worker_counts(1) == [0, 1]
    with pytest.raises(ValueError, match="no image paths"):
        input_pipeline.JpegFolder([])


def test_input_pipeline_section_compares_with_the_detector(tmp_path, monkeypatch):
    monkeypatch.setattr(
        gpu_check, "INPUT_PIPELINE", {"images": 4, "size": (32, 24), "worker_counts": [0]}
    )
    ctx = Context(scratch=tmp_path, device_name="cpu")
    ctx.results["detector"] = SectionResult(
        "detector", "", True, figures={"lsdet images_per_s": 1e-6}
    )
    result = gpu_check.section_input_pipeline(ctx)
    (row,) = result.figures["rows"]
    assert row["x detector"] == pytest.approx(row["images_per_s"] / 1e-6)
    assert result.figures["fewest workers that keep up"] == 0
    ctx.results["detector"].passed = False  # no consumption figure to compare with
    result = gpu_check.section_input_pipeline(ctx)
    assert result.figures["rows"][0]["x detector"] is None
    assert result.figures["fewest workers that keep up"] is None
    assert not math.isnan(result.figures["rows"][0]["images_per_s"])


def test_makefile_has_the_gpu_check_target():
    root = Path(__file__).resolve().parents[1]
    makefile = (root / "Makefile").read_text()
    assert "gpu-check: $(STAMP)" in makefile and "lsdet.bench.gpu_check" in makefile


def test_training_section_overrides_are_valid_config_keys(tmp_path):
    from hydra import compose, initialize_config_dir
    from train_helpers import CONF_DIR, compose_train

    overrides = gpu_check._training_overrides(tmp_path / "synth", tmp_path / "run")
    job_overrides = [o for o in overrides if not o.startswith("hydra.")]
    cfg = compose_train([*job_overrides, "train.dist_backend=nccl", "model.backbone.norm=sync_bn"])
    assert cfg.train.device == "cuda" and cfg.train.amp is True
    assert cfg.loss.name == "concurrent_softmax" and cfg.model.backbone.norm == "sync_bn"
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        evaluate = compose(
            "evaluate",
            overrides=["checkpoint=x.pt", f"data.root={tmp_path}", "device=cuda"],
        )
    assert evaluate.checkpoint == "x.pt" and evaluate.device == "cuda"

"""Tiny training configs for the training-application tests (64-px images, a handful of
images, a small backbone, 1-3 iterations per epoch)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def tiny_overrides(data_root: Path, run_name: str = "tiny") -> list[str]:
    """Hydra overrides of a tiny CPU run on a 6-leaf synthetic benchmark under data_root."""
    return [
        f"name={run_name}",
        f"data.root={data_root}",
        "data.image_size=64",
        "data.generate.num_train_images=6",
        "data.generate.num_val_images=4",
        "data.generate.num_families=2",
        "data.generate.shapes_per_family=1",
        "data.generate.hues_per_shape=3",
        "data.generate.textures_per_shape=1",
        "data.generate.imbalance=2",
        "data.generate.val_min_images_per_class=1",
        "data.generate.mean_objects_per_image=1.5",
        "data.generate.max_objects_per_image=2",
        "data.generate.confused_pairs.num_pairs=1",  # the 6 leaves hold 3 sibling pairs
        "model.backbone.out_indices=[3,4]",
        "model.fpn_channels=16",
        "model.roi.representation_size=32",
        "model.roi.batch_size_per_image=16",
        "model.rpn.pre_nms_top_n_train=50",
        "model.rpn.post_nms_top_n_train=20",
        "model.rpn.pre_nms_top_n_test=50",
        "model.rpn.post_nms_top_n_test=20",
        "model.rpn.batch_size_per_image=32",
        "optim=adamw",
        "schedule.phases.main.epochs=2",
        "schedule.phases.main.lr.warmup_iters=2",
        "schedule.phases.main.lr.milestones=[1]",
        "train.device=cpu",
        "train.batch_size=2",
        "train.eval_batch_size=2",
        "train.num_workers=0",
        "train.threads=1",  # tiny ops: one thread is as fast, and immune to busy cores
        "train.eval_every=never",
        "train.progress=false",
        "train.checkpoint_every=0",
        "logger.mode=disabled",
    ]


# A hybrid schedule of 1 + 1 tiny epochs (replace the schedule.* items of tiny_overrides).
HYBRID = [
    "schedule=hybrid",
    "schedule.phases.pretrain.epochs=1",
    "schedule.phases.pretrain.lr.warmup_iters=2",
    "schedule.phases.pretrain.lr.milestones=[]",
    "schedule.phases.finetune.epochs=1",
    "schedule.phases.finetune.lr.warmup_iters=1",
    "schedule.phases.finetune.lr.milestones=[]",
]


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """conf/<name>.yaml composed with overrides, as `python -m lsdet.<name>` would."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


def compose_train(overrides: list[str]) -> DictConfig:
    """conf/train.yaml composed with overrides, as `python -m lsdet.train` would."""
    return compose_config("train", overrides)


def compose_evaluate(
    data_root: Path, checkpoint: Path, output_dir: Path, *extra: str
) -> DictConfig:
    """`lsdet.evaluate checkpoint=...` settings on the CPU, without loader workers."""
    return compose_config(
        "evaluate",
        [
            f"checkpoint={checkpoint}",
            f"data.root={data_root}",
            f"output_dir={output_dir}",
            "device=cpu",
            "num_workers=0",
            *extra,
        ],
    )


def compose_predict(checkpoint: Path, output_csv: Path, *extra: str) -> DictConfig:
    """`lsdet.predict` settings on the CPU, without loader workers."""
    return compose_config(
        "predict",
        [
            f"checkpoint={checkpoint}",
            f"output_csv={output_csv}",
            "device=cpu",
            "num_workers=0",
            *extra,
        ],
    )


def train_evaluated_run(data_root: Path, run_dir: Path) -> tuple[DictConfig, dict]:
    """A tiny run evaluated by the trainer after each phase, keeping every detection (score
    threshold 0, 30 per image) so that inference from its checkpoint can be compared with the
    trainer's in-memory mAP; returns the config and run_training's summary."""
    from lsdet.engine.trainer import run_training

    cfg = compose_train(
        tiny_overrides(data_root)
        + [
            "train.eval_every=phase",
            "model.roi.score_thresh=0.0",
            "model.roi.detections_per_img=30",
        ]
    )
    return cfg, run_training(cfg, run_dir)


def mini_generator_settings(image_size: int) -> dict[str, object]:
    """Generator settings of a minimal synthetic benchmark (4 leaves in 2 families holding two
    sibling pairs, 24 training and 8 validation images, no confused pairs), for the tests that
    write one with generate_synthetic_benchmark. A fresh dict on each call."""
    return {
        "seed": 1,
        "image_size": image_size,
        "num_train_images": 24,
        "num_val_images": 8,
        "num_families": 2,
        "shapes_per_family": 1,
        "hues_per_shape": 2,
        "textures_per_shape": 1,
        "imbalance": 4.0,
        "mean_objects_per_image": 1.5,
        "object_size": [0.4, 0.6],
        "val_min_images_per_class": 1,
        "confused_pairs": {"num_pairs": 0},
    }

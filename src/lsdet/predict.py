"""Write a challenge submission: ``python -m lsdet.predict checkpoint=PATH [image_dir=DIR]``.

Loads the detector of a training checkpoint, runs it over every image of a folder and
writes the Open Images Challenge submission CSV with the evaluator's writer (keys in
conf/predict.yaml). Detections cover every class, parents included.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lsdet.engine.inference import ImageFiles, load_detector_from_config, predict_images

log = logging.getLogger(__name__)


def write_submission(cfg: DictConfig) -> Path:
    """Predict ``cfg.image_dir`` with ``cfg.checkpoint``; returns the CSV path."""
    from lsdet.evaluation import write_predictions_csv

    model, hierarchy, train_cfg, device = load_detector_from_config(cfg)
    image_dir = cfg.image_dir or train_cfg.data.val.image_dir
    image_size = train_cfg.data.get("image_size") if cfg.image_size == "auto" else cfg.image_size
    dataset = ImageFiles.from_folder(image_dir, image_size=image_size)
    detections = predict_images(
        model,
        dataset,
        device,
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.num_workers),
        desc=f"predict {Path(image_dir).name}",
    )
    mids = [hierarchy.mids[k] for k in detections.class_indices]
    path = write_predictions_csv(
        cfg.output_csv,
        detections.image_ids,
        mids,
        detections.scores,
        detections.boxes,
        layout=cfg.layout,
        all_image_ids=[p.stem for p in dataset.paths],
    )
    log.info(
        "%d detections on %d images (scoring %s) -> %s",
        len(detections),
        len(dataset),
        model.roi_heads.scoring,
        path,
    )
    return path


@hydra.main(version_base="1.3", config_path="../../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    write_submission(cfg)


if __name__ == "__main__":
    main()

"""Write a challenge submission: ``python -m lsdet.predict checkpoint=PATH [image_dir=DIR]``.

Loads the detector of a training checkpoint, runs it over every image file of a folder and
its subfolders and writes the Open Images Challenge submission CSV with the evaluator's
writer (keys in conf/predict.yaml). Detections cover every class, parents included. Beside
the CSV: ``<csv name>_report.json`` (what was predicted, skipped and ignored, and the input
settings used) and, with ``visualize=N``, N images with their detections drawn.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torchvision.utils import draw_bounding_boxes

from lsdet.data import read_class_descriptions
from lsdet.evaluation import write_predictions_csv
from lsdet.inference import (
    Detections,
    ImageFiles,
    load_detector_from_config,
    predict_images,
    read_rgb_image,
    skipped_by_reason,
)

log = logging.getLogger(__name__)

# Box colours of the drawn images, one per class index in turn (matplotlib's tab10).
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def output_paths(cfg: DictConfig) -> dict[str, Path]:
    """Where ``write_submission`` writes: the CSV, its report and the drawn images' folder."""
    csv = Path(cfg.output_csv)
    return {
        "csv": csv,
        "report": csv.with_name(f"{csv.stem}_report.json"),
        "visualize": csv.parent / "visualize",
    }


def check_settings(cfg: DictConfig, paths: dict[str, Path]) -> None:
    """Errors naming the key before anything runs: a bad ``visualize`` or
    ``visualize_min_score``, or an output that would overwrite an existing file."""
    visualize = cfg.visualize
    if isinstance(visualize, bool) or not isinstance(visualize, int) or visualize < 0:
        raise ValueError(f"visualize={visualize!r}: expected a whole number of images >= 0")
    min_score = cfg.visualize_min_score
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)):
        raise ValueError(f"visualize_min_score={min_score!r}: expected a number in [0, 1]")
    if not 0.0 <= float(min_score) <= 1.0:
        raise ValueError(f"visualize_min_score={min_score!r}: expected a number in [0, 1]")
    for key, path in (("output_csv", paths["csv"]), ("output_csv", paths["report"])):
        if path.exists():
            raise FileExistsError(
                f"{path} already exists and is not overwritten; choose another {key}="
            )
    if visualize > 0 and paths["visualize"].exists() and any(paths["visualize"].iterdir()):
        raise FileExistsError(
            f"{paths['visualize']} already holds files and is not written into; choose another "
            "output_csv= (the drawn images go into its folder's visualize/) or visualize=0"
        )


def draw_detections(
    image: torch.Tensor,
    boxes: np.ndarray,
    labels: list[str],
    colors: list[tuple[int, int, int]],
) -> torch.Tensor:
    """``image`` (uint8 [3, H, W]) with ``boxes`` (normalised xmin, ymin, xmax, ymax) drawn
    with their ``labels`` (torchvision.utils.draw_bounding_boxes)."""
    height, width = image.shape[-2:]
    scale = np.array([width, height, width, height], dtype=np.float64)
    pixel_boxes = torch.as_tensor(np.asarray(boxes).reshape(-1, 4) * scale, dtype=torch.float32)
    line = max(1, min(height, width) // 150)
    return draw_bounding_boxes(image, pixel_boxes, labels=labels, colors=colors, width=line)


def write_visualizations(
    folder: Path,
    dataset: ImageFiles,
    detections: Detections,
    class_names: list[str],
    *,
    count: int,
    min_score: float,
) -> list[Path]:
    """The first ``count`` decodable images of ``dataset`` at their own size, with their
    detections of score >= ``min_score`` drawn (class name and score), as
    ``folder/<image id>.png``; returns the paths."""
    skipped = {image_id for image_id, _ in detections.skipped_images}
    written: list[Path] = []
    for path, image_id in zip(dataset.paths, dataset.image_ids, strict=True):
        if len(written) == count:
            break
        if image_id in skipped:
            continue
        keep = (detections.image_ids == image_id) & (detections.scores >= min_score)
        order = np.flatnonzero(keep)[np.argsort(-detections.scores[keep], kind="stable")]
        classes, scores = detections.class_indices[order], detections.scores[order]
        drawn = draw_detections(
            read_rgb_image(path),
            detections.boxes[order],
            [f"{class_names[k]} {s:.2f}" for k, s in zip(classes, scores, strict=True)],
            [PALETTE[int(k) % len(PALETTE)] for k in classes],
        )
        target = folder / f"{image_id}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(target)
        written.append(target)
    return written


def write_submission(cfg: DictConfig) -> Path:
    """Predict ``cfg.image_dir`` with ``cfg.checkpoint``; returns the CSV path.

    Every image file under ``image_dir`` (subfolders too, any case of a suffix Pillow
    reads) is predicted; its ImageId is its path relative to ``image_dir`` without the
    suffix. Files that cannot be decoded get no row and are counted per reason, other files
    are ignored and counted per suffix: both in the log and in the report JSON."""
    paths = output_paths(cfg)
    check_settings(cfg, paths)
    model, hierarchy, train_cfg, device, input_settings = load_detector_from_config(
        cfg, image_size=cfg.image_size, image_size_key="image_size"
    )
    image_dir = Path(cfg.image_dir or train_cfg.data.val.image_dir)
    dataset = ImageFiles.from_folder(image_dir, image_size=input_settings.image_size, strict=False)
    listing = dataset.listing
    detections = predict_images(
        model,
        dataset,
        device,
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.num_workers),
        desc=f"predict {image_dir.name}",
    )
    skipped_ids = {image_id for image_id, _ in detections.skipped_images}
    predicted_ids = [i for i in dataset.image_ids if i not in skipped_ids]
    mids = [hierarchy.mids[k] for k in detections.class_indices]
    path = write_predictions_csv(
        paths["csv"],
        detections.image_ids,
        mids,
        detections.scores,
        detections.boxes,
        layout=cfg.layout,
        all_image_ids=predicted_ids,
    )
    log.info(
        "%d detections on %d images of %s (scoring %s) -> %s",
        len(detections),
        len(predicted_ids),
        image_dir,
        model.roi_heads.scoring,
        path,
    )
    if listing.in_subfolders:
        log.info(
            "%d image files lie in subfolders: their ImageId is the path relative to %s without "
            "the suffix (e.g. %s)",
            listing.in_subfolders,
            image_dir,
            next(i for i in dataset.image_ids if "/" in i),
        )
    undecodable = skipped_by_reason(detections.skipped_images)
    if undecodable:
        log.warning(
            "%d image files cannot be decoded and have no row in the submission: %s (see %s)",
            len(detections.skipped_images),
            "; ".join(f"{entry['count']} {reason}" for reason, entry in undecodable.items()),
            paths["report"],
        )
    ignored = listing.ignored_by_suffix()
    if ignored:
        log.warning(
            "%d files in %s are not image files and were ignored: %s",
            len(listing.ignored_files),
            image_dir,
            ", ".join(f"{count} {suffix}" for suffix, count in ignored.items()),
        )

    drawn: list[Path] = []
    if cfg.visualize > 0:
        descriptions = read_class_descriptions(train_cfg.data.class_descriptions_csv)
        class_names = [descriptions.get(mid, mid) for mid in hierarchy.mids]
        drawn = write_visualizations(
            paths["visualize"],
            dataset,
            detections,
            class_names,
            count=int(cfg.visualize),
            min_score=float(cfg.visualize_min_score),
        )
        log.info(
            "%d images with their detections of score >= %s drawn in %s",
            len(drawn),
            cfg.visualize_min_score,
            paths["visualize"],
        )

    report: dict[str, Any] = {
        "checkpoint": str(cfg.checkpoint),
        "image_dir": str(image_dir),
        "submission": str(path),
        "image_ids": "path relative to image_dir without the suffix, '/' between folders",
        "image_files_found": len(dataset),
        "images_predicted": len(predicted_ids),
        "image_files_in_subfolders": listing.in_subfolders,
        "detections": len(detections),
        "scoring": model.roi_heads.scoring,
        "undecodable_images": {
            "count": len(detections.skipped_images),
            "by_reason": undecodable,
        },
        "ignored_files": {
            "count": len(listing.ignored_files),
            "by_suffix": ignored,
            "examples": [str(p.relative_to(image_dir)) for p in listing.ignored_files[:10]],
        },
        "input": input_settings.to_dict(),
        "visualized": [str(p) for p in drawn],
    }
    paths["report"].write_text(json.dumps(report, indent=2) + "\n")
    return path


@hydra.main(version_base="1.3", config_path="../../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    write_submission(cfg)


if __name__ == "__main__":
    main()

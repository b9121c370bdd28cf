"""The embedded synthetic benchmark (version 2): Open-Images-shaped files with Open Images'
pathologies.

Open Images cannot be shipped, so the main job trains and evaluates on a generated set that
has the same files (hierarchy JSON, class descriptions, 13-column bbox CSV, image-level
labels CSV, ``<ImageID>.jpg`` images) and the problems the method is about. Each property
comes from what Open Images and the paper (Peng et al., CVPR 2020) describe, not from what
any method scores on it:

* a class hierarchy of three levels (shape family > shape > variant) whose sibling leaves
  look nearly alike (same shape, close hues, a subtle texture); parents have no appearance
  of their own, only through their leaves (Open Images' parents are unions of leaves too);
* a long tail (the paper's Figure 2): the number of training images per leaf falls by a
  power law ``n(rank) ~ rank^-alpha`` with ``alpha = ln(imbalance) / ln(num_leaves)``, so
  that the largest / smallest image count is ``imbalance``;
* the label problems of the paper's section 1 at configurable rates: an object boxed as its
  leaf and as an ancestor, boxed with a second leaf of another family (car and toy),
  labelled with its confusable sibling or with both, labelled with an ancestor only
  (Figure 3b); group-of boxes (several small instances in one box);
* strongly confused sibling pairs whose concurrent rates follow the profile of the paper's
  Figure 3a (:class:`ConfusedPairs`: top pairs about 0.5-0.65, a tail down to 0.1), placed
  at random or spread over the frequency ranks (``confused_pairs.placement``);
* benchmark variants with a given share m of training objects boxed with two leaf labels
  (``multi_label_rate``): two_leaves, sibling_both and the confused pairs' rates scaled
  together (m = 0: no object with two leaf labels); null keeps version 2 exactly (same bytes,
  same settings hash);
* validation labelled by the same processes as training (``val_label_noise: as_train``; the
  paper: torch and flashlight are annotated as each other "in both training and validation
  set"), holding every leaf at least ``val_min_images_per_class`` times; ``clean`` gives
  exact labels;
* verified image-level labels made as Open Images made them (Kuznetsova et al., IJCV 2020):
  candidate labels, mostly look-alikes of the leaves present plus a few random ones, each
  verified (present -> positive, absent -> verified negative); every boxed label is a
  positive. The metric thus judges a look-alike detection as a false positive;
* the rows of an image in random order: which label of a multi-labelled object is its true
  class cannot be read from the file order (version 1 wrote the true leaf first).

Everything is drawn from ``seed``; the same settings give the same bytes. Files under
``root``::

    hierarchy.json                                  Open Images format (LabelName/Subcategory)
    class-descriptions.csv                          MID,Name (no header)
    {train,validation}-annotations-bbox.csv         13-column V4-V6 layout
    {train,validation}-annotations-image-labels.csv ImageID,Source,LabelName,Confidence
    {train,validation}-objects.csv                  one row per drawn object: ImageID, its
                                                    true class (TrueLabelName), box, the
                                                    LabelProblem applied and its LabelNames
                                                    (in the order of its rows in the bbox CSV)
    {train,validation}/<ImageID>.jpg
    lvis_train.json, lvis_val.json                  only when asked (``write_lvis``): the
                                                    same annotations in LVIS v1 format
                                                    (module ``lvis``: leaves as categories,
                                                    negatives, not-exhaustive categories)
    manifest.json                                   settings, their hash, a summary and
                                                    every file written

The generator writes only into a folder that is missing, empty, or that it wrote itself (its
``manifest.json``); anything else is refused with an error and left as it was. Every setting
is checked before anything is written (an error names its full key, e.g.
``generate.confused_pairs.num_pairs``). A generation is written into a sibling staging folder
(``.<root name>.generating-<pid>``) and moved into place only when complete; only then are the
files its old manifest lists replaced or removed: files anyone else put there stay, and a
failed run leaves the old benchmark as it was.

Run ``python -m lsdet.data.synth [key=value ...]`` (keys of the ``generate`` block of
``conf/data/synth.yaml``, plus ``root`` and ``image_size``); it regenerates a folder it
generated with other settings. A training or analysis whose data config's settings differ
from the folder's manifest stops with an error naming the differing settings, and
regenerates only with ``data.regenerate=true``.

The modules, in the order the generator uses them: ``settings`` (the settings, their hash,
file names), ``taxonomy`` (the class tree, confused pairs, images per leaf), ``scenes``
(objects, their label problems, verified image-level labels), ``render`` (the images),
``splits`` (writing one split), ``lvis`` (the LVIS files), ``folder`` (folder safety, the
manifest) and ``generate`` (the entry points and the command line).
"""

from lsdet.data.synth.folder import NotAGeneratedFolderError, planned_files, read_own_manifest
from lsdet.data.synth.generate import (
    GeneratedWithOtherSettingsError,
    ensure_synthetic_benchmark,
    generate_synthetic_benchmark,
    main,
    settings_from_data_config,
    validate_settings,
)
from lsdet.data.synth.lvis import LVIS_JSON, LvisImage, lvis_frequency, lvis_image_id
from lsdet.data.synth.scenes import SceneObject
from lsdet.data.synth.settings import (
    BBOX_HEADER,
    CLASS_DESCRIPTIONS_CSV,
    CONFUSED_PAIR,
    CONFUSED_PAIR_PLACEMENTS,
    FAMILIES,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    HIERARCHY_JSON,
    IMAGE_LABELS_HEADER,
    LABEL_PROBLEMS,
    MANIFEST_JSON,
    OBJECTS_HEADER,
    ROOT_MID,
    SPLITS,
    TEXTURES,
    VAL_LABEL_NOISE,
    ConfusedPairs,
    LabelNoise,
    SynthSettings,
    SynthSettingsError,
    image_ids,
    split_files,
)
from lsdet.data.synth.taxonomy import (
    Taxonomy,
    both_probability_for_rate,
    build_taxonomy,
    pair_rates,
    scaled_label_noise,
    scaled_pair_rate,
    target_image_counts,
    two_leaf_share,
)

__all__ = [
    "BBOX_HEADER",
    "CLASS_DESCRIPTIONS_CSV",
    "CONFUSED_PAIR",
    "CONFUSED_PAIR_PLACEMENTS",
    "FAMILIES",
    "GeneratedWithOtherSettingsError",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "HIERARCHY_JSON",
    "IMAGE_LABELS_HEADER",
    "LABEL_PROBLEMS",
    "LVIS_JSON",
    "MANIFEST_JSON",
    "OBJECTS_HEADER",
    "ROOT_MID",
    "SPLITS",
    "TEXTURES",
    "VAL_LABEL_NOISE",
    "ConfusedPairs",
    "LabelNoise",
    "LvisImage",
    "NotAGeneratedFolderError",
    "SceneObject",
    "SynthSettings",
    "SynthSettingsError",
    "Taxonomy",
    "both_probability_for_rate",
    "build_taxonomy",
    "ensure_synthetic_benchmark",
    "generate_synthetic_benchmark",
    "image_ids",
    "lvis_frequency",
    "lvis_image_id",
    "main",
    "pair_rates",
    "planned_files",
    "read_own_manifest",
    "scaled_label_noise",
    "scaled_pair_rate",
    "settings_from_data_config",
    "split_files",
    "target_image_counts",
    "two_leaf_share",
    "validate_settings",
]

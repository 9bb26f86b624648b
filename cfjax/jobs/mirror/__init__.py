"""The Mirror-CFE job: classifier (+ domain backbone) -> decoder -> :func:`cfjax.mirror_cfe` on
every correctly classified source image -> first counterfactuals, metrics, figures, report.

One :class:`~cfjax.jobs.skeleton.Method` (:class:`MirrorJob`) serves both shapes of the job:

* one class pair (``cfjax explain mirror --source S --target T``, :func:`run_mirror_explanation`):
  FID against real target-class images, the D.Val ceiling, transition strips;
* many pairs in ONE streamed, sharded, resumable pass (``cfjax global mirror --pairs ...``,
  :func:`run_mirror_global`) with a per-pair table.

One concept per module: ``config`` (:class:`MirrorJobConfig`, the paper's pairs), ``rows`` (the
per-chunk step :func:`mirror_rows` and the evaluator set), ``models`` (classifier, backbone,
oracle, decoder cache, ceilings), ``job`` (:class:`MirrorJob` and the entry points), ``figures``.
Models are cached under ``<models_dir>/<dataset>/`` (default ``models_dir = out/models``):
``classifier`` (shared with the attack job), ``domain_backbone`` (the same architecture trained
with seed 1: LPIPS/FID features, *not* ImageNet) and ``mirror_decoder-<hash>``.
"""

from cfjax.jobs.mirror.config import MIRROR_PAIRS, MirrorJobConfig, resolve_decoder_pairs
from cfjax.jobs.mirror.job import MirrorJob, run_mirror_explanation, run_mirror_global, train_decoder
from cfjax.jobs.mirror.models import (MirrorModels, decoder_dir, get_decoder, load_models, load_oracle,
                                      real_target_ceilings)
from cfjax.jobs.mirror.rows import (BACKBONE_LABEL, PER_EXAMPLE, Backbone, classifier_backbone, decode_slices, mirror_evaluators,
                                    mirror_rows, rows_options)

_rows_options = rows_options  # the earlier private spelling (tests, scripts)

__all__ = [
    "MIRROR_PAIRS",
    "PER_EXAMPLE",
    "Backbone",
    "MirrorJob",
    "MirrorJobConfig",
    "classifier_backbone",
    "decoder_dir",
    "get_decoder",
    "load_models",
    "mirror_evaluators",
    "decode_slices",
    "mirror_rows",
    "rows_options",
    "load_oracle",
    "MirrorModels",
    "BACKBONE_LABEL",
    "real_target_ceilings",
    "resolve_decoder_pairs",
    "run_mirror_explanation",
    "run_mirror_global",
    "train_decoder",
]

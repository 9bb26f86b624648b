"""The Mirror-CFE job's models: data and classifier (+ domain backbone), the oracle, the decoder
(cached under ``<models_dir>/<dataset>/`` by a digest of its config), the optional LPIPS(AlexNet)
and Inception-v3 judges, and the real-image ceilings of the metrics."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax.errors import bad_arg
from cfjax.eval import metrics
from cfjax.jobs.mirror.classifier import ExplainedClassifier, from_entry, from_trained
from cfjax.jobs.mirror.config import MirrorJobConfig
from cfjax.jobs.skeleton import batched_predict
from cfjax.training import loop as ct
from cfjax.training import mirror_decoder as md
from cfjax.training import zoo


def load_models(dataset: str, models_dir, cfg: MirrorJobConfig, *, data_dir=None, progress: bool = True, backbone: bool = True):
    """``(train, test, classifier, backbone, root)``: the data, the explained classifier
    (:class:`~cfjax.jobs.mirror.classifier.ExplainedClassifier`: the zoo's, same cache as
    :func:`cfjax.training.zoo.get_models`, or the user's ``cfg.classifier`` entry point), the domain
    backbone (the zoo's architecture and schedule, ``seed = cfg.backbone_seed``; ``None`` with
    ``backbone=False``) and the model folder (``<models_dir>/<dataset>``; a user's classifier's
    decoders go under ``.../user-<digest>``)."""
    from cfjax import data as cdata

    zc = zoo.resolve(dataset, cfg.models)  # SMOKE -> tiny models at the dataset's resolution
    if cfg.classifier_augment_blur:
        zc = dataclasses.replace(zc, classifier_train=dataclasses.replace(zc.classifier_train, augment_blur=cfg.classifier_augment_blur))
    train = cdata.load(dataset, "train", data_dir=data_dir, limit=cfg.data_limit)
    test = cdata.load(dataset, "test", data_dir=data_dir, limit=cfg.data_limit)
    root = Path(models_dir) / dataset
    if cfg.reference_models:
        return _reference_models(dataset, train, test, root, cfg, zc, progress, backbone)
    if cfg.classifier_augment_blur and cfg.classifier is None:
        # a blur-trained classifier (and the decoders, backbone and oracle beside it) gets its own
        # folder: the plain classifier's cache keeps its name and is never refused as "another config"
        root = root / f"blur-{cfg.classifier_augment_blur:g}"
    clf_cfg = dataclasses.replace(zc.classifier, num_classes=train.num_classes)
    if cfg.classifier is None:
        clf = from_trained(ct.load_or_train_classifier(train, test, clf_cfg, zc.classifier_train, root / "classifier", progress))
    else:
        clf = from_entry(cfg.classifier, train, test)
        root = root / f"user-{clf.digest[:12]}"
    bb_train = dataclasses.replace(zc.classifier_train, seed=cfg.backbone_seed)
    if cfg.backbone_epochs is not None:
        bb_train = dataclasses.replace(bb_train, epochs=cfg.backbone_epochs)
    bb = ct.load_or_train_classifier(train, test, clf_cfg, bb_train, root / "domain_backbone", progress) if backbone else None
    return train, test, clf, bb, root


def _reference_models(dataset, train, test, root: Path, cfg: MirrorJobConfig, zc, progress: bool, backbone: bool):
    """:func:`load_models` on the shipped reference classifier: the decoder and the domain backbone
    train on the training split minus the reference models' validation split; the explained
    images are that validation split or the test split (``cfg.split``)."""
    from cfjax import data as cdata
    from cfjax.training import reference

    spec = reference.SPECS.get(dataset, {}).get("classifier")
    if spec is None:
        raise bad_arg("data", repr(dataset), f"a dataset with reference models ({sorted(reference.SPECS)})")
    clf_t = reference.load_reference(dataset, "classifier")
    fit, val = cdata.validation_split(train, spec.val_fraction, seed=0)
    evaluated = val if cfg.split == "validation" else test
    root = root / f"reference-{clf_t.config['sha256'][:12]}"
    bb_train = dataclasses.replace(zc.classifier_train, seed=cfg.backbone_seed, epochs=cfg.backbone_epochs or zc.classifier_train.epochs)
    bb_cfg = dataclasses.replace(zc.classifier, num_classes=train.num_classes)
    bb = ct.load_or_train_classifier(fit, val, bb_cfg, bb_train, root / "domain_backbone", progress) if backbone else None
    return fit, evaluated, from_trained(clf_t)._replace(source="reference"), bb, root


def load_oracle(train, test, root: Path, cfg: MirrorJobConfig, progress: bool = True) -> ct.Trained:
    """The oracle: an independently trained classifier (``cfg.oracle_widths``, seed
    ``cfg.oracle_seed``, no blur or flip augmentation), cached under ``root/oracle_classifier``."""
    if cfg.reference_models:
        from cfjax.training import reference

        return reference.load_reference(train.name, "oracle")
    zc = cfg.models or zoo.defaults_for(train.name)
    tcfg = dataclasses.replace(zc.classifier_train, seed=cfg.oracle_seed, augment_blur=0.0, augment_flip=False)
    if cfg.oracle_epochs is not None:
        tcfg = dataclasses.replace(tcfg, epochs=cfg.oracle_epochs)
    mcfg = ct.ClassifierConfig(num_classes=train.num_classes, widths=tuple(cfg.oracle_widths), convs_per_block=cfg.oracle_convs_per_block)
    return ct.load_or_train_classifier(train, test, mcfg, tcfg, root / "oracle_classifier", progress)


def decoder_dir(root: Path, dcfg: md.MirrorDecoderConfig) -> Path:
    """``root/mirror_decoder-<hash>`` (all pairs) or ``root/mirror_decoder_<s>-<t>_...-<hash>``
    (restricted); ``<hash>`` is a digest of the whole decoder config, so decoders of different
    configs (ablations) live side by side and a resumed training finds its own ``last``."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(dcfg.as_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    if dcfg.pairs is None:
        return root / f"mirror_decoder-{h}"
    return root / ("mirror_decoder_" + "_".join(f"{s}-{t}" for s, t in dcfg.pairs) + f"-{h}")


def get_decoder(clf: ExplainedClassifier, train, test, root: Path, dcfg: md.MirrorDecoderConfig, progress: bool = True, warm_start=None):
    """Train (or reuse) the decoder for the explained classifier ``clf``: ``(DecoderTrained,
    seconds)`` (``warm_start``: :attr:`MirrorJobConfig.decoder_warm_start`)."""
    t0 = time.perf_counter()
    dec = md.load_or_train_mirror_decoder(clf.fns, train, dcfg, test=test, workdir=decoder_dir(root, dcfg), classifier_digest=clf.digest,
                                          progress=progress, warm_start=warm_start)
    return dec, time.perf_counter() - t0


def _inception(cfg):
    """The FID Inception-v3 from ``cfg.inception_weights`` (None when not given)."""
    if cfg.inception_weights is None:
        return None
    from cfjax.eval.inception import load_inception

    return load_inception(cfg.inception_weights)


class MirrorModels(NamedTuple):
    """What :meth:`MirrorJob.load` returns."""

    train: object
    test: object
    classifier: ExplainedClassifier
    backbone: ct.Trained
    decoder: md.DecoderTrained
    decoder_wall_s: float
    preds: np.ndarray
    """The classifier's predictions on the test split."""
    oracle: ct.Trained | None = None


def real_target_ceilings(test, classifier: ExplainedClassifier, oracle: ct.Trained | None, targets, blur_sigma: float = 1.0) -> dict:
    """What REAL test images of each target class score on the counterfactual metrics, i.e. their
    ceilings: ``{class name: {"denoised_validity": fraction the classifier still calls the class
    after the sigma-``blur_sigma`` blur, "oracle_validity": fraction the oracle calls the class
    (when given), "n": images}}``. A classifier that is not blur-robust caps denoised validity
    below 1 for counterfactuals too; a weak oracle caps oracle validity."""
    names = test.class_names
    fclean = jax.jit(lambda x: jnp.argmax(classifier.logits_batch(x), -1))
    fblur = jax.jit(lambda x: jnp.argmax(classifier.logits_batch(metrics.gaussian_blur(x, blur_sigma)), -1))
    fo = jax.jit(lambda x: jnp.argmax(oracle.module.apply(oracle.params, x), -1)) if oracle is not None else None
    out = {}
    for t in targets:
        real = test.images[test.labels == t]
        row = {"n": int(len(real))}
        if len(real):
            clean, blur = batched_predict(fclean, real) == t, batched_predict(fblur, real) == t
            row.update(validity=float(np.mean(clean)), denoised_validity=float(np.mean(blur)),
                       denoised_validity_given_valid=float(np.mean(blur[clean])) if clean.any() else float("nan"))
        else:
            row.update(validity=float("nan"), denoised_validity=float("nan"), denoised_validity_given_valid=float("nan"))
        if fo is not None:
            row["oracle_validity"] = float(np.mean(batched_predict(fo, real) == t)) if len(real) else float("nan")
        out[names[int(t)]] = row
    return out


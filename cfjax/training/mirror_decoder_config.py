"""The Mirror-CFE decoder's configuration: :class:`MirrorDecoderConfig` (architecture, losses,
path, optimiser, schedule), its named presets (``paper``, ``robust``) and its checks.

Training lives in :mod:`cfjax.training.mirror_decoder`, which re-exports every name here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from cfjax._checks import check_positive_int
from cfjax.errors import bad_arg
from cfjax.methods.mirror import OTHERS, SOLVERS

# The decoder G maps F_k back to an image; it is trained with the classifier frozen
# (the losses are documented in docs/mirror_cfe.md).

LR_SCHEDULES = ("constant", "cosine")
PRESETS = ("paper", "robust")
# the names; the job's presets (:data:`cfjax.jobs.mirror.config.PRESETS`, what ``--preset`` offers)
# map each to its decoder config
"""The named decoder/job presets: ``paper`` (the method as published; the default) and ``robust``."""

ROBUST_CHANGES = {"reflect_others": "mirror", "ema_decay": 0.999, "fea_normalized": True}
"""What the ``robust`` preset changes from the paper's decoder (each earned in BUILD_NOTES' preset
ablation; the classifier stays the ordinary one, T stays 1, k stays ~ U[0, 1], no loss sees D.Val's
blur). The biased k draw (``k_cf_fraction``) was tried and dropped: leave-one-out, robust lost
nothing without it and gained LPIPS."""


@dataclasses.dataclass(frozen=True)
class MirrorDecoderConfig:
    """Decoder architecture, losses and optimisation (docs/mirror_cfe.md).

    One decoder per dataset serves every (source, target) pair unless ``pairs`` restricts
    training to some directed pairs. Each training sample: a real image, ``source`` = its
    label, ``target`` = a random other class, ``k ~ U[0, 1]`` (a ``rec_fraction`` of each batch
    uses ``k = 0`` for the reconstruction term), ``F_k`` from the refined reflection solved
    with ``train_solver`` (``"exact"``: closed form, the same map L-BFGS converges to).
    """

    widths: tuple[int, ...] = (48, 24, 16)
    """Decoder channels per skip level, deepest first."""
    editor_width: int = 8
    fk_channels: int = 16
    skip_mode: str = "eq12"
    """``"eq12"`` (the paper's Eq. 12: the skip pooled to ``F_k``'s resolution + the full
    ``F_k``; the default) or ``"full"`` (another editor: the full-resolution source skip + a
    reduced, upsampled ``F_k``)."""
    disc_widths: tuple[int, ...] = (32, 64)
    disc_conditional: bool = False
    """A class-conditional (projection) discriminator: real images with their labels, decoded
    ``G(F_k)`` with the class ``F_k`` stands for (target if ``k > 0.5``, else source), so a
    counterfactual must look like a real image of the target class as a whole (a cfjax option,
    not in the paper, in no preset)."""
    rho_l: float = 0.1
    """CSP threshold bounds: ``rho = clip(1 - k, rho_l, rho_u)`` (the paper does not publish them)."""
    rho_u: float = 0.5
    steps: int = 10000
    """~0.2 s/step on 2 idle CPU cores with the default losses (batch 32; up to ~0.4 s/step when
    other jobs share the cores): ~35 minutes (decoder time on a GPU not measured). A finished
    shorter run is continued, not restarted, by ``warm_start``."""
    batch_size: int = 32
    learning_rate: float = 2e-4
    lr_schedule: str = "constant"
    """``"constant"`` (the paper's Adam at ``learning_rate``) or ``"cosine"`` (both Adam
    optimisers decayed to 0 over ``steps``: the last steps refine instead of moving on; a warm
    start continues on the longer run's schedule)."""
    ema_decay: float = 0.0
    """Exponential moving average of the decoder's weights (``0``, the ``paper`` preset: off, the
    last iterate). The decoder kept after training (``best``, the evaluation, the returned params) is
    the debiased average of the last ~``1 / (1 - ema_decay)`` steps' weights instead of the last
    step's, a noisy sample of an adversarial game (standard GAN practice, not in the paper; the
    discriminator still plays the raw weights, so training itself is unchanged). The ``robust``
    preset sets 0.999."""
    b1: float = 0.5
    b2: float = 0.999
    w_cls: float = 1.0
    w_adv: float = 1.0
    w_rec: float = 1.0
    w_fea: float = 1.0
    """Weight of ``L_fea`` (the paper: equal weights)."""
    fea_normalized: bool = False
    """Divide ``L_fea`` by ``||z_k||`` (a relative error, ~1 scale like the other terms; a cfjax
    change, the ``robust`` preset's). Off (the ``paper`` preset): ``L_fea = ||z_k - GAP(F(G(F_k)))||_2``
    as the paper writes it, in feature units."""
    w_cls_blur: float = 0.0
    """Weight of ``L_cls`` on the Gaussian-blurred (sigma 1) decoded image: the decoded
    counterfactual must keep the class ``softmax(T (W z_k + b))`` says after the blur that denoised
    validity applies (a cfjax addition, not in the paper; 0, both presets: off). It trains on
    D.Val's own corruption, so a decoder trained with it makes D.Val say less than the paper's
    D.Val; in no preset."""
    w_cls_flip: float = 0.0
    """Weight of ``L_cls`` on the left-right mirrored decoded image: the counterfactual's class
    evidence must hold on both sides of the image, meant to stop a T-shirt from turning into a
    pullover by one grown sleeve (a cfjax addition, not in the paper; 0 turns it off). Only for
    data whose classes a horizontal flip preserves, never digits. In no preset (docs/mirror_cfe.md
    says what it costs on Fashion-MNIST)."""
    cls_temperature: float = 1.0
    """Sharpen the ``L_cls`` (and blurred ``L_cls``) target to ``softmax(T (W z_k + b))``: with
    ``T > 1`` the decoded image is asked to be more decided than ``F_k`` is, so at the same ``k``
    it carries more of the target class (a cfjax change, not in the paper; ``1.0`` = the paper's
    target, both presets). It trains the decoder to overshoot the path: the decoded target
    probability jumps at ``k = 0.5`` where the features rise smoothly, so no preset sharpens
    (docs/mirror_cfe.md measures the gap)."""
    k_cf_fraction: float = 0.0
    """Fraction of the non-reconstruction rows whose ``k`` is drawn from (0.5, 1] (the
    counterfactual side) instead of [0, 1] (0, the ``paper`` preset: ``k ~ U[0, 1]``; a cfjax
    change)."""
    k_cf_max: float = 1.0
    """Upper end of that counterfactual-side draw: ``k ~ U(0.5, k_cf_max]`` (1 = the whole side).
    Below 1 it concentrates training just past the boundary, where the first counterfactual of a
    path is found (a cfjax option, not in the paper, in no preset)."""
    w_tri: float = 1.0
    tri_a: float = 0.2
    rec_fraction: float = 0.25
    """Fraction of each batch decoded at ``k = 0`` (where ``L_rec`` is measured)."""
    pairs: tuple | None = None
    """Directed ``(source, target)`` pairs to train on (both directions are NOT implied);
    ``None``: every ordered pair of distinct classes."""
    train_solver: str = "exact"
    reflect_others: str = "keep"
    """The path the decoder learns and the job walks (:func:`cfjax.methods.mirror.reflection_target`):
    ``"keep"`` (the ``paper`` preset: the reflection swaps the s and t logits and every other class
    keeps its own, so a path can pass through a third class -- 70% of the Fashion-MNIST T-shirt ->
    Pullover paths cross Shirt, and the first counterfactual then sits on the Pullover/Shirt
    boundary) or ``"mirror"`` (a cfjax change, not in the paper: classes whose logit lies above
    the s/t midpoint are reflected across it too, so past ``k = 0.5`` the path is in the target
    class; the ``robust`` preset's path; docs/mirror_cfe.md measures both)."""
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 250
    eval_examples: int = 256

    def as_dict(self) -> dict:
        """The config as recorded in checkpoints and cache names (options at their off value are
        left out, so decoders trained before an option existed still match)."""
        from cfjax.checkpoint import recorded_config

        return recorded_config(self, {"disc_conditional": False, "cls_temperature": 1.0, "lr_schedule": "constant", "ema_decay": 0.0,
                                      "w_cls_flip": 0.0, "k_cf_max": 1.0,
                                      "reflect_others": "keep"})

    def validate(self, name: str = "MirrorDecoderConfig") -> None:
        """The checks both :func:`train_mirror_decoder` and ``MirrorJobConfig.validate`` make
        (raises :class:`cfjax.InputError` naming ``<name>.<field>``)."""
        for field in ("steps", "batch_size", "log_every", "checkpoint_every", "eval_examples"):
            check_positive_int(getattr(self, field), f"{name}.{field}")
        if not _finite_real(self.learning_rate) or not self.learning_rate > 0:
            raise bad_arg(f"{name}.learning_rate", repr(self.learning_rate), "a finite Python or numpy number > 0 (the paper: 2e-4)")
        for field in ("b1", "b2"):
            if not _finite_real(getattr(self, field)) or not 0.0 <= getattr(self, field) < 1.0:
                raise bad_arg(f"{name}.{field}", repr(getattr(self, field)), "an Adam decay rate in [0, 1)")
        if self.train_solver not in SOLVERS:
            raise bad_arg(f"{name}.train_solver", repr(self.train_solver), f"one of {SOLVERS}")
        if self.reflect_others not in OTHERS:
            raise bad_arg(f"{name}.reflect_others", repr(self.reflect_others), f"one of {OTHERS}")
        if not self.cls_temperature > 0:  # also NaN
            raise bad_arg(f"{name}.cls_temperature", self.cls_temperature, "a positive temperature (1 = the paper's L_cls target)")
        if not 0.0 <= self.rho_l <= self.rho_u <= 1.0:  # also NaN
            raise bad_arg(f"{name}.rho_l/rho_u", (self.rho_l, self.rho_u), "CSP threshold bounds with 0 <= rho_l <= rho_u <= 1")
        if not self.w_cls_flip >= 0:  # also NaN
            raise bad_arg(f"{name}.w_cls_flip", self.w_cls_flip, "a weight >= 0 (0 = off)")
        if not 0.5 < self.k_cf_max <= 1.0:  # also NaN
            raise bad_arg(f"{name}.k_cf_max", self.k_cf_max, "an upper end of the counterfactual-side k draw in (0.5, 1]")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad_arg(f"{name}.lr_schedule", repr(self.lr_schedule), f"one of {LR_SCHEDULES}")
        if not 0.0 <= self.ema_decay < 1.0:  # also NaN
            raise bad_arg(f"{name}.ema_decay", self.ema_decay, "a decay in [0, 1) (0 = no weight averaging)")

    @classmethod
    def paper(cls) -> "MirrorDecoderConfig":
        """The paper's decoder (= the field defaults): its path (``reflect_others="keep"``),
        ``L_cls`` against ``softmax(W z_k + b)`` (T = 1), the last iterate (no EMA), no blurred
        ``L_cls``, ``L_fea`` in feature units, ``k ~ U[0, 1]`` (plus the ``rec_fraction`` rows at
        ``k = 0`` where ``L_rec`` is measured), equal loss weights, Adam 2e-4 (0.5, 0.999). Where
        the paper is silent (steps, batch, pairs) the plainest choice: docs/mirror_cfe.md lists them."""
        return cls()

    @classmethod
    def robust(cls) -> "MirrorDecoderConfig":
        """The ``robust`` preset: the paper's decoder plus :data:`ROBUST_CHANGES` (docs/mirror_cfe.md
        measures each change).
        It never trains on D.Val's blur and never sharpens the L_cls target."""
        return dataclasses.replace(cls(), **ROBUST_CHANGES)

    @classmethod
    def preset(cls, name: str) -> "MirrorDecoderConfig":
        """``"paper"`` or ``"robust"`` (:data:`PRESETS`)."""
        if name not in PRESETS:
            raise bad_arg("preset", repr(name), f"one of {PRESETS}")
        return cls.paper() if name == "paper" else cls.robust()

    @classmethod
    def smoke(cls, preset: str = "paper") -> "MirrorDecoderConfig":
        """Runs in seconds (tests, ``--smoke``): ``preset``'s losses and path, tiny widths, 20 steps."""
        return dataclasses.replace(cls.preset(preset), widths=(16, 8, 8), editor_width=8, fk_channels=8, disc_widths=(8, 16), steps=20,
                                   batch_size=16, log_every=5, checkpoint_every=10, eval_examples=32,
                                   **({"ema_decay": 0.9} if cls.preset(preset).ema_decay else {}))


def _finite_real(v) -> bool:
    """A finite real number (Python or numpy, not a bool)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)

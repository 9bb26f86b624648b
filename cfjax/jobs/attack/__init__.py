"""The Counterfactual Attacks job: models -> attribute predictors -> attack every test image
towards every other class (streamed in fixed jitted batches) -> global explanation, pixel
baseline, figures, ``summary.json``, ``report.html``.

It is one :class:`~cfjax.jobs.skeleton.Method` (:class:`AttackJob`) run by
:func:`cfjax.jobs.skeleton.run_job`. CLI: ``cfjax explain attack ...``, ``cfjax global attack
...``, ``cfjax demo`` (parsers in :mod:`cfjax.cli`).

One concept per module: ``config`` (:class:`AttackJobConfig`, the paper's figure pairs),
``rows`` (the per-chunk steps :func:`attack_rows`, :func:`pixel_rows` and the rows of work
:func:`make_pairs`), ``evaluators`` (the evaluator set :func:`attack_evaluators`), ``figures``
(the report's figures) and ``job`` (:class:`AttackJob` and :func:`run_attack_explanation`; the
output folder's layout).
"""

from cfjax.jobs.attack.config import PAPER_PAIRS, AttackJobConfig
from cfjax.jobs.attack.evaluators import attack_chunk, attack_evaluators
from cfjax.jobs.attack.figures import pair_matrix
from cfjax.jobs.attack.job import AttackJob, AttackModels, run_attack_explanation
from cfjax.jobs.attack.rows import AttackFns, attack_rows, make_pairs, pixel_rows

__all__ = [
    "PAPER_PAIRS",
    "AttackFns",
    "AttackJob",
    "AttackJobConfig",
    "AttackModels",
    "attack_chunk",
    "attack_evaluators",
    "attack_rows",
    "make_pairs",
    "pair_matrix",
    "pixel_rows",
    "run_attack_explanation",
]

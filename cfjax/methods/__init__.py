"""The two papers' methods as pure functions of plain JAX callables.

* :mod:`cfjax.methods.attack` -- Counterfactual Attacks (latent / pixel gradient steps in one
  ``lax.scan``, and the compacted batch schedule), :func:`cfjax.attack`,
  :func:`cfjax.attack_batch`, :class:`cfjax.Attack`; its options are one
  :class:`cfjax.AttackOptions` (:mod:`cfjax.methods.attack_options`), its argument checks
  :mod:`cfjax.methods.attack_checks`, its compile-once machinery
  :mod:`cfjax.methods.attack_compiled`.
* :mod:`cfjax.methods.jaxpr_rewrite` -- re-interpreting a model callable equation by
  equation: the XLA:CPU gradient rewrite (:func:`~cfjax.methods.jaxpr_rewrite.cpu_friendly`)
  and mixed precision (:func:`~cfjax.methods.jaxpr_rewrite.mixed_precision`).
* :mod:`cfjax.methods.mirror` -- Mirror-CFE (reflection, L-BFGS refinement, transitions,
  decoding, first counterfactual), :func:`cfjax.mirror_cfe`.
* :mod:`cfjax.methods.attribution` -- attribute predictors' local scores and their global sums.

No training loops, no I/O here (training: :mod:`cfjax.training`). This package re-exports
nothing, so no function hides a submodule of the same name.
"""

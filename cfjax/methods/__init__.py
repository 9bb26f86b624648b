"""The two papers' methods as pure functions of plain JAX callables.

* :mod:`cfjax.methods.attack` -- Counterfactual Attacks (latent / pixel gradient steps in one
  ``lax.scan``), :func:`cfjax.attack`, :func:`cfjax.attack_batch`.
* :mod:`cfjax.methods.mirror` -- Mirror-CFE (reflection, L-BFGS refinement, transitions,
  decoding, first counterfactual), :func:`cfjax.mirror_cfe`.
* :mod:`cfjax.methods.attribution` -- attribute predictors' local scores and their global sums.

No training loops, no I/O here (training: :mod:`cfjax.training`). This package re-exports
nothing, so no function hides a submodule of the same name.
"""

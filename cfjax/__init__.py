"""cfjax: counterfactual explanations of image classifiers in JAX.

The flat public API::

    import cfjax as cf
    cf.attack(decode, logits, z0, target, steps=..., threshold=...)      # Counterfactual Attacks
    cf.reflect(F, W, b, source, target, solver="jaxopt")                  # Mirror-CFE
    cf.explain_dataset(step, init, data, chunk_size=...)                  # streamed, sharded pass

Submodules: ``cfjax.data``, ``cfjax.models``, ``cfjax.train``, ``cfjax.attack``,
``cfjax.attribution``, ``cfjax.mirror``, ``cfjax.metrics``, ``cfjax.parallel``, ``cfjax.report``.
"""

from cfjax.attack import AttackResult, attack, attack_batch, attack_pixels, attack_pixels_batch
from cfjax.attribution import (
    AttributePredictor,
    GlobalSums,
    fit_attribute_predictor,
    global_finalize,
    global_init,
    global_update,
    local_scores,
    predict_attributes,
)
from cfjax.errors import CfjaxError, CheckpointError, DataNotFoundError, InputError
from cfjax.mirror import ReflectResult, first_counterfactual, logits_along, reflect, transitions
from cfjax.models import bind_classifier, bind_vae
from cfjax.parallel import data_mesh, explain_dataset, initialize_distributed, process_slice

__version__ = "0.1.0"

__all__ = [
    "AttackResult",
    "AttributePredictor",
    "CfjaxError",
    "CheckpointError",
    "DataNotFoundError",
    "GlobalSums",
    "InputError",
    "ReflectResult",
    "attack",
    "attack_batch",
    "attack_pixels",
    "attack_pixels_batch",
    "bind_classifier",
    "bind_vae",
    "data_mesh",
    "explain_dataset",
    "first_counterfactual",
    "fit_attribute_predictor",
    "global_finalize",
    "global_init",
    "global_update",
    "initialize_distributed",
    "local_scores",
    "logits_along",
    "predict_attributes",
    "process_slice",
    "reflect",
    "transitions",
]

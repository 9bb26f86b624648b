"""cfjax: counterfactual explanations of image classifiers in JAX.

The flat public API (pure functions of plain JAX callables)::

    import cfjax as cf
    r = cf.attack(decode, logits, z0, target, steps=100, threshold=0.5)       # Counterfactual Attacks, one example
    m = cf.mirror_cfe(feature_maps, W, b, mirror_decode, x, source, target)   # Mirror-CFE, one example
    f = cf.reflect(F, W, b, source, target, solver="jaxopt")                  # its L-BFGS reflection
    acc = cf.explain_dataset(step, init, data, chunk_size=8)                  # streamed, sharded pass

with single-example callables ``decode(z [D]) -> x [H, W, c]``, ``logits(x) -> [K]``,
``feature_maps(x) -> [S_1, ..., S_L, F]`` whose last map ``F`` [h, w, C] the GAP-linear head
``W`` [K, C], ``b`` [K] reads, and ``mirror_decode(F_k, skips, source, target, k) -> x`` (e.g.
``cf.bind_mirror_decoder(trained, W)``); ``step(acc, batch, mask) -> (acc, outputs)``. Batches
compile once: ``cf.make_attack(decode, logits, steps=100)(z0s, targets)`` and
``cf.MirrorCFE(feature_maps, W, b, mirror_decode)(xs, sources, targets)``.

Layers (each imports only from the layers before it; ``docs/architecture.md``)::

    utilities (errors, io, checkpoint, flops, parallel)
      -> cfjax.data -> cfjax.models -> cfjax.methods, cfjax.eval (side by side)
      -> cfjax.training -> cfjax.jobs -> cfjax.cli

``cfjax.training`` and ``cfjax.jobs`` are loaded on first attribute access (``cf.training``,
``cf.jobs``), so ``import cfjax`` stays light and the layering holds at import time too.
"""

from cfjax.errors import CfjaxError, CheckpointError, DataNotFoundError, InputError
from cfjax.eval.evaluators import Evaluator
from cfjax.methods.attack import (
    Attack,
    AttackOptions,
    AttackResult,
    attack,
    attack_batch,
    attack_pixels,
    attack_pixels_batch,
    make_attack,
    make_pixel_attack,
)
from cfjax.methods.attribution import (
    AttributePredictor,
    GlobalSums,
    global_finalize,
    global_init,
    global_update,
    local_scores,
    predict_attributes,
)
from cfjax.methods.mirror import (
    MirrorCFE,
    MirrorResult,
    ReflectResult,
    bind_mirror_decoder,
    first_counterfactual,
    logits_along,
    mirror_cfe,
    reflect,
    reflection_target,
    transitions,
)
from cfjax.models import bind_classifier, bind_vae
from cfjax.models.mirror_decoder import MirrorDecoder
from cfjax.parallel import data_mesh, explain_dataset, initialize_distributed, process_slice

__version__ = "0.1.0"

_LAZY = {"training", "jobs", "cli", "data", "models", "methods", "eval"}
_LAZY_FUNCS = {
    "fit_attribute_predictor": ("cfjax.training.attributes", "fit_attribute_predictor"),
    "train_mirror_decoder": ("cfjax.training.mirror_decoder", "train_mirror_decoder"),
    "MirrorDecoderConfig": ("cfjax.training.mirror_decoder", "MirrorDecoderConfig"),
}


def __getattr__(name):
    import importlib

    if name in _LAZY:
        return importlib.import_module(f"cfjax.{name}")
    if name in _LAZY_FUNCS:
        mod, attr = _LAZY_FUNCS[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'cfjax' has no attribute {name!r}")


__all__ = [
    "Attack",
    "AttackOptions",
    "AttackResult",
    "AttributePredictor",
    "CfjaxError",
    "CheckpointError",
    "DataNotFoundError",
    "Evaluator",
    "GlobalSums",
    "InputError",
    "MirrorDecoder",
    "MirrorCFE",
    "MirrorDecoderConfig",
    "MirrorResult",
    "ReflectResult",
    "attack",
    "attack_batch",
    "attack_pixels",
    "attack_pixels_batch",
    "bind_classifier",
    "bind_mirror_decoder",
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
    "make_attack",
    "make_pixel_attack",
    "mirror_cfe",
    "predict_attributes",
    "process_slice",
    "reflect",
    "reflection_target",
    "train_mirror_decoder",
    "transitions",
]

"""The classifier a Mirror-CFE job explains: the zoo's (trained and cached by cfjax) or a user's,
named on the command line as ``--classifier module:function``.

A user's entry point is called once, with the loaded splits, and returns the classifier as
:class:`cfjax.models.ClassifierFns` (e.g. :meth:`ClassifierFns.from_gap
<cfjax.models.ClassifierFns.from_gap>`) or as a ``(feature_maps, W, b)`` triple::

    # my_models.py
    def gap_cnn(train, test):              # cfjax.data.Dataset splits, images in [0, 1]
        params = load_my_weights()          # or train here
        return ClassifierFns.from_gap(lambda x: my_feature_maps(params, x), W, b)

    $ cfjax train mirror-decoder --data mnist5k --classifier my_models:gap_cnn --out runs/mine

The job checks it like :func:`cfjax.train_mirror_decoder` does (shapes, head against logits) and
identifies it by a digest of its head and of its feature maps on the first test images, so a
decoder trained against one classifier is never reused for another.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import checkpoint as ckpt
from cfjax.errors import bad_arg
from cfjax.models import ClassifierFns, bind_classifier

ENTRY_FORMAT = "'module:function' (an importable module and a function in it, e.g. my_models:gap_cnn)"


class ExplainedClassifier(NamedTuple):
    """The explained classifier as the job uses it.

    Attributes:
      fns: single-example callables and the head (:class:`cfjax.models.ClassifierFns`).
      digest: identifies the classifier in decoder checkpoints and run fingerprints (the params'
        sha256 for the zoo's; head + feature maps on probe images for a user's).
      metrics: at least ``accuracy`` on the test split.
      source: ``"zoo"`` or the user's ``module:function``.
    """

    fns: ClassifierFns
    digest: str
    metrics: dict
    source: str

    def logits_batch(self, x):
        """Batched ``x [n, H, W, c] -> [n, K]``."""
        return jax.vmap(self.fns.logits)(x)


def from_trained(trained) -> ExplainedClassifier:
    """The zoo's classifier (:class:`cfjax.training.loop.Trained`)."""
    return ExplainedClassifier(bind_classifier(trained.module, trained.params), ckpt.tree_digest(trained.params), dict(trained.metrics), "zoo")


def resolve_entry(entry: str, name: str = "classifier") -> Callable:
    """Import ``module:function`` (raises :class:`cfjax.InputError` naming ``name``)."""
    if not isinstance(entry, str) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", entry):
        raise bad_arg(name, repr(entry), ENTRY_FORMAT)
    mod_name, fn_name = entry.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 -- any import failure is the user's module
        raise bad_arg(name, f"{entry!r} (importing {mod_name!r} failed: {type(e).__name__}: {e})", ENTRY_FORMAT) from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise bad_arg(name, f"{entry!r} (module {mod_name!r} has no callable {fn_name!r})", ENTRY_FORMAT)
    return fn


def from_entry(entry: str, train, test, *, name: str = "classifier", probe: int = 8) -> ExplainedClassifier:
    """Call the user's entry point with ``(train, test)`` and check what it returns: a
    :class:`ClassifierFns` or ``(feature_maps, W, b)``; its accuracy is measured on ``test``."""
    from cfjax.methods import mirror_checks as mc
    from cfjax.jobs.skeleton import batched_predict

    out = resolve_entry(entry, name)(train, test)
    if isinstance(out, tuple) and not isinstance(out, ClassifierFns) and len(out) == 3:
        out = ClassifierFns.from_gap(*out)
    if not isinstance(out, ClassifierFns):
        raise bad_arg(name, f"{entry!r} returned {type(out).__name__}", "a cfjax.models.ClassifierFns or a (feature_maps, W, b) triple")
    x = np.asarray(test.images[:probe], np.float32)
    mc.check_classifier_fns(out, x[0], name)
    maps = jax.vmap(lambda xi: list(out.feature_maps(xi))[-1])(jnp.asarray(x))
    h = hashlib.sha256()
    for a in (out.W, out.b, maps):
        h.update(np.ascontiguousarray(np.asarray(a, np.float32)).tobytes())
    fn = jax.jit(lambda xb: jnp.argmax(jax.vmap(out.logits)(xb), -1))
    acc = float(np.mean(batched_predict(fn, test.images) == np.asarray(test.labels)))
    return ExplainedClassifier(out, h.hexdigest(), {"accuracy": acc}, entry)


__all__ = ["ENTRY_FORMAT", "ExplainedClassifier", "from_entry", "from_trained", "resolve_entry"]

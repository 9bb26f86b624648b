r"""Evaluators: metrics as ``init`` / ``update`` / ``finalize`` triples that hold **sums only**.

An :class:`Evaluator` turns the per-example *rows* of one chunk (a dict of ``[n, ...]`` arrays
a method's step returns, plus the padding weight ``"w"``) into additions to a pytree of sums.
Because every state is a sum over examples, evaluators

* shard: the sum over a sharded batch axis is an all-reduce inside ``jit``;
* stream: chunk sums add up (``explain_dataset`` carries them across chunks);
* resume and merge: a checkpoint or a shard's sums combine with another's by addition
  (:func:`merge_states`), exactly. An evaluator whose state is not a plain sum (a spread kept
  as centred squares, combined by Chan's formula) brings its own ``merge``.

``finalize`` runs on the host and turns the sums into summary fields (means, rates, tables).

Row conventions (what the jobs put in ``rows``): ``w`` [n] float 1 for real rows, 0 for
padding; ``ok`` [n] float, 1 for real rows whose counterfactual was found; ``source`` /
``target`` [n] int. A mean over found counterfactuals is ``sum(ok * v) / sum(ok)``.

Add a metric: write (or reuse) one builder below and add its evaluator to the job's
``evaluators(...)`` list; the skeleton (:mod:`cfjax.jobs.skeleton`) does the rest.

Example:
  >>> import jax.numpy as jnp
  >>> ev = weighted_means("dist", {"l1": ("l1", "ok")})
  >>> rows = {"l1": jnp.array([0.1, 0.3, 9.0]), "ok": jnp.array([1.0, 1.0, 0.0])}
  >>> s = ev.update(ev.init(), rows)
  >>> round(ev.finalize(merge_states(s, s))["l1"], 6)
  0.2
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfjax.eval import metrics
from cfjax.eval.intervals import wilson
from cfjax.reduce import masked_sum, pair_sums

Rows = Mapping[str, Any]


class Evaluator(NamedTuple):
    """A metric over a streamed dataset.

    Attributes:
      name: key of its state in the accumulator dict (unique within a job).
      init: ``() -> state``, a pytree of zero float32 sums.
      update: ``(state, rows) -> state`` (pure, jit-able; adds this chunk's masked sums).
      finalize: ``(state) -> dict`` of summary fields (host side, plain Python numbers).
      merge: ``(state, state) -> state`` combining two disjoint parts; ``None`` (the default):
        leaf-wise addition, right for every pure-sum state.
    """

    name: str
    init: Callable[[], Any]
    update: Callable[[Any, Rows], Any]
    finalize: Callable[[Any], dict]
    merge: Callable[[Any, Any], Any] | None = None


def _zeros(*shape) -> jax.Array:
    return jnp.zeros(shape, jnp.float32)


def _ratio(num, den) -> float:
    den = float(den)
    return float(num) / den if den else float("nan")


def init_states(evaluators: Sequence[Evaluator]) -> dict:
    """``{name: init()}`` for every evaluator (names must be unique)."""
    names = [e.name for e in evaluators]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluator names must be unique, got {names}")
    return {e.name: e.init() for e in evaluators}


def update_states(evaluators: Sequence[Evaluator], states: dict, rows: Rows) -> dict:
    """Every evaluator's ``update`` on one chunk's rows (pure)."""
    return {e.name: e.update(states[e.name], rows) for e in evaluators}


def finalize_states(evaluators: Sequence[Evaluator], states: dict) -> dict:
    """Every evaluator's ``finalize``, merged into one flat dict (later keys win)."""
    host = jax.tree_util.tree_map(np.asarray, jax.device_get(states))
    out: dict = {}
    for e in evaluators:
        out.update(e.finalize(host[e.name]))
    return out


def _add(*states):
    return jax.tree_util.tree_map(lambda *a: sum(a[1:], a[0]), *states)


def merge_states(*states, evaluators: Sequence[Evaluator] | None = None):
    """Combine the states of disjoint parts (chunks, devices, hosts, shards).

    ``states`` are ``{name: state}`` dicts of :func:`init_states`' shape. With ``evaluators``,
    each evaluator's own ``merge`` is used where it has one (leaf-wise addition otherwise);
    without, every leaf is added (right for pure-sum states only)."""
    own = {e.name: e.merge for e in (evaluators or ()) if e.merge is not None}
    if not own:
        return _add(*states)
    out = {}
    for name in states[0]:
        parts = [s[name] for s in states]
        if name in own:
            acc = parts[0]
            for p in parts[1:]:
                acc = own[name](acc, p)
            out[name] = acc
        else:
            out[name] = _add(*parts)
    return out


# ------------------------------------------------------------------------------ builders


def counts(name: str, fields: Mapping[str, str], *, as_int: bool = True) -> Evaluator:
    """``out -> sum(rows[key])`` for each ``out: key`` (e.g. ``{"n_counterfactuals": "w"}``)."""

    def init():
        return {k: _zeros() for k in fields}

    def update(s, rows):
        return {k: s[k] + jnp.sum(jnp.asarray(rows[key], jnp.float32)) for k, key in fields.items()}

    def finalize(s):
        return {k: int(round(float(s[k]))) if as_int else float(s[k]) for k in fields}

    return Evaluator(name, init, update, finalize)


def weighted_means(
    name: str,
    fields: Mapping[str, tuple[str, str]],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    complements: Mapping[str, str] | None = None,
) -> Evaluator:
    """``out -> sum(w * v) / sum(w)`` for each ``out: (value_key, weight_key)``; NaN when the
    weights sum to zero. ``shapes[out]`` gives the trailing shape of a non-scalar value
    (e.g. ``(m,)`` for a curve ``[n, m]``: the weighted mean per column, as a list).
    ``complements``: ``extra_out -> out`` adds ``1 - out`` (e.g. ``fail_rate`` from ``validity``)."""
    shapes = dict(shapes or {})
    complements = dict(complements or {})

    def init():
        return {"num": {k: _zeros(*shapes.get(k, ())) for k in fields}, "den": {k: _zeros() for k in fields}}

    def update(s, rows):
        num = {k: s["num"][k] + masked_sum(rows[vk], rows[wk]) for k, (vk, wk) in fields.items()}
        den = {k: s["den"][k] + jnp.sum(jnp.asarray(rows[wk], jnp.float32)) for k, (vk, wk) in fields.items()}
        return {"num": num, "den": den}

    def finalize(s):
        out = {}
        for k in fields:
            n, d = np.asarray(s["num"][k], np.float64), float(s["den"][k])
            if n.ndim:
                out[k] = (n / d).tolist() if d else [float("nan")] * n.shape[0]
            else:
                out[k] = _ratio(n, d)
        for k, of in complements.items():
            out[k] = 1.0 - out[of]
        return out

    return Evaluator(name, init, update, finalize)


_POISSON1_CDF = np.cumsum([np.exp(-1.0) / math.factorial(k) for k in range(16)]).astype(np.float32)  # numpy: importing starts no backend
"""P(X <= k) of Poisson(1), k = 0..15 (the mass beyond 15 is below 1e-13): inverse-CDF sampling
without the rejection loop of ``jax.random.poisson``, so a sharded step holds no data-dependent
loop (whose every iteration would be a cross-device collective)."""


def bootstrap_means(name: str, fields: Mapping[str, tuple[str, str]], *, row_id: str = "row_id", n_boot: int = 200, seed: int = 0,
                    level: float = 0.95) -> Evaluator:
    """Percentile intervals of weighted means by a **Poisson bootstrap** that streams and shards.

    Each row gets ``n_boot`` Poisson(1) resampling weights drawn from ``(seed, rows[row_id])``
    alone (``row_id``: the row's global index), so replicate ``b``'s sums ``sum_i P_ib w_i v_i``
    and ``sum_i P_ib w_i`` are plain sums: chunks, devices, hosts and shards add, and a merged run
    resamples exactly as the unsharded one. For n in the tens or more the Poisson bootstrap is
    the multinomial bootstrap's large-sample twin (Hanley & MacGibbon 2006; Chamandy et al. 2012).

    ``out -> (value_key, weight_key)`` as :func:`weighted_means`; finalize gives
    ``out + "_ci": [lo, hi]`` (``[nan, nan]`` with fewer than 2 weighted rows).
    """
    a = (1.0 - level) / 2.0

    def init():
        return {"num": {k: _zeros(n_boot) for k in fields}, "den": {k: _zeros(n_boot) for k in fields}}

    def update(s, rows):
        ids = jnp.asarray(rows[row_id]).astype(jnp.uint32)
        base = jax.random.key(seed)
        u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(base, i), (n_boot,)))(ids)  # [n, B]
        pw = jnp.sum(u[..., None] >= _POISSON1_CDF, axis=-1).astype(jnp.float32)  # Poisson(1) by inverse CDF, no loop
        num, den = {}, {}
        for k, (vk, wk) in fields.items():
            wv = jnp.asarray(rows[wk], jnp.float32)
            v = jnp.where(wv > 0, jnp.asarray(rows[vk], jnp.float32) * wv, 0.0)
            num[k] = s["num"][k] + jnp.einsum("nb,n->b", pw, v, precision=jax.lax.Precision.HIGHEST)
            den[k] = s["den"][k] + jnp.einsum("nb,n->b", pw, wv, precision=jax.lax.Precision.HIGHEST)
        return {"num": num, "den": den}

    def finalize(s):
        out = {}
        for k in fields:
            n, d = np.asarray(s["num"][k], np.float64), np.asarray(s["den"][k], np.float64)
            ok = d > 0
            if ok.sum() < 2 or float(np.median(d)) < 2:
                out[f"{k}_ci"] = [float("nan"), float("nan")]
                continue
            m = n[ok] / d[ok]
            out[f"{k}_ci"] = [float(np.quantile(m, a)), float(np.quantile(m, 1 - a))]
        return out

    return Evaluator(name, init, update, finalize)


def wilson_rates(name: str, fields: Mapping[str, tuple[str, str]]) -> Evaluator:
    """Wilson 95% intervals of rates: ``out -> (hit_key, weight_key)`` sums ``k = sum w h`` and
    ``n = sum w`` (``h`` in {0, 1}); finalize gives ``out + "_ci": [lo, hi]``."""

    def init():
        return {"k": {o: _zeros() for o in fields}, "n": {o: _zeros() for o in fields}}

    def update(s, rows):
        k = {o: s["k"][o] + masked_sum(rows[hk], rows[wk]) for o, (hk, wk) in fields.items()}
        n = {o: s["n"][o] + jnp.sum(jnp.asarray(rows[wk], jnp.float32)) for o, (hk, wk) in fields.items()}
        return {"k": k, "n": n}

    def finalize(s):
        return {f"{o}_ci": list(wilson(int(round(float(s["k"][o]))), int(round(float(s["n"][o]))))) for o in fields}

    return Evaluator(name, init, update, finalize)


def categorical(name: str, key: str, weight: str, labels: Sequence[str], out: str) -> Evaluator:
    """Weighted counts of an integer code: ``out -> {labels[c]: count}``."""
    c = len(labels)

    def init():
        return _zeros(c)

    def update(s, rows):
        oh = jax.nn.one_hot(rows[key], c, dtype=jnp.float32)
        return s + masked_sum(oh, rows[weight])

    def finalize(s):
        return {out: {labels[i]: int(round(float(v))) for i, v in enumerate(np.asarray(s))}}

    return Evaluator(name, init, update, finalize)


def pair_table(
    name: str,
    num_classes: int,
    class_names: Sequence[str],
    *,
    count: str,
    rates: Mapping[str, str] | None = None,
    means: Mapping[str, tuple[str, str]] | None = None,
    out: str = "pairs",
    n_key: str = "n",
) -> Evaluator:
    """The one per-(source, target) table: ``out -> {"S->T": {n, rate..., mean...}}``.

    Args:
      count: weight key whose per-pair sum is the row's ``n`` (pairs with ``n = 0`` are left out).
      rates: ``field -> key``: ``sum(key) / n`` per pair (e.g. validity from ``"ok"``).
      means: ``field -> (value, weight)``: ``sum(w v) / sum(w)`` per pair (``None`` when empty).
    """
    rates, means = dict(rates or {}), dict(means or {})
    K = int(num_classes)

    def init():
        return {"n": _zeros(K * K), **{f"r_{k}": _zeros(K * K) for k in rates},
                **{f"m_{k}": _zeros(K * K) for k in means}, **{f"w_{k}": _zeros(K * K) for k in means}}

    def update(s, rows):
        src, tgt = rows["source"], rows["target"]
        ps = lambda v, w: pair_sums(v, src, tgt, w, K)  # noqa: E731
        ones = jnp.ones_like(jnp.asarray(rows[count], jnp.float32))
        new = {"n": s["n"] + ps(ones, rows[count])}
        for k, key in rates.items():
            new[f"r_{k}"] = s[f"r_{k}"] + ps(jnp.asarray(rows[key], jnp.float32), rows[count])
        for k, (vk, wk) in means.items():
            new[f"m_{k}"] = s[f"m_{k}"] + ps(rows[vk], rows[wk])
            new[f"w_{k}"] = s[f"w_{k}"] + ps(ones, rows[wk])
        return new

    def finalize(s):
        g = {k: np.asarray(v, np.float64).reshape(K, K) for k, v in s.items()}
        table = {}
        for a, b in zip(*np.nonzero(g["n"] > 0)):
            n = g["n"][a, b]
            row: dict = {n_key: int(round(n))}
            for k in rates:
                row[k] = float(g[f"r_{k}"][a, b] / n)
            for k in means:
                w = g[f"w_{k}"][a, b]
                row[k] = float(g[f"m_{k}"][a, b] / w) if w else None
            table[f"{class_names[a]}->{class_names[b]}"] = row
        return {out: table}

    return Evaluator(name, init, update, finalize)


def pair_curves(name: str, num_classes: int, class_names: Sequence[str], fields: Mapping[str, str], weight: str, m: int,
                out: str = "pair_curves") -> Evaluator:
    """Per (source, target) pair, the weighted mean of ``[n, m]`` curves: ``out -> {"S->T": {field: [m]}}``."""
    K = int(num_classes)

    def init():
        return {"w": _zeros(K * K), **{k: _zeros(K * K, m) for k in fields}}

    def update(s, rows):
        src, tgt, w = rows["source"], rows["target"], rows[weight]
        new = {"w": s["w"] + pair_sums(jnp.ones_like(jnp.asarray(w, jnp.float32)), src, tgt, w, K)}
        for k, key in fields.items():
            new[k] = s[k] + pair_sums(rows[key], src, tgt, w, K)
        return new

    def finalize(s):
        w = np.asarray(s["w"], np.float64)
        res = {}
        for p in np.flatnonzero(w > 0):
            a, b = divmod(int(p), K)
            res[f"{class_names[a]}->{class_names[b]}"] = {k: (np.asarray(s[k], np.float64)[p] / w[p]).tolist() for k in fields}
        return {out: res}

    return Evaluator(name, init, update, finalize)


def log_histogram(name: str, key: str, weight: str, *, lo: int = -8, hi: int = 2, out_max: str | None = None, out: str | None = None) -> Evaluator:
    """Counts of ``rows[key]`` per decade ``[10^e, 10^(e+1))`` for ``e`` in ``[lo, hi)`` (plus an
    underflow and an overflow bin): a sums-only stand-in for a running max. ``out_max`` reports
    the upper edge of the highest non-empty bin (an upper bound of the maximum, within 10x)."""
    edges = np.concatenate([[0.0], 10.0 ** np.arange(lo, hi + 1, dtype=np.float64), [np.inf]])

    def init():
        return _zeros(len(edges) - 1)

    def update(s, rows):
        v = jnp.abs(jnp.asarray(rows[key], jnp.float32))
        v = jnp.where(jnp.isfinite(v), v, jnp.inf)
        b = jnp.clip(jnp.searchsorted(jnp.asarray(edges[1:-1], jnp.float32), v, side="right"), 0, len(edges) - 2)
        return s + masked_sum(jax.nn.one_hot(b, len(edges) - 1, dtype=jnp.float32), rows[weight])

    def finalize(s):
        c = np.asarray(s, np.float64)
        res = {}
        if out:
            res[out] = {"edges": [float(e) for e in edges], "counts": [int(round(x)) for x in c]}
        if out_max:
            nz = np.flatnonzero(c > 0)
            res[out_max] = float(edges[nz[-1] + 1]) if len(nz) else 0.0
        return res

    return Evaluator(name, init, update, finalize)


def linear_histogram(name: str, key: str, weight: str, *, lo: float, hi: float, bins: int, out: str,
                     quantiles: Sequence[float] = (0.25, 0.5, 0.75)) -> Evaluator:
    """Counts of ``rows[key]`` in ``bins`` equal bins over ``[lo, hi]`` (values outside are
    clipped into the end bins; non-finite values and zero-weight rows are not counted): a
    sums-only stand-in for quantiles. ``finalize`` reports ``{out: {"edges", "counts",
    "q25", "q50", "q75", ...}}``, each quantile interpolated linearly inside its bin (exact to one
    bin width, ``(hi - lo) / bins``)."""
    edges = np.linspace(lo, hi, bins + 1)

    def init():
        return _zeros(bins)

    def update(s, rows):
        v = jnp.asarray(rows[key], jnp.float32)
        wt = jnp.where(jnp.isfinite(v), jnp.asarray(rows[weight], jnp.float32), 0.0)
        i = jnp.clip(jnp.floor((jnp.nan_to_num(v) - lo) / (hi - lo) * bins), 0, bins - 1).astype(jnp.int32)
        return s + masked_sum(jax.nn.one_hot(i, bins, dtype=jnp.float32), wt)

    def finalize(s):
        c = np.asarray(s, np.float64)
        res = {"edges": [float(e) for e in edges], "counts": [int(round(x)) for x in c]}
        total, cum = c.sum(), np.cumsum(c)
        for q in quantiles:
            key_q = f"q{int(round(100 * q))}"
            if total <= 0:
                res[key_q] = float("nan")
                continue
            j = int(np.searchsorted(cum, q * total, side="left"))
            before = cum[j - 1] if j else 0.0
            frac = (q * total - before) / c[j] if c[j] > 0 else 0.0
            res[key_q] = float(edges[j] + frac * (edges[j + 1] - edges[j]))
        return {out: res}

    return Evaluator(name, init, update, finalize)


def fid_moments(name: str, key: str, weight: str, dim: int, out: str = "fid_moments") -> Evaluator:
    """Mergeable feature moments (:class:`cfjax.eval.metrics.FidMoments`) of ``rows[key]``
    ``[n, dim]``; ``finalize`` returns them (the job compares them with the real images')."""

    def init():
        return metrics.fid_moments_init(dim, jnp.float32)._asdict()

    def update(s, rows):
        m = metrics.fid_moments_update(metrics.FidMoments(**s), rows[key], jnp.asarray(rows[weight]) > 0)
        return m._asdict()

    def finalize(s):
        return {out: metrics.FidMoments(**{k: np.asarray(v) for k, v in s.items()})}

    return Evaluator(name, init, update, finalize)


def grouped(group: str, ev: Evaluator) -> Evaluator:
    """``ev`` with its finalized fields nested under ``group`` (e.g. ``{"faithfulness": {...}}``)."""
    return Evaluator(ev.name, ev.init, ev.update, lambda s: {group: ev.finalize(s)}, ev.merge)


def custom(name: str, init: Callable[[], Any], update: Callable[[Any, Rows], Any], finalize: Callable[[Any], dict],
           merge: Callable[[Any, Any], Any] | None = None) -> Evaluator:
    """An evaluator from three functions (a pytree of sums), or four where the state needs its
    own ``merge`` (see :class:`Evaluator`)."""
    return Evaluator(name, init, update, finalize, merge)


__all__ = [
    "Evaluator",
    "bootstrap_means",
    "wilson_rates",
    "categorical",
    "counts",
    "custom",
    "fid_moments",
    "finalize_states",
    "grouped",
    "init_states",
    "linear_histogram",
    "log_histogram",
    "merge_states",
    "pair_curves",
    "pair_table",
    "update_states",
    "weighted_means",
]

"""The compile-once attack: models and options bound once, arguments checked on the host at
every call, and one program compiled per input shape.

:class:`CompiledAttack` holds this machinery; :class:`cfjax.Attack`
(:mod:`cfjax.methods.attack`) is it with the attack's step loop bound as ``run_single`` and
``run_batch``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import numpy as np
from jaxtyping import Array, Float, Int

from cfjax._checks import check_images
from cfjax.placement import align_batch
from cfjax.errors import bad_arg
from cfjax.methods.attack_checks import LATENT, PIXELS, check_batch_args, check_single_args, check_source_values, check_target_values, num_classes
from cfjax.methods.attack_options import AttackOptions, build_options, spec_of, takes_options


def _differs(a, b) -> bool:
    try:
        return bool(a != b)
    except Exception:  # noqa: BLE001 - e.g. an array option: show it
        return True


class CompiledAttack:
    """An attack with its models and options bound once and its program compiled once per
    input shape: ``Attack(decode, logits, options, **keywords)(z0, target) -> AttackResult``.

    Calling :func:`cfjax.attack_batch` directly re-traces and re-compiles the whole loop on
    every call (seconds per call, even for a toy model); an ``Attack`` jits it once, so later
    calls with the same shapes and dtypes only run the compiled program. The options are checked at
    construction; each call still checks argument shapes and dtypes, and (for concrete arrays)
    the target and source ranges, ``target != source`` and finite ``z0`` on the host, without
    tracing again. Concrete preset targets are cast to int32 on the host, so uint8 or int64
    targets reuse the int32 program; :attr:`compile_count` says how many programs were built.

    The models are closed over: their weights are constants of the compiled program. A model
    changed in place afterwards (an NNX module trained further) is NOT seen by later calls of
    the same shapes; build a new ``Attack`` or pass the weights as data (docs/byom.md).

    Args:
      decode: ``z -> x [H, W, C]`` (single example; :func:`cfjax.make_pixel_attack` binds
        the identity and clips to [0, 1]).
      logits: ``x -> [K]``.
      options: an :class:`~cfjax.methods.attack_options.AttackOptions`; its fields may also be
        given as keywords, which build it or override them (the batch-schedule fields only
        when ``batched``).
      batched: ``True`` (default): calls take a batch (:func:`cfjax.attack_batch`); ``False``:
        one example (:func:`cfjax.attack`).

    Attributes:
      options: the checked :class:`~cfjax.methods.attack_options.AttackOptions`.

    Example:
      >>> import jax.numpy as jnp
      >>> from cfjax import Attack
      >>> run = Attack(lambda z: z, lambda x: jnp.eye(3) @ x, steps=50)
      >>> r = run(jnp.zeros((4, 3)), jnp.array([0, 1, 2, 1]))   # traces and compiles
      >>> r = run(jnp.ones((4, 3)), jnp.array([2, 2, 0, 1]))    # reuses the program
      >>> bool(r.success.all()), run.compile_count
      (True, 1)
    """

    run_single: Callable  # (names, decode, logits, z0, target, opts) -> AttackResult, one example
    run_batch: Callable  # (names, decode, logits, z0, target, opts) -> AttackResult, a batch

    @takes_options(batch=True)
    def __init__(self, decode: Callable, logits: Callable, options: AttackOptions | None = None, *, batched: bool = True, **kw):
        names = PIXELS if kw.pop("_pixels", False) else LATENT  # set by make_pixel_attack, with options already built
        if not callable(decode):
            raise bad_arg("decode", type(decode).__name__, "a callable z -> x")
        if not callable(logits):
            raise bad_arg("logits", type(logits).__name__, "a callable x -> logits")
        self.options = build_options(options, kw, batch=batched, where="attack_batch" if batched else "attack")
        self.decode, self.logits, self.batched, self._names = decode, logits, batched, names
        self._spec = spec_of(self.options)
        self._k: dict = {}
        self._compiles = 0
        impl = functools.partial(self.run_batch if batched else self.run_single, names, decode, logits, opts=self.options)

        def _attack_program(z0, target):  # runs only while jit traces, i.e. once per program it compiles
            self._compiles += 1
            return impl(z0, target)

        self._fn = jax.jit(_attack_program)

    def __repr__(self) -> str:
        fields = [f for f in dataclasses.fields(self.options) if self.batched or not f.metadata.get("batch")]
        opts = ", ".join(f"{f.name}={getattr(self.options, f.name)!r}" for f in fields if _differs(getattr(self.options, f.name), f.default))
        return f"{type(self).__name__}({'batched' if self.batched else 'single'}{', ' if opts else ''}{opts})"

    @property
    def compile_count(self) -> int:
        """How many programs this attack has traced and compiled so far: one per distinct
        ``(z0, target)`` shape and dtype signature (0 before the first call). For a user's own
        test that a loop of calls does not recompile. A call made inside an outer ``jax.jit``
        counts once per trace of that outer function."""
        return self._compiles

    def _classes(self, z0, target) -> int:
        key = (tuple(z0.shape), str(z0.dtype), tuple(np.shape(target)), str(getattr(target, "dtype", "")))
        if key not in self._k:  # traces the callables abstractly once per shape
            self._k[key] = num_classes(self.decode, self.logits, z0, target, self._spec, batched=self.batched, names=self._names)
        return self._k[key]

    def __call__(self, z0: Float[Array, "n d"], target: Int[Array, "n"], source: Int[Array, "n"] | None = None) -> AttackResult:
        """Run the attack (compiling on the first call with these shapes).

        Args:
          z0: starting latents [n, ...] (one example [...] when ``batched=False``; images
            [n, H, W, C] for a pixel attack, named ``x0`` in its messages).
          target: [n] targets (a scalar when ``batched=False``).
          source: optional [n] source classes, checked in ``[0, K)`` and ``!= target`` on the
            host.

        Returns:
          :class:`~cfjax.methods.attack.AttackResult` (with a leading batch axis when batched).
        """
        names = self._names
        restore = lambda r: r  # noqa: E731
        if self.batched:  # any caller sharding (an Explicit mesh, committed arrays) -> one layout
            (z0, target, source), restore = align_batch(z0, target, source)
        if names is PIXELS:
            check_images(z0, names.start, batched=self.batched)
        if self.batched:
            z0, target = check_batch_args(z0, target, source, self._spec, names)
        else:
            z0, target = check_single_args(z0, target, self._spec, names, "use a batched Attack for batches")
        k = self._classes(z0, target)
        target = check_target_values(target, k, self._spec)  # preset targets: int32, cast on the host
        check_source_values(source, k)
        return restore(self._fn(z0, target))


__all__ = ["CompiledAttack"]

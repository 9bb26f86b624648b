"""Bringing models from other frameworks into cfjax (layer 2, beside :mod:`cfjax.models`).

* :mod:`cfjax.interop.torch_weights` -- PyTorch ``state_dict`` -> JAX arrays with the right
  layouts (convolutions, transposed convolutions, linear layers after an NCHW flatten,
  batch norm), numpy only: torch is never imported here.

This package re-exports nothing, so no function hides a submodule of the same name.
"""

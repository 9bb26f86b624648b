r"""Mirror-CFE decoder ``G`` (feature map -> image) and its patch discriminator.

``G`` turns an interpolated feature map ``F_k`` [n, h, w, C] of a GAP-CNN back into an image.
It also reads the classifier's earlier block maps of the **source** image (the *skips*), so
everything the class decision does not need (stroke position, background, texture) comes
straight from the source. Where the class spatial prior (CSP) mask ``M`` is on, a small
**spatial pattern editor** rewrites the skip from ``concat(source skip, upsampled F_k)``:

.. math::  \tilde S_i = (1 - M_i) \odot S_i + M_i \odot \mathrm{editor}_i([S_i, \uparrow F_k])

``M_i`` is :func:`cfjax.mirror.csp_mask` resized to skip ``i``'s resolution (computed outside
the module: the module is a plain image generator). The decoder goes coarse to fine:
``F_k`` -> conv -> for each skip from the deepest: upsample, concat the mixed skip,
two 3x3 convs -> final upsample to the image size -> 3x3 conv -> sigmoid (images in [0, 1]).
Sizes follow the inputs, so the same module serves 28x28x1 and 64x64x3 (``image_shape``).

**High resolution** (issue 27; a ResNet's shallowest skip is 1/4 of the image at 128-224 px):
when the shallowest skip is smaller than the image, a *tail* of x2 upsample + 3x3 conv stages
(``tail{j}_conv``, width ``max(widths[-1] // 2, 8)``) climbs to the image size instead of one
large pixel repetition; a final non-power-of-two factor (224 = 7 * 32) is taken by the last
resize. With ``skip_mode="eq12"`` each editor pools its skip down to ``F_k``'s resolution (the
paper's controller), so the editors cost the same at 224 px as at 64 px. Two memory options,
neither of which changes the parameters (a decoder trained with them loads without them):

* ``remat``: each level (editor, mix, two convs) and each tail stage is rematerialised in the
  backward pass (``nn.remat`` of a per-level function, parameter names unchanged): only the
  level outputs are kept; outputs and gradients are identical. Off by default: XLA:CPU's
  memory accounting of the training step showed no saving at 64-224 px (the ``L_cls`` pass
  through the classifier dominates; BUILD_NOTES, issue 27).
* ``dtype``: compute dtype of the convolutions (``jnp.bfloat16``: bf16 activations and
  matmuls, float32 parameters, float32 sigmoid output).

No training logic here (see :func:`cfjax.mirror.train_mirror_decoder`).

Example:
  >>> import jax, jax.numpy as jnp
  >>> g = MirrorDecoder(image_shape=(28, 28, 1), widths=(16, 8, 8), editor_width=8)
  >>> F = jnp.zeros((2, 4, 4, 32))
  >>> skips = [jnp.zeros((2, 28, 28, 8)), jnp.zeros((2, 14, 14, 16)), jnp.zeros((2, 7, 7, 32))]
  >>> masks = [jnp.ones((2, 28, 28, 1)), jnp.ones((2, 14, 14, 1)), jnp.ones((2, 7, 7, 1))]
  >>> params = g.init(jax.random.key(0), F, skips, masks)
  >>> g.apply(params, F, skips, masks).shape
  (2, 28, 28, 1)
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def _resize(x: Float[Array, "n h w c"], hw: tuple[int, int]) -> Float[Array, "n H W c"]:
    """Upsample to ``hw``: pixel repetition for integer factors (the following 3x3 convs
    smooth it; 2x cheaper to differentiate on CPU than ``jax.image.resize``), else bilinear."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(hw):
        return x
    if hw[0] % h == 0 and hw[1] % w == 0:
        return jnp.repeat(jnp.repeat(x, hw[0] // h, axis=1), hw[1] // w, axis=2)
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), "bilinear")


class PatternEditor(nn.Module):
    """Spatial pattern editor of one skip: ``concat(skip, F_k up) -> edited skip`` (same
    channels, ReLU so it lives where the classifier's post-ReLU skips live)."""

    width: int
    dtype: object = None

    @nn.compact
    def __call__(self, skip, fk_up):
        h = nn.relu(nn.Conv(self.width, (3, 3), padding="SAME", dtype=self.dtype, name="conv0")(jnp.concatenate([skip, fk_up], -1)))
        return nn.relu(nn.Conv(skip.shape[-1], (3, 3), padding="SAME", dtype=self.dtype, name="conv1")(h))


def _pool_to(x: Float[Array, "n H W c"], hw: tuple[int, int]) -> Float[Array, "n h w c"]:
    """Average-pool down to ``hw`` (exact block means for integer factors, else bilinear)."""
    H, W = x.shape[1:3]
    h, w = hw
    if (H, W) == (h, w):
        return x
    if H % h == 0 and W % w == 0:
        return x.reshape(x.shape[0], h, H // h, w, W // w, x.shape[-1]).mean((2, 4))
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[-1]), "bilinear")


class Eq12Editor(nn.Module):
    """The paper's spatial pattern editor (Eq. 12): ``u = D_i(concat(B_i(S_i), F_k))``.

    ``B_i`` maps the source skip DOWN to ``F_k``'s resolution (average pool + 3x3 conv), it is
    concatenated with the FULL ``F_k``, and ``D_i`` maps the result back up to the skip's size
    and channels (3x3 conv, upsample, two 3x3 convs; ReLU output like the classifier's skips).
    Inside the CSP mask the decoder thus sees the source only through ``F_k``'s resolution."""

    width: int
    dtype: object = None

    @nn.compact
    def __call__(self, skip, F_k):
        hw_k, hw_s = tuple(F_k.shape[1:3]), tuple(skip.shape[1:3])
        conv = lambda c, name: nn.Conv(c, (3, 3), padding="SAME", dtype=self.dtype, name=name)  # noqa: E731
        b = nn.relu(conv(self.width, "B")(_pool_to(skip, hw_k)))
        u = nn.relu(conv(self.width, "D0")(jnp.concatenate([b, F_k.astype(b.dtype)], -1)))
        u = nn.relu(conv(self.width, "D1")(_resize(u, hw_s)))
        return nn.relu(conv(skip.shape[-1], "D2")(u))


class MirrorDecoder(nn.Module):
    """``G(F_k, skips, masks) -> image`` in [0, 1].

    Attributes:
      image_shape: ``(H, W, c)`` of the output.
      widths: decoder channels at each skip level, deepest skip first (the last value is
        reused if there are more skips than widths).
      editor_width: hidden channels of each spatial pattern editor.
      fk_channels: ``F_k`` is reduced to this many channels (1x1 conv) before it is
        upsampled into the editors (``skip_mode="full"`` only).
      skip_mode: ``"full"``: the editor sees the full-resolution source skip and the upsampled,
        reduced ``F_k`` (:class:`PatternEditor`); ``"eq12"``: the paper's Eq. 12
        (:class:`Eq12Editor`: the skip pooled to ``F_k``'s resolution + the full ``F_k``).
      remat: rematerialise each level in the backward pass.
      dtype: compute dtype (``None`` = float32; ``jnp.bfloat16``: bf16 compute, f32 params).
    """

    image_shape: tuple[int, int, int] = (28, 28, 1)
    widths: Sequence[int] = (64, 32, 16)
    editor_width: int = 16
    fk_channels: int = 32
    skip_mode: str = "full"
    remat: bool = False
    dtype: object = None

    @nn.compact
    def __call__(
        self,
        F_k: Float[Array, "n h w C"],
        skips: Sequence[Float[Array, "n hi wi ci"]],
        masks: Sequence[Float[Array, "n hi wi 1"]],
    ) -> Float[Array, "n H W c"]:
        """Args:
          F_k: the (interpolated) last feature map.
          skips: the classifier's earlier block maps of the SOURCE image, shallow to deep
            (the order of ``Classifier.feature_maps(x)[:-1]``).
          masks: one CSP mask per skip at that skip's resolution, values in [0, 1].
        """
        if len(skips) != len(masks):
            raise ValueError(f"masks: expected one per skip ({len(skips)}), got {len(masks)}")
        H, W, c = self.image_shape
        widths = list(self.widths) or [32]
        if self.skip_mode not in ("full", "eq12"):
            raise ValueError(f"skip_mode: expected 'full' or 'eq12', got {self.skip_mode!r}")
        dt = self.dtype
        remat = self.remat
        fk = nn.Conv(self.fk_channels, (1, 1), dtype=dt, name="fk_reduce")(F_k) if self.skip_mode == "full" else None
        h = nn.relu(nn.Conv(widths[0], (3, 3), padding="SAME", dtype=dt, name="stem")(F_k))

        def level(mdl, h, skip, m, F_k, fk, i, width):
            hw = tuple(skip.shape[1:3])
            if mdl.skip_mode == "full":
                edited = PatternEditor(mdl.editor_width, dtype=dt, name=f"editor{i}", parent=mdl)(skip, _resize(fk, hw))
            else:
                edited = Eq12Editor(mdl.editor_width, dtype=dt, name=f"editor{i}", parent=mdl)(skip, F_k)
            mixed = (1.0 - m) * skip + m * edited.astype(skip.dtype)
            h = _resize(h, hw)
            mixed = mixed.astype(h.dtype)
            h = nn.relu(nn.Conv(width, (3, 3), padding="SAME", dtype=dt, name=f"up{i}_conv0", parent=mdl)(jnp.concatenate([h, mixed], -1)))
            return nn.relu(nn.Conv(width, (3, 3), padding="SAME", dtype=dt, name=f"up{i}_conv1", parent=mdl)(h))

        def tail(mdl, h, j, width):
            h = _resize(h, (2 * h.shape[1], 2 * h.shape[2]))
            return nn.relu(nn.Conv(width, (3, 3), padding="SAME", dtype=dt, name=f"tail{j}_conv", parent=mdl)(h))

        level_fn = nn.remat(level, static_argnums=(6, 7)) if remat else level
        tail_fn = nn.remat(tail, static_argnums=(2, 3)) if remat else tail
        for lvl, i in enumerate(reversed(range(len(skips)))):
            width = widths[min(lvl, len(widths) - 1)]
            h = level_fn(self, h, skips[i], masks[i], F_k, fk, i, width)
        j = 0
        while 2 * h.shape[1] <= H and 2 * h.shape[2] <= W:  # the high-resolution tail
            h = tail_fn(self, h, j, max(widths[-1] // 2, 8))
            j += 1
        h = _resize(h, (H, W))
        out = nn.Conv(c, (3, 3), padding="SAME", dtype=dt, name="out")(h)
        return nn.sigmoid(out.astype(jnp.float32))


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: stride-2 4x4 convs with LeakyReLU(0.2), then a 3x3 conv to one logit per
    patch ([n, h', w', 1]; 7x7 patches for 28x28 inputs with two layers). Inputs in [0, 1].

    With ``num_classes > 0`` it is class-conditional by projection (Miyato & Koyama, 2018): every
    patch logit gets ``<embed(y), mean_patches(h)>`` added, so an image labelled ``y`` must look
    like a real ``y`` as a whole, not only patch by patch. ``y`` [n] int is then required."""

    widths: Sequence[int] = (32, 64)
    num_classes: int = 0

    @nn.compact
    def __call__(self, x: Float[Array, "n H W c"], y: Int[Array, "n"] | None = None) -> Float[Array, "n h w 1"]:
        h = 2.0 * x - 1.0
        for i, w in enumerate(self.widths):
            h = nn.Conv(w, (4, 4), strides=(2, 2), padding="SAME", name=f"conv{i}")(h)
            if i > 0:
                h = nn.LayerNorm(name=f"norm{i}")(h)
            h = nn.leaky_relu(h, 0.2)
        logits = nn.Conv(1, (3, 3), padding="SAME", name="logits")(h)
        if not self.num_classes:
            return logits
        if y is None:
            raise ValueError("a class-conditional PatchDiscriminator needs the labels y [n]")
        e = nn.Embed(self.num_classes, h.shape[-1], name="class_embed")(y)  # [n, C]
        proj = jnp.sum(e * jnp.mean(h, axis=(1, 2)), -1)  # [n]
        return logits + proj[:, None, None, None]


__all__ = ["Eq12Editor", "MirrorDecoder", "PatchDiscriminator", "PatternEditor"]

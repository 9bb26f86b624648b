"""Bring your own model: PyTorch weights run in JAX.

A PyTorch classifier (Conv2d, BatchNorm2d, a grouped strided Conv2d, a Linear layer on the
NCHW-flattened map) and a decoder (Linear -> ``view`` to NCHW -> two ConvTranspose2d) are
mapped with :mod:`cfjax.interop.torch_weights` to JAX arrays, run as plain ``jax.numpy``
functions on channels-last images, checked against torch's own forward pass, attacked with
:func:`cfjax.make_attack`, and the counterfactuals are checked again *in torch*.

Here the torch weights are random (seeded); with released weights, load the ``state_dict``
instead. Run: ``python examples/torch_weights.py`` (needs ``pip install torch``; seconds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import cfjax as cf
from cfjax.interop import torch_weights as tw

NHWC = ("NHWC", "HWIO", "NHWC")


def torch_models():
    """The two torch modules (built inside a function: torch is imported only here)."""
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
            self.fc = nn.Linear(8 * 6 * 6, 3)

        def forward(self, x):  # x [n, 1, 12, 12] in [0, 1]
            h = torch.relu(self.bn1(self.conv1((x - 0.5) / 0.5)))
            h = torch.relu(self.conv2(h))
            return 10.0 * self.fc(h.view(h.shape[0], -1))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 16 * 3 * 3)
            self.up1 = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)  # 3 -> 6
            self.up2 = nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1)  # 6 -> 12

        def forward(self, z):  # z [n, 8]
            h = torch.relu(self.fc(z).view(-1, 16, 3, 3))
            h = torch.relu(self.up1(h))
            return torch.sigmoid(4.0 * self.up2(h))

    torch.manual_seed(0)
    clf, dec = Classifier(), Decoder()
    with torch.no_grad():  # non-trivial running statistics, as after training
        clf.bn1.running_mean.uniform_(-0.5, 0.5)
        clf.bn1.running_var.uniform_(0.5, 2.0)
        clf.bn1.weight.uniform_(0.5, 1.5)
        clf.bn1.bias.uniform_(-0.2, 0.2)
    return clf.eval(), dec.eval()


def jax_classifier(sd: dict):
    """The classifier as a single-example JAX callable ``x [12, 12, 1] -> logits [3]``."""
    c1, c2 = tw.conv2d(sd, "conv1"), tw.conv2d(sd, "conv2")
    bn_a, bn_c = tw.fold_batch_norm(tw.batch_norm2d(sd, "bn1"), eps=1e-5)
    fc = tw.linear(sd, "fc", input_chw=(8, 6, 6))  # torch flattened NCHW with .view

    def logits(x):
        h = lax.conv_general_dilated(((x - 0.5) / 0.5)[None], c1["kernel"], (1, 1), tw.conv_padding(1), dimension_numbers=NHWC) + c1["bias"]
        h = jax.nn.relu(h * bn_a + bn_c)
        h = lax.conv_general_dilated(h, c2["kernel"], (2, 2), tw.conv_padding(1), feature_group_count=2, dimension_numbers=NHWC) + c2["bias"]
        h = jax.nn.relu(h)
        return 10.0 * (h.reshape(-1) @ fc["kernel"] + fc["bias"])

    return logits


def jax_decoder(sd: dict):
    """The decoder as a single-example JAX callable ``z [8] -> x [12, 12, 1]``."""
    fc = tw.linear(sd, "fc", output_chw=(16, 3, 3))  # torch reshaped its output to NCHW
    u1, u2 = tw.conv_transpose2d(sd, "up1"), tw.conv_transpose2d(sd, "up2")
    pad1 = tw.conv_transpose_padding(4, stride=2, padding=1)
    pad2 = tw.conv_transpose_padding(3, stride=2, padding=1, output_padding=1)

    def decode(z):
        h = jax.nn.relu((z @ fc["kernel"] + fc["bias"]).reshape(1, 3, 3, 16))
        h = jax.nn.relu(lax.conv_general_dilated(h, u1["kernel"], (1, 1), pad1, lhs_dilation=(2, 2), dimension_numbers=NHWC) + u1["bias"])
        h = lax.conv_general_dilated(h, u2["kernel"], (1, 1), pad2, lhs_dilation=(2, 2), dimension_numbers=NHWC) + u2["bias"]
        return jax.nn.sigmoid(4.0 * h)[0]

    return decode


def main() -> dict:
    import torch

    torch.set_num_threads(1)
    t_clf, t_dec = torch_models()
    logits = jax_classifier(tw.to_numpy(t_clf.state_dict()))
    decode = jax_decoder(tw.to_numpy(t_dec.state_dict()))

    # 1. the JAX forward passes agree with torch's
    z0 = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    with torch.no_grad():
        x_t = t_dec(torch.from_numpy(z0)).numpy()
        l_t = t_clf(torch.from_numpy(x_t)).numpy()
    x_j = np.asarray(jax.vmap(decode)(jnp.asarray(z0)))
    np.testing.assert_allclose(x_j, tw.nchw_to_nhwc(x_t), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.vmap(logits)(jnp.asarray(x_j))), l_t, rtol=1e-5, atol=1e-5)

    # 2. the attack in JAX; 3. its counterfactuals checked by the torch models
    target = jnp.asarray(np.argsort(l_t, -1)[:, -2])  # the runner-up class
    run = cf.make_attack(decode, logits, steps=1000, learning_rate=0.3, threshold=0.55)
    r = run(jnp.asarray(z0), target)
    ok = np.asarray(r.success)
    assert ok.sum() >= 2, (ok, r.target_prob)
    with torch.no_grad():
        p_t = torch.softmax(t_clf(t_dec(torch.from_numpy(np.array(r.z)))), -1).numpy()[np.arange(8), np.asarray(target)]
    np.testing.assert_allclose(p_t, np.asarray(r.target_prob), rtol=1e-4, atol=1e-5)
    assert np.all(p_t[ok] >= 0.55 - 1e-5)
    return {"success_rate": float(ok.mean()), "mean_steps": float(np.mean(r.steps_taken)), "max_logit_diff": float(np.abs(np.asarray(jax.vmap(logits)(jnp.asarray(x_j))) - l_t).max())}


if __name__ == "__main__":
    print(main())

"""Bring your own model: every example in ``examples/`` runs and asserts what it shows, every
```python block of docs/byom.md runs (or is verbatim from the example it names), and the
PyTorch-weights helper maps each layer type to the outputs torch computes."""

import importlib.util
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from cfjax.errors import InputError
from cfjax.interop import torch_weights as tw

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NHWC = ("NHWC", "HWIO", "NHWC")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"cfjax_example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "name, needs",
    [
        ("flax_linen", None),
        ("flax_nnx", None),
        ("equinox_models", "equinox"),
        ("plain_jax", None),
        ("torch_weights", "torch"),
    ],
)
def test_example_runs(name, needs):
    if needs:
        pytest.importorskip(needs)
    out = _load(name).main()
    assert out["success_rate"] > 0 and out["mean_steps"] > 0, out


def test_every_example_is_tested():
    tested = {"flax_linen", "flax_nnx", "equinox_models", "plain_jax", "torch_weights", "mirror_user_classifier"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested
    for p in EXAMPLES.glob("*.py"):  # each one a documented, runnable script
        text = p.read_text()
        assert text.startswith('"""') and "def main(" in text and '__name__ == "__main__"' in text, p


@pytest.mark.slow
def test_mirror_with_a_classifier_not_trained_by_cfjax():
    out = _load("mirror_user_classifier").main(classifier_steps=300, decoder_steps=6)
    assert out["classifier_accuracy"] > 0.5


# ------------------------------------------------------------------ docs/byom.md


def _doc_blocks():
    text = (ROOT / "docs" / "byom.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_byom_doc_code_runs():
    """Each ```python block of docs/byom.md runs, in order, in one namespace; a block whose
    first line is ``# from examples/<file>.py`` is instead checked to be verbatim from that
    example (which test_example_runs runs)."""
    blocks = _doc_blocks()
    assert len(blocks) >= 6
    ns: dict = {"__name__": "byom_doc"}
    ran = 0
    for block in blocks:
        first = block.splitlines()[0].strip()
        m = re.fullmatch(r"# from (examples/\w+\.py)", first)
        if m:
            src = (ROOT / m.group(1)).read_text()
            for line in block.splitlines()[1:]:
                if line.strip() and not line.strip().startswith("..."):
                    assert line.strip() in src, f"{m.group(1)} has no line {line.strip()!r}"
            continue
        for mod in ("torch", "equinox"):
            if re.search(rf"^\s*(import {mod}|from {mod}\b)", block, flags=re.M) and importlib.util.find_spec(mod) is None:
                break
        else:
            exec(compile(block, "docs/byom.md", "exec"), ns)  # noqa: S102 - the documentation's own code
            ran += 1
    assert ran >= 5


# ------------------------------------------------------------------ torch weights, layer by layer


def _conv_t(torch, layer, x_nhwc):
    with torch.no_grad():
        return tw.nchw_to_nhwc(layer(torch.from_numpy(tw.nhwc_to_nchw(x_nhwc))).numpy())


@pytest.mark.parametrize(
    "cfg",
    [
        dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), groups=2),
        dict(in_channels=2, out_channels=3, kernel_size=3, dilation=2, padding="same", bias=False),
        dict(in_channels=2, out_channels=4, kernel_size=5, stride=2, padding=2),
    ],
)
def test_conv2d_matches_torch(cfg):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(**cfg)
    x = np.random.default_rng(0).normal(size=(2, 9, 8, cfg["in_channels"])).astype(np.float32)
    k = tw.conv2d(tw.to_numpy(layer.state_dict()), "")
    s = cfg.get("stride", 1)
    pad = tw.conv_padding(cfg.get("padding", 0), cfg["kernel_size"], cfg.get("dilation", 1))
    d = cfg.get("dilation", 1)
    y = jax.lax.conv_general_dilated(x, k["kernel"], s if isinstance(s, tuple) else (s, s), pad, rhs_dilation=(d, d),
                                     feature_group_count=cfg.get("groups", 1), dimension_numbers=NHWC)
    if "bias" in k:
        y = y + k["bias"]
    else:
        assert cfg.get("bias") is False
    np.testing.assert_allclose(y, _conv_t(torch, layer, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(in_channels=4, out_channels=3, kernel_size=4, stride=2, padding=1),
        dict(in_channels=3, out_channels=2, kernel_size=3, stride=2, padding=1, output_padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, output_padding=1, dilation=2, groups=2),
        dict(in_channels=2, out_channels=2, kernel_size=(3, 2), stride=(1, 3), padding=(0, 1), bias=False),
    ],
)
def test_conv_transpose2d_matches_torch_and_flax(cfg):
    torch = pytest.importorskip("torch")
    import flax.linen as nn

    torch.manual_seed(1)
    layer = torch.nn.ConvTranspose2d(**cfg)
    x = np.random.default_rng(1).normal(size=(2, 5, 6, cfg["in_channels"])).astype(np.float32)
    g = cfg.get("groups", 1)
    k = tw.conv_transpose2d(tw.to_numpy(layer.state_dict()), "", groups=g)
    s = cfg.get("stride", 1)
    s = s if isinstance(s, tuple) else (s, s)
    d = cfg.get("dilation", 1)
    pad = tw.conv_transpose_padding(cfg["kernel_size"], stride=s, padding=cfg.get("padding", 0), output_padding=cfg.get("output_padding", 0), dilation=d)
    y = jax.lax.conv_general_dilated(x, k["kernel"], (1, 1), pad, lhs_dilation=s, rhs_dilation=(d, d), feature_group_count=g, dimension_numbers=NHWC)
    y = y + k.get("bias", 0.0)
    ref = _conv_t(torch, layer, x)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # the same kernel in a Flax nn.Conv with input_dilation (as the module docstring says)
    conv = nn.Conv(cfg["out_channels"], k["kernel"].shape[:2], padding=pad, input_dilation=s, kernel_dilation=d, feature_group_count=g,
                   use_bias="bias" in k)
    np.testing.assert_allclose(conv.apply({"params": k}, x), ref, rtol=1e-5, atol=1e-5)


def test_linear_flatten_orders_and_batch_norm_match_torch():
    torch = pytest.importorskip("torch")
    import flax.linen as nn

    torch.manual_seed(2)
    fc_in = torch.nn.Linear(3 * 4 * 5, 7)  # reads x.view(n, -1) of an NCHW [3, 4, 5] map
    fc_out = torch.nn.Linear(6, 2 * 3 * 4)  # its output is .view(n, 2, 3, 4)
    bn = torch.nn.BatchNorm2d(3, eps=1e-3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    rng = np.random.default_rng(2)
    fmap = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)  # NHWC
    z = rng.normal(size=(2, 6)).astype(np.float32)
    with torch.no_grad():
        ref_in = fc_in(torch.from_numpy(tw.nhwc_to_nchw(fmap)).reshape(2, -1)).numpy()
        ref_out = tw.nchw_to_nhwc(fc_out(torch.from_numpy(z)).view(2, 2, 3, 4).numpy())
        ref_bn = tw.nchw_to_nhwc(bn(torch.from_numpy(tw.nhwc_to_nchw(fmap))).numpy())
    k = tw.linear(tw.to_numpy(fc_in.state_dict()), "", input_chw=(3, 4, 5))
    np.testing.assert_allclose(fmap.reshape(2, -1) @ k["kernel"] + k["bias"], ref_in, rtol=1e-5, atol=1e-5)
    plain = tw.linear(tw.to_numpy(fc_in.state_dict()), "")  # without the permutation it is wrong
    assert not np.allclose(fmap.reshape(2, -1) @ plain["kernel"] + plain["bias"], ref_in, atol=1e-3)
    k = tw.linear(tw.to_numpy(fc_out.state_dict()), "", output_chw=(2, 3, 4))
    np.testing.assert_allclose((z @ k["kernel"] + k["bias"]).reshape(2, 3, 4, 2), ref_out, rtol=1e-5, atol=1e-5)
    b = tw.batch_norm2d(tw.to_numpy(bn.state_dict()), "")
    a, c = tw.fold_batch_norm(b, eps=1e-3)
    np.testing.assert_allclose(fmap * a + c, ref_bn, rtol=1e-5, atol=1e-5)
    flax_bn = nn.BatchNorm(use_running_average=True, epsilon=1e-3)
    y = flax_bn.apply({"params": {"scale": b["scale"], "bias": b["bias"]}, "batch_stats": {"mean": b["mean"], "var": b["var"]}}, fmap)
    np.testing.assert_allclose(y, ref_bn, rtol=1e-5, atol=1e-5)


def test_torch_weights_is_numpy_only_and_names_bad_arguments():
    import subprocess
    import sys

    code = "import sys, cfjax.interop.torch_weights; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    sd = {"c.weight": np.zeros((4, 2, 3, 3)), "c.bias": np.zeros(4), "fc.weight": np.zeros((5, 12))}
    cases = [
        (lambda: tw.conv2d(sd, "d"), "state_dict"),
        (lambda: tw.conv2d({"c.weight": np.zeros((4, 3))}, "c"), "c.weight"),
        (lambda: tw.linear(sd, "fc", input_chw=(2, 2, 2)), "input_chw"),
        (lambda: tw.linear(sd, "fc", output_chw=(1, 1, 4)), "output_chw"),
        (lambda: tw.conv_transpose2d(sd, "c", groups=3), "groups"),
        (lambda: tw.conv_transpose_padding(3, stride=2, output_padding=2), "output_padding"),
        (lambda: tw.conv_padding("same"), "kernel_size"),
        (lambda: tw.conv_padding(1.5), "padding"),
    ]
    for fn, match in cases:
        with pytest.raises(InputError, match=match):
            fn()
    assert tw.linear(sd, "fc")["kernel"].shape == (12, 5) and "bias" not in tw.linear(sd, "fc")
    assert tw.conv2d(sd, "c")["kernel"].shape == (3, 3, 2, 4)
    assert tw.conv_padding("same", 4) == [(1, 2), (1, 2)]


def test_readme_byom_blocks_are_the_tested_docs_blocks():
    """The README's "Bring your own model" code is verbatim from docs/byom.md (run above)."""
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    docs = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "byom.md").read_text(), re.S)
    assert blocks and all(b in docs for b in blocks)

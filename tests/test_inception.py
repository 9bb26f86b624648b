"""The FID Inception-v3 in Flax, with random weights only (never a download): architecture and
parameter counts, [n, 2048] features, pytorch-fid's bilinear resize, agreement with a PyTorch
functional transcription of pytorch-fid's network, the .npz/.pth loaders and the FID formula."""

import hashlib

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from cfjax.errors import DataNotFoundError, InputError
from cfjax.eval import inception as I
from cfjax.eval import metrics


@pytest.fixture(scope="module")
def random_model():
    """Random convs and a non-trivial BatchNorm (random gamma, beta, mean, var > 0)."""
    base = I.state_dict_from_variables(I.init_inception(0).variables)
    rng = np.random.default_rng(1)
    sd = {}
    for k, v in base.items():
        if k.endswith("bn.weight"):
            v = rng.uniform(0.5, 1.5, v.shape)
        elif k.endswith("bn.bias"):
            v = rng.normal(0.0, 0.1, v.shape)
        elif k.endswith("running_mean"):
            v = rng.normal(0.0, 0.1, v.shape)
        elif k.endswith("running_var"):
            v = rng.uniform(0.5, 2.0, v.shape)
        sd[k] = np.array(v, np.float32)  # writable copies (torch.from_numpy warns on read-only arrays)
    return sd, I._make(I.variables_from_state_dict(sd), None, None)


@pytest.fixture(scope="module")
def digits():
    from cfjax import data as cdata

    return np.asarray(cdata.load("mnist5k", "test").images[:2])  # [2, 28, 28, 1]


def test_architecture_matches_inception_v3():
    t = I._template()
    convs = [k for k in t if k.endswith("conv.weight")]
    assert len(t) == 470 and len(convs) == 94  # 94 BasicConv2d x (conv weight, gamma, beta, mean, var)
    # Keras InceptionV3(include_top=False): 21,768,352 trainable = conv weights + one beta per BN
    # channel; 34,432 non-trainable = 2 x 17,216 BN channels (moving mean, var)
    assert sum(int(np.prod(t[k][1])) for k in convs) == 21_768_352 - 17_216
    assert sum(t[k][1][0] for k in t if k.endswith("running_mean")) == 17_216
    assert t["Conv2d_1a_3x3.conv.weight"][1] == (32, 3, 3, 3)
    assert t["Mixed_7c.branch_pool.conv.weight"][1] == (192, 2048, 1, 1)
    assert t["Mixed_6b.branch7x7_2.conv.weight"][1] == (128, 128, 1, 7)


def test_features_shape_and_resize(random_model, digits):
    _, inc = random_model
    big = np.random.default_rng(0).random((2, 299, 299, 3), np.float32)
    f = np.asarray(inc.features(jnp.asarray(big)))
    assert f.shape == (2, 2048) and f.dtype == np.float32 and np.all(np.isfinite(f)) and np.all(f >= 0)
    assert np.std(f) > 0 and not np.allclose(f[0], f[1])
    # small grayscale input: tiled and resized to 299 inside, the network compiled once per batch size
    g = np.asarray(inc.features(jnp.asarray(digits)))
    up = np.asarray(I.inception_prepare(jnp.asarray(digits)))
    assert up.shape == (2, 299, 299, 3) and up.min() >= -1.0 and up.max() <= 1.0
    np.testing.assert_allclose(g, np.asarray(inc.features(jnp.asarray((up + 1) / 2))), rtol=1e-5, atol=1e-6)


def test_resize_matches_pytorch_fid_interpolate(digits):
    torch = pytest.importorskip("torch", reason="torch (the cfjax[bench] extra) is not installed")
    F = torch.nn.functional
    for x in (digits, np.random.default_rng(0).random((1, 400, 350, 3), np.float32)):  # up and down
        ours = np.asarray(I.inception_prepare(jnp.asarray(x)))
        t = torch.from_numpy(np.repeat(x, 3 // x.shape[-1], -1)).permute(0, 3, 1, 2)
        ref = 2 * F.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False) - 1
        np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=2e-6)


def _torch_fid_inception(sd, x):
    """pytorch-fid's InceptionV3 (block 3, resize_input, normalize_input) written with torch.nn.functional."""
    import torch
    import torch.nn.functional as F

    def c(name, x, stride=1, padding=0):
        x = F.conv2d(x, sd[f"{name}.conv.weight"], stride=stride, padding=padding)
        x = F.batch_norm(x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"], sd[f"{name}.bn.weight"],
                         sd[f"{name}.bn.bias"], training=False, eps=0.001)
        return F.relu(x)

    def avg(x):
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    def A(n, x):
        b1 = c(f"{n}.branch1x1", x)
        b5 = c(f"{n}.branch5x5_2", c(f"{n}.branch5x5_1", x), padding=2)
        b3 = c(f"{n}.branch3x3dbl_3", c(f"{n}.branch3x3dbl_2", c(f"{n}.branch3x3dbl_1", x), padding=1), padding=1)
        return torch.cat([b1, b5, b3, c(f"{n}.branch_pool", avg(x))], 1)

    def B(n, x):
        b3 = c(f"{n}.branch3x3", x, stride=2)
        bd = c(f"{n}.branch3x3dbl_3", c(f"{n}.branch3x3dbl_2", c(f"{n}.branch3x3dbl_1", x), padding=1), stride=2)
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

    def C(n, x):
        b1 = c(f"{n}.branch1x1", x)
        b7 = c(f"{n}.branch7x7_3", c(f"{n}.branch7x7_2", c(f"{n}.branch7x7_1", x), padding=(0, 3)), padding=(3, 0))
        bd = c(f"{n}.branch7x7dbl_1", x)
        for i, p in zip((2, 3, 4, 5), ((3, 0), (0, 3), (3, 0), (0, 3))):
            bd = c(f"{n}.branch7x7dbl_{i}", bd, padding=p)
        return torch.cat([b1, b7, bd, c(f"{n}.branch_pool", avg(x))], 1)

    def D(n, x):
        b3 = c(f"{n}.branch3x3_2", c(f"{n}.branch3x3_1", x), stride=2)
        b7 = c(f"{n}.branch7x7x3_3", c(f"{n}.branch7x7x3_2", c(f"{n}.branch7x7x3_1", x), padding=(0, 3)), padding=(3, 0))
        b7 = c(f"{n}.branch7x7x3_4", b7, stride=2)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

    def E(n, x, max_pool):
        b1 = c(f"{n}.branch1x1", x)
        b3 = c(f"{n}.branch3x3_1", x)
        b3 = torch.cat([c(f"{n}.branch3x3_2a", b3, padding=(0, 1)), c(f"{n}.branch3x3_2b", b3, padding=(1, 0))], 1)
        bd = c(f"{n}.branch3x3dbl_2", c(f"{n}.branch3x3dbl_1", x), padding=1)
        bd = torch.cat([c(f"{n}.branch3x3dbl_3a", bd, padding=(0, 1)), c(f"{n}.branch3x3dbl_3b", bd, padding=(1, 0))], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if max_pool else avg(x)
        return torch.cat([b1, b3, bd, c(f"{n}.branch_pool", pooled)], 1)

    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = c("Conv2d_2b_3x3", c("Conv2d_2a_3x3", c("Conv2d_1a_3x3", x, stride=2)), padding=1)
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = F.max_pool2d(c("Conv2d_4a_3x3", c("Conv2d_3b_1x1", x)), kernel_size=3, stride=2)
    x = A("Mixed_5d", A("Mixed_5c", A("Mixed_5b", x)))
    x = B("Mixed_6a", x)
    x = C("Mixed_6e", C("Mixed_6d", C("Mixed_6c", C("Mixed_6b", x))))
    x = E("Mixed_7c", E("Mixed_7b", D("Mixed_7a", x), False), True)
    return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


def test_matches_a_pytorch_transcription_and_loads_pth(random_model, digits, tmp_path):
    torch = pytest.importorskip("torch", reason="torch (the cfjax[bench] extra) is not installed")
    sd, inc = random_model
    tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
    x = digits  # a batch of 2, as everywhere in this file (one compile of the network)
    with torch.no_grad():
        ref = _torch_fid_inception(tsd, torch.from_numpy(np.repeat(x, 3, -1)).permute(0, 3, 1, 2)).numpy()
    ours = np.asarray(inc.features(jnp.asarray(x)))
    assert ref.shape == ours.shape == (2, 2048)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))  # measured: 1.2e-7 abs on max 0.67
    # the same weights as a .pth state dict (with the entries pytorch-fid's file also has and we ignore)
    p = tmp_path / "random_inception.pth"
    torch.save({**tsd, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008),
                "Conv2d_1a_3x3.bn.num_batches_tracked": torch.tensor(0)}, p)
    with pytest.raises(InputError, match=I.PT_INCEPTION_SHA256):  # a .pth must be pytorch-fid's file ...
        I.load_inception(p)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    inc2 = I.load_inception(p, sha256=digest)  # ... unless you name the digest
    assert inc2.sha256 == digest
    np.testing.assert_array_equal(np.asarray(inc2.features(jnp.asarray(x))), ours)


def test_npz_round_trip(random_model, digits, tmp_path):
    _, inc = random_model
    p = tmp_path / "inception_fid.npz"
    digest = I.save_inception_npz(inc, p)
    assert digest == hashlib.sha256(p.read_bytes()).hexdigest()
    with np.load(p) as z:
        assert len(z.files) == 470 and z["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    back = I.load_inception(p)
    assert back.sha256 == digest and back.path == str(p)
    np.testing.assert_array_equal(np.asarray(back.features(jnp.asarray(digits))), np.asarray(inc.features(jnp.asarray(digits))))
    with pytest.raises(InputError, match="sha256"):
        I.load_inception(p, sha256="0" * 64)


def _pytorch_fid_formula(mu1, s1, mu2, s2):
    """pytorch-fid's calculate_frechet_distance (scipy sqrtm)."""
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_formula_on_known_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    exact = float(np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2)))  # diagonal Gaussians
    assert metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(exact, rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # rotate both: FID is rotation-invariant
    assert metrics.frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T) == pytest.approx(exact, rel=1e-8)
    a = mu1 + rng.normal(size=(4000, d)) * np.sqrt(v1)
    b = mu2 + rng.normal(size=(4000, d)) * np.sqrt(v2)
    got = metrics.fid(a, b)
    want = _pytorch_fid_formula(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert got == pytest.approx(want, rel=1e-8) and got == pytest.approx(exact, rel=0.1)


def test_inception_fid_is_metrics_fid_of_the_features(random_model, digits, monkeypatch):
    # a 2048-d Frechet distance costs ~10-30 s of eigh on 2 shared cores, so the wiring is checked
    # by capturing what reaches metrics.fid (the formula itself is tested above and in test_metrics)
    _, inc = random_model
    imgs1 = np.concatenate([digits, digits[::-1] * 0.5])  # 4 images, 2 batches of 2 (one compile)
    imgs2 = np.concatenate([1.0 - digits, digits[:1] ** 2])  # 3 images: the last batch padded
    f1, f2 = I.inception_features(inc, imgs1, batch_size=2), I.inception_features(inc, imgs2, batch_size=2)
    assert f1.shape == (4, 2048) and f2.shape == (3, 2048) and f1.dtype == np.float32
    np.testing.assert_allclose(f1[:2], np.asarray(inc.features(jnp.asarray(digits))), rtol=1e-6)
    seen = []
    monkeypatch.setattr(I.metrics, "fid", lambda a, b: seen.append((a, b)) or 1.5)
    assert I.inception_fid(inc, imgs1, imgs2, batch_size=2) == 1.5
    np.testing.assert_array_equal(seen[0][0], f1)
    np.testing.assert_array_equal(seen[0][1], f2)


def test_errors(tmp_path, random_model):
    with pytest.raises(DataNotFoundError, match="inception-weights"):
        I.load_inception(tmp_path / I.PT_INCEPTION_FILE)
    with pytest.raises(DataNotFoundError):
        I.load_inception(None)
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(InputError, match=r"\.npz"):
        I.load_inception(tmp_path / "w.h5")
    np.savez(tmp_path / "partial.npz", **{"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32)})
    with pytest.raises(InputError, match="needed keys"):
        I.load_inception(tmp_path / "partial.npz")
    sd = I.state_dict_from_variables(random_model[1].variables)
    sd["Mixed_5b.branch1x1.conv.weight"] = sd["Mixed_5b.branch1x1.conv.weight"][:, :10]
    np.savez(tmp_path / "bad_shape.npz", **sd)
    with pytest.raises(InputError, match="Mixed_5b.branch1x1.conv.weight"):
        I.load_inception(tmp_path / "bad_shape.npz")
    with pytest.raises(InputError, match="images"):
        I.inception_prepare(jnp.zeros((2, 28, 28)))
    with pytest.raises(InputError, match="batch_size"):
        I.inception_features(random_model[1], np.zeros((2, 28, 28, 1)), batch_size=0)

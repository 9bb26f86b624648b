"""Mirror-CFE from the CLI on a classifier cfjax did not train (``--classifier module:function``),
and the decoder carrying its path through the job (issues 25 and 26)."""

import json
import sys
import textwrap

import pytest

from cfjax import cli
from cfjax.errors import InputError

USER_MODULE = '''
"""A user's GAP-CNN in plain jnp (two strided convs, fixed random weights), as cfjax sees it."""
import jax
import jax.numpy as jnp
from cfjax.models import ClassifierFns

CALLS = []


def _conv(x, w, stride):
    y = jax.lax.conv_general_dilated(x[None], w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    return jax.nn.relu(y)


def gap_cnn(train, test):
    CALLS.append((len(train), len(test)))
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    w1 = 0.5 * jax.random.normal(k1, (3, 3, train.images.shape[-1], 8))
    w2 = 0.3 * jax.random.normal(k2, (3, 3, 8, 16))
    W = jax.random.normal(k3, (train.num_classes, 16))

    def feature_maps(x):
        s1 = _conv(x, w1, 2)
        return [s1, _conv(s1, w2, 2)]

    return ClassifierFns.from_gap(feature_maps, W, jnp.zeros(train.num_classes))


def triple(train, test):
    fns = gap_cnn(train, test)
    return fns.feature_maps, fns.W, fns.b


def not_a_classifier(train, test):
    return "nope"
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_gap_cnn.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_gap_cnn"
    sys.modules.pop("user_gap_cnn", None)


def test_train_mirror_decoder_and_explain_on_a_users_classifier(tmp_path, user_module, capsys):
    models = tmp_path / "models"
    rc = cli.main(["train", "mirror-decoder", "--data", "mnist5k", "--classifier", f"{user_module}:gap_cnn", "--out", str(tmp_path / "t"),
                   "--models-dir", str(models), "--smoke"])
    assert rc == 0
    printed = capsys.readouterr().out
    rec = json.loads(printed[printed.index("{\n"):])
    assert rec["data"] == "mnist5k" and "/user-" in rec["decoder_dir"]
    dirs = list((models / "mnist5k").glob("user-*/mirror_decoder_*"))
    assert len(dirs) == 1 and (dirs[0] / "best").is_dir()  # under the user classifier's own folder, not the zoo's
    assert not (models / "mnist5k" / "classifier").exists()  # no zoo classifier was trained
    import user_gap_cnn

    assert user_gap_cnn.CALLS and user_gap_cnn.CALLS[0][0] > 0
    out = tmp_path / "e"
    rc = cli.main(["explain", "mirror", "--data", "mnist5k", "--source", "3", "--target", "8", "--classifier", f"{user_module}:triple",
                   "--models-dir", str(models), "--out", str(out), "--smoke", "--no-figures", "--no-lpips"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["classifier"] == f"{user_module}:triple" and s["preset"] == "paper" and s["decoder"]["reflect_others"] == "keep"
    assert s["n_counterfactuals"] > 0 and 0.0 <= s["validity"] <= 1.0
    # the triple is the same classifier (same head, same maps on the probe images): its decoder is reused
    assert len(list((models / "mnist5k").glob("user-*/mirror_decoder_*"))) == 1


@pytest.mark.parametrize("entry, match", [
    ("no_colon", "module:function"),
    ("no_such_module_xyz:f", "importing 'no_such_module_xyz' failed"),
    ("user_gap_cnn:missing", "no callable 'missing'"),
])
def test_a_bad_classifier_entry_exits_2_before_loading(tmp_path, user_module, entry, match, capsys):
    rc = cli.main(["train", "mirror-decoder", "--data", "mnist5k", "--classifier", entry, "--out", str(tmp_path / "t"), "--smoke"])
    assert rc == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_an_entry_returning_something_else_is_named(tmp_path, user_module):
    from cfjax import data as cdata
    from cfjax.jobs.mirror.classifier import from_entry

    tr, te = cdata.load("mnist5k", "train", limit=50), cdata.load("mnist5k", "test", limit=20)
    with pytest.raises(InputError, match="classifier: expected a cfjax.models.ClassifierFns"):
        from_entry(f"{user_module}:not_a_classifier", tr, te)
    a = from_entry(f"{user_module}:gap_cnn", tr, te)
    b = from_entry(f"{user_module}:triple", tr, te)
    assert a.source != b.source and 0.0 <= a.metrics["accuracy"] <= 1.0 and a.fns.W.shape == (10, 16)


def test_the_preset_is_recorded_without_a_flag_and_a_contradicting_path_is_refused(tmp_path):
    """``cfjax explain mirror`` with no preset flag records ``"preset": "paper"``; a decoder trained
    on the mirrored path refuses ``others="keep"`` (issue 25 item 5)."""
    import jax.numpy as jnp
    import numpy as np

    import cfjax as cf
    from cfjax.jobs import mirror as mjob

    out = tmp_path / "p"
    assert cli.main(["explain", "mirror", "--data", "mnist5k", "--source", "3", "--target", "8", "--out", str(out), "--smoke",
                     "--no-figures", "--no-lpips", "--no-oracle", "--reflect-others", "mirror"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["preset"] == "paper" and s["decoder"]["reflect_others"] == "mirror" and len(s["decoder"]["weights_sha256"]) == 64
    assert s["n_found"] == 0 or 0.5 < s["first_cf_k_mean"] <= 1.0
    cfg = mjob.resolve_decoder_pairs(mjob.MirrorJobConfig.smoke(), "mnist5k", ((3, 8),))
    cfg = mjob.MirrorJobConfig(**{**cfg.__dict__, "decoder": cfg.decoder.__class__(**{**cfg.decoder.__dict__, "reflect_others": "mirror"})})
    train, test, clf, _, root = mjob.load_models("mnist5k", out / "models", cfg, progress=False, backbone=False)
    dec, _ = mjob.get_decoder(clf, train, test, root, cfg.decoder, progress=False)  # cached by the run above
    decode = cf.bind_mirror_decoder(dec, clf.fns.W)
    x = jnp.asarray(test.images[0])
    with pytest.raises(InputError, match="mirror"):
        cf.mirror_cfe(clf.fns.feature_maps, clf.fns.W, clf.fns.b, decode, x, 3, 8, others="keep")
    r = cf.mirror_cfe(clf.fns.feature_maps, clf.fns.W, clf.fns.b, decode, x, 3, 8, solver="exact")  # walks the decoder's path
    q = np.asarray(cf.reflection_target(r.logits_features[0], 3, 8, "mirror"))
    np.testing.assert_allclose(np.asarray(r.logits_features[-1]), q, atol=1e-3)

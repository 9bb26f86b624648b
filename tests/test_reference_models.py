"""Reference models load by sha256 and refuse anything else; the validation split is stratified,
disjoint and reproducible; early stopping stops."""

import json

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax.data as cd
from cfjax.errors import CheckpointError, InputError
from cfjax.training import loop as ct
from cfjax.training import reference as ref


def _tiny_root(tmp_path):
    spec = ref.SPECS["mnist5k"]["oracle"]
    module = ct.build_classifier(spec.model)
    params = module.init(jax.random.key(3), jnp.zeros((1, 28, 28, 1)))
    (tmp_path / "mnist5k").mkdir()
    p = tmp_path / "mnist5k" / "oracle.msgpack"
    p.write_bytes(flax.serialization.to_bytes(params))
    entry = {"file": "mnist5k/oracle.msgpack", "sha256": ref.sha256_file(p), "floor": 0.96,
             "config": {"image_shape": [28, 28, 1]}, "metrics": {"test_accuracy": 0.5}}
    ref.write_manifest({"mnist5k": {"oracle": entry}}, tmp_path)
    return tmp_path, params


def test_load_reference_checks_the_digest(tmp_path):
    root, params = _tiny_root(tmp_path)
    m = ref.load_reference("mnist5k", "oracle", root)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), m.params, params))
    assert m.metrics["accuracy"] == 0.5 and m.config["sha256"] == m.metrics["sha256"]
    p = root / "mnist5k" / "oracle.msgpack"
    b = bytearray(p.read_bytes())
    b[-1] ^= 1
    p.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match="expected sha256"):
        ref.load_reference("mnist5k", "oracle", root)
    with pytest.raises(InputError, match="role"):
        ref.load_reference("mnist5k", "judge", root)
    with pytest.raises(InputError, match="dataset"):
        ref.load_reference("celeb_a", "oracle", root)


def test_shipped_reference_models_match_the_recorded_results():
    """Every shipped model loads by its digest and is the one experiments/results/reference_models.json
    records, with the accuracy and floor recorded there."""
    manifest = ref.read_manifest()
    results = json.loads((ref.PACKAGE_DIR.parent.parent / "experiments" / "results" / "reference_models.json").read_text())
    assert manifest, "no reference model shipped"
    for ds, roles in manifest.items():
        for role, entry in roles.items():
            m = ref.load_reference(ds, role)
            rec = results[ds][role]
            assert rec["sha256"] == entry["sha256"] == m.config["sha256"]
            assert rec["accuracy"] == entry["metrics"]["test_accuracy"] and rec["meets_floor"] == (rec["accuracy"] >= rec["floor"])


def test_validation_split_is_stratified_disjoint_and_reproducible():
    full = cd.load("mnist5k", "train")
    tr, va = cd.validation_split(full, 0.1, seed=0)
    assert len(tr) + len(va) == len(full) and len(va) == 400
    assert np.bincount(va.labels, minlength=10).tolist() == [40] * 10
    tr2, va2 = cd.validation_split(full, 0.1, seed=0)
    np.testing.assert_array_equal(va.images, va2.images)
    # disjoint: no validation image is in the training part
    seen = {im.tobytes() for im in tr.images}
    assert not any(im.tobytes() in seen for im in va.images)
    with pytest.raises(InputError, match="fraction"):
        cd.validation_split(full, 1.0)


def test_patience_stops_training_when_the_metric_stops_improving():
    hist = [{"accuracy": a} for a in (0.5, 0.7, 0.69, 0.7, 0.68)]
    assert ct._patience_spent(hist, "accuracy", "max", 3)
    assert not ct._patience_spent(hist[:4], "accuracy", "max", 3)
    assert not ct._patience_spent(hist, "accuracy", "max", 0)
    with pytest.raises(InputError, match="patience"):
        ct.fit(params={}, loss_fn=None, eval_fn=None, train_arrays=(np.zeros((4, 1)),), test_arrays=(np.zeros((4, 1)),),
               cfg=ct.TrainConfig(batch_size=2, patience=-1), select="accuracy")

"""What fits in host RAM when training the Mirror decoder at 64/128/224 px (issue 27).

XLA's own accounting of the compiled training step (``compiled.memory_analysis()``: arguments
+ outputs + temporaries, the step's peak) for the decoder's dominant work: the frozen ResNet-18
(GroupNorm, widths 64..512) gives ``F`` and the skips of a batch, the decoder (Eq. 12 editors,
widths (48, 24, 16), the high-resolution tail) decodes it, and ``L_rec + L_cls`` (the decoded
image back through the ResNet) is differentiated w.r.t. the decoder's params. Options: the
decoder's per-level remat, the ResNet's per-block remat on the ``L_cls`` pass, bf16 compute. The patch
discriminator (a few hundred kB of activations per image) is left out. Compiling is enough: no
step runs, so the figures are exact for XLA:CPU and cost seconds.

    python experiments/highres_memory.py --out experiments/results/highres/memory.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfjax.io import atomic_write_json  # noqa: E402
from cfjax.models import ResNet  # noqa: E402
from cfjax.models.mirror_decoder import MirrorDecoder  # noqa: E402

GIB = 2**30
COMBOS = {"none": (False, False), "decoder": (True, False), "both": (True, True)}


def step_bytes(size: int, batch: int, remat: bool, bf16: bool, clf_remat: bool = False) -> int:
    clf = ResNet(num_classes=8)
    clf_cls = ResNet(num_classes=8, remat=clf_remat, dtype=jnp.bfloat16 if bf16 else None)  # the L_cls pass (same params)
    x0 = jnp.zeros((1, size, size, 3))
    cp = jax.eval_shape(lambda: clf.init(jax.random.key(0), x0))
    cp = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cp)
    maps = jax.eval_shape(lambda p: clf.apply(p, x0, method=ResNet.feature_maps), cp)
    g = MirrorDecoder(image_shape=(size, size, 3), widths=(48, 24, 16), editor_width=8, fk_channels=16, skip_mode="eq12", remat=remat,
                      dtype=jnp.bfloat16 if bf16 else None)
    F1 = jnp.zeros(maps[-1].shape)
    sk1 = [jnp.zeros(m.shape) for m in maps[:-1]]
    gp = jax.eval_shape(lambda: g.init(jax.random.key(1), F1, sk1, [jnp.ones((*s.shape[:3], 1)) for s in sk1]))

    def loss(gp, cp, x, y):
        *skips, F = jax.lax.stop_gradient(clf.apply(cp, x, method=ResNet.feature_maps))
        masks = [jnp.ones((*s.shape[:3], 1)) for s in skips]
        xk = g.apply(gp, F, skips, masks)
        logits = clf_cls.apply(cp, xk)
        return jnp.mean((xk - x) ** 2) + jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])

    args = (gp, cp, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32), jax.ShapeDtypeStruct((batch,), jnp.int32))
    m = jax.jit(jax.grad(loss)).lower(*args).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--sizes", default="64,128,224")
    p.add_argument("--budget-gib", type=float, default=24.0)
    p.add_argument("--combos", default="none,decoder,both", help="remat combinations: none, decoder, both (decoder + classifier)")
    p.add_argument("--bf16", action="store_true", help="also the bf16 variants (XLA:CPU compiles bf16 convolutions slowly: minutes each)")
    a = p.parse_args(argv)
    rows = []
    for size in map(int, a.sizes.split(",")):
        for remat, clf_remat in [COMBOS[c] for c in a.combos.split(",")]:
            for bf16 in ((False, True) if a.bf16 else (False,)):
                b1, b2 = step_bytes(size, 4, remat, bf16, clf_remat), step_bytes(size, 16, remat, bf16, clf_remat)
                per, fixed = (b2 - b1) / 12, b1 - 4 * (b2 - b1) / 12
                fit = int((a.budget_gib * GIB * 0.8 - fixed) // per)  # 20% headroom for the host process, data, optimizer
                r = {"size": size, "decoder_remat": remat, "classifier_remat": clf_remat, "bf16": bf16, "gib_batch4": round(b1 / GIB, 3), "gib_batch16": round(b2 / GIB, 3),
                     "mib_per_image": round(per / 2**20, 1), f"max_batch_in_{a.budget_gib:g}_gib": fit}
                print(r, flush=True)
                rows.append(r)
    res = {"what": __doc__.split("\n")[0], "backend": jax.default_backend(), "rows": rows,
           "method": "XLA memory_analysis of jit(grad(L_rec + L_cls)) w.r.t. the decoder; linear fit over batch 4 and 16; 80% of the budget; bf16 = decoder and the L_cls ResNet pass in bf16 (f32 params)"}
    if a.out:
        old = []
        if Path(a.out).is_file():  # add to earlier rows (other sizes/combos), replacing equal keys
            import json

            old = [r for r in json.loads(Path(a.out).read_text())["rows"]
                   if not any((r["size"], r["decoder_remat"], r["classifier_remat"], r["bf16"]) == (n["size"], n["decoder_remat"], n["classifier_remat"], n["bf16"]) for n in rows)]
        atomic_write_json(a.out, {**res, "rows": old + rows})
    return res


if __name__ == "__main__":
    main()

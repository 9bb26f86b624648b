"""The planted-cue benchmark's configuration: one frozen dataclass, checked before any work."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from cfjax.data.planted import CUE_ORDER, check_cue_names
from cfjax.errors import bad_arg

DATA = ("mnist5k", "fashion_mnist")
EXPLAINERS = ("attack", "mirror", "pixel_attack", "saliency", "data_correlation", "random")
READOUTS = ("prob", "logit", "measured")
DEFAULT_READOUT = "measured"
"""The attack read-out reported as ``attack`` (docs/planted.md says why)."""


def _pos_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise bad_arg(name, repr(v), "a positive integer")


@dataclasses.dataclass(frozen=True)
class PlantedConfig:
    """Every setting of a planted-cue benchmark run (presets: :meth:`smoke`, :meth:`reduced`)."""

    data: str = "mnist5k"
    pair: tuple[int, int] = (3, 8)
    cues: tuple[str, ...] = CUE_ORDER
    rhos: tuple[float, ...] = (0.5, 0.75, 0.9, 1.0)
    seeds: int = 3
    two_cue: tuple[tuple[str, str], ...] = (("patch", "tag"), ("thickness", "stripe"), ("background", "position"))
    two_cue_rhos: tuple[float, ...] = (1.0,)
    n_train: int = 1000
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 3e-3
    widths: tuple[int, ...] = (16, 32, 64)
    n_eval: int = 100
    vae_epochs: int = 10
    vae_images: int = 4000
    latent_dim: int = 16
    predictor_steps: int = 1000
    attack_steps: int = 100
    attack_learning_rate: float = 0.1
    threshold: float = 0.5
    pixel_steps: int = 100
    pixel_learning_rate: float = 0.01
    z_alarm: float = 3.0
    n_boot: int = 1000
    readout: str = DEFAULT_READOUT

    @classmethod
    def smoke(cls) -> "PlantedConfig":
        """Plumbing in about a minute: three cells (the null, patch at rho = 1, patch+stripe at rho = 1), one seed."""
        return cls(cues=("patch",), rhos=(0.5, 1.0), seeds=1, two_cue=(("patch", "stripe"),), n_train=240, epochs=2,
                   n_eval=16, vae_epochs=1, vae_images=512, predictor_steps=100, attack_steps=20, pixel_steps=20, n_boot=100)

    def validate(self) -> "PlantedConfig":
        if self.data not in DATA:
            raise bad_arg("data", repr(self.data), f"one of {', '.join(DATA)} (shapes64 is not built yet)")
        if len(self.pair) != 2 or self.pair[0] == self.pair[1] or not all(isinstance(c, int) and 0 <= c < 10 for c in self.pair):
            raise bad_arg("pair", repr(self.pair), "two different class indices in [0, 10), 'S,T'")
        check_cue_names(self.cues, "cues")
        if not self.cues:
            raise bad_arg("cues", "no cue", "at least one cue")
        for name, rhos in (("rho", self.rhos), ("two_cue_rho", self.two_cue_rhos)):
            if not rhos or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.5 <= r <= 1.0 for r in rhos):
                raise bad_arg(name, repr(rhos), "shares in [0.5, 1] (0.5: the null)")
        for pair in self.two_cue:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise bad_arg("two_cue", repr(pair), "pairs of two different cues, 'a+b,c+d'")
            check_cue_names(pair, "two_cue")
        for name in ("seeds", "n_train", "epochs", "batch_size", "n_eval", "vae_epochs", "vae_images", "latent_dim",
                     "predictor_steps", "attack_steps", "pixel_steps", "n_boot"):
            _pos_int(name, getattr(self, name))
        if self.n_eval < 4:
            raise bad_arg("n_eval", self.n_eval, "at least 4 held-out images")
        if self.n_boot < 10:
            raise bad_arg("n_boot", self.n_boot, "at least 10 resamples")
        if not 0.0 < self.threshold < 1.0:
            raise bad_arg("threshold", self.threshold, "a probability in (0, 1)")
        if self.readout not in READOUTS:
            raise bad_arg("readout", repr(self.readout), f"one of {', '.join(READOUTS)}")
        return self

    def cells(self) -> list[tuple[tuple[str, ...], float, int]]:
        """``(planted, rho, seed)`` of every cell: one null cell per seed (at rho = 0.5 nothing is
        planted, so the cues share it), one per cue and rho > 0.5, one per two-cue pair and rho."""
        out = []
        for seed in range(self.seeds):
            if 0.5 in self.rhos:
                out.append(((), 0.5, seed))
            out += [((c,), float(r), seed) for r in self.rhos if r > 0.5 for c in self.cues]
            out += [(tuple(p), float(r), seed) for r in self.two_cue_rhos if r > 0.5 for p in self.two_cue]
        return out

    def fingerprint(self) -> str:
        """A digest of every setting a cell's result depends on (cells cached under another are redone)."""
        d = dataclasses.asdict(self)
        for k in ("cues", "rhos", "seeds", "two_cue", "two_cue_rhos", "n_boot", "readout"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def cell_key(planted, rho, seed) -> str:
    """A cell's file name: ``patch+tag_rho0.9_seed0`` (``null`` when nothing is planted)."""
    return f"{'+'.join(planted) or 'null'}_rho{float(rho):g}_seed{int(seed)}"

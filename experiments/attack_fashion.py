"""Counterfactual Attacks on Fashion-MNIST (the full 10,000-image test split by default).

    python experiments/attack_fashion.py --out runs/attack_fashion [--limit 1000] [--steps 1000] [--smoke]

The same three parts as ``attack_mnist.py`` (global explanation over the test split towards
every other class with the pixel baseline, misclassification fixes, progression strips), with
the clothing descriptors (area, brightness, symmetry, width, height, edges, top_heaviness) as
attributes and C3LT's pairs T-shirt/top<->Pullover, Coat<->Shirt, Sneaker<->Ankle boot for the
strips. Needs the Fashion-MNIST files (``apt-get install dataset-fashion-mnist``) or TFDS.
The full split is 90,000 counterfactuals (see BUILD_NOTES for the time on this CPU); use
``--limit`` for a quicker run.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from attack_mnist import parser, run  # noqa: E402

PAIRS = ((0, 2), (2, 0), (4, 6), (6, 4), (7, 9), (9, 7))


def main(argv=None) -> dict:
    a = parser(__doc__, "runs/attack_fashion").parse_args(argv)
    return run("fashion_mnist", PAIRS, a)


if __name__ == "__main__":
    main()

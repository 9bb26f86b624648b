"""Mirror-CFE on the bundled MNIST sample (mnist5k): pairs 3<->8, 4<->9, 5<->6.

    python experiments/mirror_mnist.py --out runs/mirror_mnist [--pairs 3,8 8,3] [--limit N] [--smoke]

One decoder serves every pair (trained once, cached in OUT/models/mnist5k/mirror_decoder);
each pair writes OUT/<s>_<t>/{summary.json,report.html,figures/}; OUT/table.md puts the numbers
beside the paper's (experiments/mirror_table.py).
"""

from mirror_table import run_pairs

PAIRS = ((3, 8), (8, 3), (4, 9), (9, 4), (5, 6), (6, 5))

if __name__ == "__main__":
    run_pairs("mnist5k", PAIRS, "runs/mirror_mnist")

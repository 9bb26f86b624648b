"""Mirror-CFE on Fashion-MNIST (full 60k/10k from Debian's dataset-fashion-mnist IDX files):
T-shirt(0)<->Pullover(2), Coat(4)<->Shirt(6), Sneaker(7)<->Ankle boot(9).

    python experiments/mirror_fashion.py --out runs/mirror_fashion [--pairs 0,2] [--limit N] [--smoke]

One decoder serves every pair (cached in OUT/models/fashion_mnist/mirror_decoder); each pair
writes OUT/<s>_<t>/; OUT/table.md is the table beside the paper's numbers.
"""

from mirror_table import run_pairs

PAIRS = ((0, 2), (2, 0), (4, 6), (6, 4), (7, 9), (9, 7))

if __name__ == "__main__":
    # the domain backbone (LPIPS/FID features only) gets 2 epochs instead of the classifier's 10:
    # one epoch over 60k images takes 1-3 minutes on 2 CPU cores
    run_pairs("fashion_mnist", PAIRS, "runs/mirror_fashion", backbone_epochs=2)

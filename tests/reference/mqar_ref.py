"""An independent implementation of the MQAR examples `kvmtrain prepare --synthetic mqar` writes,
from the procedure docs/recall.md specifies (not from kvmtrain's code), so that the documentation
is known to be enough to reproduce them.

Usage: python3 mqar_ref.py V T N G SEED STREAM COUNT OUT
STREAM is train or val. Writes OUT.tokens (uint16, COUNT x (T+1)) and OUT.mask (uint8, the same).
"""
import sys

import numpy as np

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
VAL_XOR = int.from_bytes(b"val-mqar", "big")  # 0x76616C2D6D716172


class SplitMix64:
    def __init__(self, state):
        self.state = state & MASK64

    def next(self):
        self.state = (self.state + GAMMA) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n):
        return self.next() % n


def shuffle_prefix(pool, k, rng):
    for i in range(k):
        j = i + rng.below(len(pool) - i)
        pool[i], pool[j] = pool[j], pool[i]


def example(V, T, N, G, rng):
    half = V // 2
    keys = list(range(1, half))
    shuffle_prefix(keys, N, rng)
    values = [half + rng.below(half) for _ in range(N)]
    first = max(2 * N, 2 * (N - 1) + G)
    first += first % 2
    slots = list(range(first, T - 1, 2))
    shuffle_prefix(slots, N, rng)
    chosen = sorted(slots[:N])
    order = list(range(N))
    shuffle_prefix(order, N, rng)
    tokens = [0] * (T + 1)
    mask = [0] * (T + 1)
    for i in range(N):
        tokens[2 * i], tokens[2 * i + 1] = keys[i], values[i]
    for q, i in zip(chosen, order):
        tokens[q], tokens[q + 1] = keys[i], values[i]
        mask[q + 1] = 1
    return tokens, mask


def main(V, T, N, G, seed, stream, count, out):
    rng = SplitMix64(seed if stream == "train" else seed ^ VAL_XOR)
    tokens, masks = [], []
    for _ in range(count):
        t, m = example(V, T, N, G, rng)
        tokens += t
        masks += m
    np.array(tokens, dtype=np.uint16).tofile(out + ".tokens")
    np.array(masks, dtype=np.uint8).tofile(out + ".mask")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5], int(a[6]), a[7])

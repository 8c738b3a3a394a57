#!/usr/bin/python3
"""Writes a test matrix with a known, decaying spectrum for `kvlab approx` (docs/lowrank.md).

A = U diag(sigma) V^T, with U [m, p] and V [n, p] random orthonormal (QR of a Gaussian,
numpy seed --seed), p = min(m, n), stored as the float32 dataset /A; the exact singular
values are stored too, as /sigma (float64).

  --spectrum geometric   sigma_i = decay^i          (i = 0..p-1; default decay 0.9)
  --spectrum power       sigma_i = (i + 1)^-decay   (default decay 1.0)

usage: scripts/make_test_matrix.py OUT.h5 [--m 1024] [--n 1024] [--spectrum power] [--decay 1.0] [--seed 0]
"""
import argparse

import h5py
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--m", type=int, default=1024)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--spectrum", choices=["geometric", "power"], default="power")
    ap.add_argument("--decay", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    p = min(a.m, a.n)
    i = np.arange(p, dtype=np.float64)
    if a.spectrum == "geometric":
        sigma = (0.9 if a.decay is None else a.decay) ** i
    else:
        sigma = (i + 1.0) ** -(1.0 if a.decay is None else a.decay)
    rng = np.random.default_rng(a.seed)
    U, _ = np.linalg.qr(rng.standard_normal((a.m, p)))
    V, _ = np.linalg.qr(rng.standard_normal((a.n, p)))
    A = (U * sigma) @ V.T
    with h5py.File(a.out, "w") as f:
        f.create_dataset("A", data=A.astype(np.float32))
        f.create_dataset("sigma", data=sigma)
        f.attrs["spectrum"] = a.spectrum
        f.attrs["decay"] = float(sigma[1] / sigma[0]) if a.spectrum == "geometric" else (1.0 if a.decay is None else a.decay)
        f.attrs["seed"] = a.seed
    print(f"wrote {a.out}: /A [{a.m}, {a.n}] float32, {a.spectrum} spectrum, sigma_1 = {sigma[0]:.3g}, "
          f"sigma_{p} = {sigma[-1]:.3g}")


if __name__ == "__main__":
    main()

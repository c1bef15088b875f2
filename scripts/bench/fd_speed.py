#!/usr/bin/env python
"""Fréchet distance speed: genalign's stable eigen-based form vs the scipy.linalg.sqrtm reference, same inputs,
measured side by side in one run (median of --repeats), for several sample counts.

    python scripts/bench/fd_speed.py --dim 64 --sizes 1000 5000 20000
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import linalg  # noqa: E402

from genalign.rewards.stats import frechet_distance  # noqa: E402


def scipy_fd(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def timed(fn, repeats):
    out, ts = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return out, statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000, 20000])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    print(f"device: cpu ({torch.get_num_threads()} threads), feature dim {a.dim}")
    print("| samples | genalign ms | scipy sqrtm ms | ratio genalign/scipy | |FD difference| |")
    print("|---|---|---|---|---|")
    for n in a.sizes:
        g = torch.Generator().manual_seed(n)
        x, y = torch.randn(n, a.dim, generator=g), torch.randn(n, a.dim, generator=g) * 1.1 + 0.1
        fd, t_ours = timed(lambda: float(frechet_distance(x, y)), a.repeats)
        ref, t_ref = timed(lambda: scipy_fd(x.double().numpy(), y.double().numpy()), a.repeats)
        print(f"| {n} | {t_ours * 1e3:.1f} | {t_ref * 1e3:.1f} | {t_ours / t_ref:.2f} | {abs(fd - ref):.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

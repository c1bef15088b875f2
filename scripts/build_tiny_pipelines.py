"""Build the tiny random-weight pipelines that configs/tiny/*.yaml train (seconds, offline).

    python scripts/build_tiny_pipelines.py            # -> runs/tiny/{sd3,flux,sd15,sdxl}
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from genalign.testing import tiny  # noqa: E402

BUILDERS = {"sd3": "build_tiny_sd3", "flux": "build_tiny_flux", "sd15": "build_tiny_sd15", "sdxl": "build_tiny_sdxl"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/tiny")
    ap.add_argument("--only", nargs="*", choices=sorted(BUILDERS))
    args = ap.parse_args()
    for name in args.only or BUILDERS:
        path = os.path.join(args.out, name)
        getattr(tiny, BUILDERS[name])(path)
        print(f"built {path}")


if __name__ == "__main__":
    main()

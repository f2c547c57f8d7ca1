#!/usr/bin/env bash
# Run by Snakemake in the new conda env (uvit.yaml), from the project root: the project, its dependencies
# being the locked ones already installed.
set -euo pipefail
pip install --quiet --no-deps -e .

"""``python -m spotd.providers.slurm node JOB_DIR``: what every sbatch script runs."""

import sys

from spotd.providers.slurm.node import main

main(sys.argv[1:])

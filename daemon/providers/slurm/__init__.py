"""Slurm: an instance is a batch job running the agent; partitions are regions.

``config`` parses the section, ``jobs`` reads and writes Slurm's words (pure), ``provider``
runs sbatch/squeue/scancel (the only module that does), ``node`` is what runs inside the job
(``python -m spotd.providers.slurm node JOB_DIR``, through ``__main__``).
"""

from spotd.providers.slurm.config import (
    PROVIDER_NAME,
    Partition,
    SlurmConfig,
    SlurmConfigError,
    parse_config,
    parse_partitions,
)
from spotd.providers.slurm.jobs import (
    SQUEUE_FORMAT,
    SlurmJob,
    classify_error,
    decode_comment,
    encode_comment,
    instance_state,
    job_name,
    node_keys,
    parse_squeue_format,
    parse_squeue_json,
    sbatch_argv,
)
from spotd.providers.slurm.node import expand_nodelist, node_entry
from spotd.providers.slurm.provider import SlurmProvider, command_env

__all__ = [
    "PROVIDER_NAME",
    "SQUEUE_FORMAT",
    "Partition",
    "SlurmConfig",
    "SlurmConfigError",
    "SlurmJob",
    "SlurmProvider",
    "classify_error",
    "command_env",
    "decode_comment",
    "encode_comment",
    "expand_nodelist",
    "instance_state",
    "job_name",
    "node_entry",
    "node_keys",
    "parse_config",
    "parse_partitions",
    "parse_squeue_format",
    "parse_squeue_json",
    "sbatch_argv",
]

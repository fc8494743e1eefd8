"""AWS: an instance is one EC2 instance per node of an attempt.

``config`` parses the section, ``userdata`` and ``ec2`` build and read EC2's messages (pure),
``catalog`` picks and refreshes prices, ``provider`` makes the calls (aioboto3 lives there),
``refresh`` is ``spotctl catalog refresh``.
"""

from spotd.providers.aws.catalog import (
    PLAUSIBLE_SPOT,
    RefreshResult,
    apply_spot_quotes,
    load_aws_catalog,
    refreshed_path,
    snapshot_path,
)
from spotd.providers.aws.config import (
    DEFAULT_AGENT_INSTALL,
    DEFAULT_NOTICE_URL,
    PROVIDER_NAME,
    AwsConfig,
    AwsConfigError,
)
from spotd.providers.aws.ec2 import SPOT_TERMINATION, classify_error, observe, run_instances_request
from spotd.providers.aws.provider import AwsProvider, credentials_problem, from_settings
from spotd.providers.aws.refresh import fetch_spot_quotes, refresh_catalog
from spotd.providers.aws.userdata import (
    AGENT_ROOT,
    USER_DATA_LIMIT,
    agent_for_instance,
    agent_from_user_data,
    client_token,
    render_user_data,
)

__all__ = [
    "AGENT_ROOT",
    "DEFAULT_AGENT_INSTALL",
    "DEFAULT_NOTICE_URL",
    "PLAUSIBLE_SPOT",
    "PROVIDER_NAME",
    "SPOT_TERMINATION",
    "USER_DATA_LIMIT",
    "AwsConfig",
    "AwsConfigError",
    "AwsProvider",
    "RefreshResult",
    "agent_for_instance",
    "agent_from_user_data",
    "apply_spot_quotes",
    "classify_error",
    "client_token",
    "credentials_problem",
    "fetch_spot_quotes",
    "from_settings",
    "load_aws_catalog",
    "observe",
    "refresh_catalog",
    "refreshed_path",
    "render_user_data",
    "run_instances_request",
    "snapshot_path",
]

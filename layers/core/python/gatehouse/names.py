"""Resource names shared by the CDK app (`infra/`) and the local stack (`gatehouse.local`).

Both sides build their resources from this module so that the laptop stack and the deployed
stack cannot drift apart. Names that must be globally unique (the bucket) are functions of the
account and region; CDK passes its tokens (`Aws.ACCOUNT_ID`, `Aws.REGION`) in.
"""

from __future__ import annotations

STACK_NAME = "Gatehouse"
PREFIX = "gatehouse"

# DynamoDB
REQUESTS_TABLE = f"{PREFIX}-requests"  # pk: request_id (S)
CONNECTIONS_TABLE = f"{PREFIX}-connections"  # pk: name (S)
PRINCIPALS_TABLE = f"{PREFIX}-principals"  # pk: principal_key (S): "iam:<arn>" | "slack:<user id>"
# powertools idempotency records for POST /v1/requests with an Idempotency-Key: pk id (S),
# TTL on `expiration` (24 h after the first answer).
IDEMPOTENCY_TABLE = f"{PREFIX}-idempotency"
IDEMPOTENCY_KEY_ATTRIBUTE = "id"
IDEMPOTENCY_TTL_ATTRIBUTE = "expiration"
# Slack interactions already seen (replay protection): pk signature (S), TTL on `expires_at`.
SLACK_REPLAY_TABLE = f"{PREFIX}-slack-replay"

# Secrets Manager
CONNECTION_SECRET_PREFIX = f"{PREFIX}/connections/"  # + connection name -> {"username","password"}
MASKING_KEY_SECRET = f"{PREFIX}/masking-key"  # HMAC key for keyed-hash masking
# The Slack app's secrets, split so that each function reads only what it uses: the bot token
# (and, when cdk.json names none, the channel) posts approval messages; the signing secret, read
# by the Slack interactions function alone, verifies Slack's requests.
SLACK_SECRET = f"{PREFIX}/slack"  # {"bot_token", "channel"}
SLACK_SIGNING_SECRET = f"{PREFIX}/slack-signing"  # {"signing_secret"}
# HMAC key (base64 text) that signs the Postgres proxy's short-lived passwords; not the masking
# key: rotating one must not touch the other. AWSCURRENT signs, AWSCURRENT and AWSPREVIOUS verify.
PROXY_TOKEN_KEY_SECRET = f"{PREFIX}/proxy-token-key"
# The proxy's TLS certificate and key: {"certificate": PEM, "private_key": PEM}.
PROXY_TLS_SECRET = f"{PREFIX}/proxy-tls"

# Lambda
API_FUNCTION = f"{PREFIX}-api"
APPROVALS_FUNCTION = f"{PREFIX}-approvals"  # the state machine's tasks
# The state machine's Notify task (posts to Slack): outside the VPC, no connection secret.
APPROVALS_NOTIFY_FUNCTION = f"{PREFIX}-approvals-notify"
SLACK_FUNCTION = f"{PREFIX}-slack"  # POST /slack/interactions (and its own async invocations)
# Secrets Manager's rotation of Postgres connection secrets (gatehouse.rotation).
ROTATION_FUNCTION = f"{PREFIX}-rotation"

# Step Functions: one execution per request awaiting approval, named after the request id.
STATE_MACHINE_NAME = f"{PREFIX}-approvals"

# CloudWatch: custom metrics the proxy publishes (infra/monitoring.py alarms on them).
PROXY_METRICS_NAMESPACE = "Gatehouse/Proxy"
METRIC_RECORDER_FAILURES = "RecorderFailures"  # session-log writes that failed for good (Sum)
METRIC_LOG_BACKLOG_EVENTS = "LogBacklogEvents"  # events waiting to be written to the log (Maximum)
# The approvals function's: requests that expired with nobody deciding (Sum), from the Expire step.
APPROVALS_METRICS_NAMESPACE = "Gatehouse/Approvals"
METRIC_APPROVALS_EXPIRED = "ApprovalsExpired"
DASHBOARD_NAME = PREFIX
ALARM_TOPIC_NAME = f"{PREFIX}-alarms"

# Audit (Glue / Athena)
GLUE_DATABASE = f"{PREFIX}_audit"
EVENTS_TABLE = f"{PREFIX}_events"
ATHENA_WORKGROUP = f"{PREFIX}-audit"

# S3 key prefixes inside the session-log bucket
EVENTS_PREFIX = "events/"
MANIFESTS_PREFIX = "manifests/"

# Environment variables the Lambda functions and the proxy read (see gatehouse.config).
ENV_LOG_BUCKET = "GATEHOUSE_LOG_BUCKET"
ENV_REQUESTS_TABLE = "GATEHOUSE_REQUESTS_TABLE"
ENV_CONNECTIONS_TABLE = "GATEHOUSE_CONNECTIONS_TABLE"
ENV_PRINCIPALS_TABLE = "GATEHOUSE_PRINCIPALS_TABLE"
ENV_MASKING_KEY_SECRET = "GATEHOUSE_MASKING_KEY_SECRET"  # noqa: S105 (a variable name)
ENV_POLICY_DIR = "GATEHOUSE_POLICY_DIR"
ENV_STATEMENT_TIMEOUT_MS = "GATEHOUSE_STATEMENT_TIMEOUT_MS"
ENV_MAX_ROWS = "GATEHOUSE_MAX_ROWS"
ENV_MAX_BYTES = "GATEHOUSE_MAX_BYTES"
ENV_LOG_RETENTION_DAYS = "GATEHOUSE_LOG_RETENTION_DAYS"
ENV_STATE_MACHINE_ARN = "GATEHOUSE_STATE_MACHINE_ARN"
ENV_SLACK_SECRET = "GATEHOUSE_SLACK_SECRET"  # noqa: S105 (a variable name)
ENV_SLACK_SIGNING_SECRET = "GATEHOUSE_SLACK_SIGNING_SECRET"  # noqa: S105 (a variable name)
ENV_SLACK_CHANNEL = "GATEHOUSE_SLACK_CHANNEL"  # cdk.json slackChannel; else the Slack secret's channel
ENV_SLACK_API_URL = "GATEHOUSE_SLACK_API_URL"  # local stack only: the Slack Web API stand-in
ENV_SLACK_REPLAY_TABLE = "GATEHOUSE_SLACK_REPLAY_TABLE"
ENV_PROXY_TOKEN_KEY_SECRET = "GATEHOUSE_PROXY_TOKEN_KEY_SECRET"  # noqa: S105 (a variable name)
ENV_PROXY_ENDPOINT = "GATEHOUSE_PROXY_ENDPOINT"  # host:port agents connect to; empty: no proxy yet
# The proxy process (gatehouse proxy serve), see gatehouse.proxy.postgres.config.
ENV_PROXY_LISTEN = "GATEHOUSE_PROXY_LISTEN"  # host:port it listens on (default 0.0.0.0:6432)
ENV_PROXY_HEALTH = "GATEHOUSE_PROXY_HEALTH"  # host:port of GET /healthz (default 0.0.0.0:8080)
ENV_PROXY_TLS_SECRET = "GATEHOUSE_PROXY_TLS_SECRET"  # noqa: S105 (a variable name)
ENV_PROXY_ALLOW_PLAINTEXT = "GATEHOUSE_PROXY_ALLOW_PLAINTEXT"  # "1": plaintext off loopback too
ENV_PROXY_MAX_SESSIONS = "GATEHOUSE_PROXY_MAX_SESSIONS"
ENV_PROXY_IDLE_TIMEOUT_S = "GATEHOUSE_PROXY_IDLE_TIMEOUT_S"
ENV_PROXY_DRAIN_S = "GATEHOUSE_PROXY_DRAIN_S"
# The proxy's floor for recording: a connection records at least this strictly (sync > sync_writes > async).
ENV_PROXY_RECORDING_MODE = "GATEHOUSE_PROXY_RECORDING_MODE"
PROXY_PORT = 6432
PROXY_HEALTH_PORT = 8080

DEFAULT_LOG_RETENTION_DAYS = 365
LOCAL_LOG_RETENTION_DAYS = 1


def connection_secret_name(connection: str) -> str:
    return f"{CONNECTION_SECRET_PREFIX}{connection}"


def session_log_bucket(account: str, region: str) -> str:
    """Bucket names are global: suffix with account and region (CDK passes tokens)."""
    return f"{PREFIX}-session-log-{account}-{region}"


def athena_results_bucket(account: str, region: str) -> str:
    return f"{PREFIX}-athena-results-{account}-{region}"

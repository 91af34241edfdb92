"""POST /slack/interactions (no IAM auth: Slack signs its requests) and this function's own
asynchronous invocations. Thin: the logic is `gatehouse.slack.app.SlackInteractions`."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gatehouse import aws, names
from gatehouse.config import Settings
from gatehouse.runtime import build_runtime
from gatehouse.secrets import SecretStore
from gatehouse.slack.app import SlackInteractions, VoteService
from gatehouse.slack.replay import ReplayStore

logger = Logger(service=names.SLACK_FUNCTION)

# Slack waits 3 seconds for the acknowledgement: fail fast rather than retry slowly.
_BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=1, read_timeout=2)

_app: SlackInteractions | None = None
_service: VoteService | None = None


def _get_service() -> VoteService:
    # Only the asynchronous invocation votes; the 3-second path never pays for this.
    global _service
    if _service is None:
        _service = build_runtime(Settings.from_env()).service
    return _service


def _get_app() -> SlackInteractions:
    # Built on the first invocation, then reused by the warm container.
    global _app
    if _app is None:
        session = aws.session()
        _app = SlackInteractions(
            Settings.from_env(),
            secrets=SecretStore(session.client("secretsmanager", config=_BOTO_CONFIG)),
            replay=ReplayStore(session.client("dynamodb", config=_BOTO_CONFIG), names.SLACK_REPLAY_TABLE),
            lambda_client=session.client("lambda", config=_BOTO_CONFIG),
            service=_get_service,
            function_name=names.SLACK_FUNCTION,
            request_exists=_request_exists(session.client("dynamodb", config=_BOTO_CONFIG)),
        )
    return _app


def _request_exists(dynamodb: Any) -> Any:
    table = Settings.from_env().requests_table

    def exists(request_id: str) -> bool:
        if not request_id or len(request_id) > 128:
            return False
        try:
            item = dynamodb.get_item(
                TableName=table,
                Key={"request_id": {"S": request_id}},
                ProjectionExpression="request_id",
                ConsistentRead=True,
            )
        except (ClientError, BotoCoreError):
            return True  # unknown now: the vote itself checks again and refuses what must be
        return "Item" in item

    return exists


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return _get_app().handle(event)

"""The DynamoDB tables: approval requests, the connection registry, the principal registry, the
idempotency records of agent requests, and the Slack interactions already seen."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from gatehouse import names


class Tables(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.requests = self._table(
            "Requests",
            names.REQUESTS_TABLE,
            "request_id",
            # Pending requests expire; an executed one is already in the session log.
            time_to_live_attribute="expires_at",
        )
        self.connections = self._table("Connections", names.CONNECTIONS_TABLE, "name")
        self.principals = self._table("Principals", names.PRINCIPALS_TABLE, "principal_key")
        self.idempotency = self._table(
            "Idempotency",
            names.IDEMPOTENCY_TABLE,
            names.IDEMPOTENCY_KEY_ATTRIBUTE,
            # powertools writes the expiry (24 h after the answer); DynamoDB deletes the record.
            time_to_live_attribute=names.IDEMPOTENCY_TTL_ATTRIBUTE,
        )
        # Signatures of Slack interactions already accepted (replay protection): Slack's
        # timestamps are valid for 5 minutes, the records live 10 (gatehouse.slack.replay).
        self.slack_replay = self._table(
            "SlackReplay", names.SLACK_REPLAY_TABLE, "signature", time_to_live_attribute="expires_at"
        )

    def _table(
        self,
        construct_id: str,
        table_name: str,
        partition_key: str,
        time_to_live_attribute: str | None = None,
    ) -> dynamodb.Table:
        return dynamodb.Table(
            self,
            construct_id,
            table_name=table_name,
            partition_key=dynamodb.Attribute(name=partition_key, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            # The AWS-managed key (aws/dynamodb) rather than the default AWS-owned one: its use
            # shows up in the account's CloudTrail.
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            time_to_live_attribute=time_to_live_attribute,
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )

"""Secrets: the masking key Gatehouse generates, and the prefix under which operators keep
one secret per connection (`gatehouse/connections/<name>`, JSON with `username` and `password`)."""

from __future__ import annotations

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from gatehouse import names
from infra.nag import acknowledge

# 64 characters from [A-Za-z0-9] are valid base64 (a multiple of 4, no padding) and decode to
# 48 random bytes: gatehouse.secrets.SecretStore.binary_key reads the key as base64.
_MASKING_KEY_LENGTH = 64


class Secrets(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.masking_key = secretsmanager.Secret(
            self,
            "MaskingKey",
            secret_name=names.MASKING_KEY_SECRET,
            description="Gatehouse: HMAC key for keyed-hash masking (base64 text).",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=_MASKING_KEY_LENGTH,
                exclude_punctuation=True,
                include_space=False,
            ),
            # Losing the key would make earlier keyed-hash tokens impossible to correlate.
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.masking_key,
            "AwsSolutions-SMG4",
            "Rotating the masking key changes every keyed-hash token, so masked values stop "
            "matching across the session log; an operator rotates it on purpose, not on a schedule.",
        )
        self.proxy_token_key = secretsmanager.Secret(
            self,
            "ProxyTokenKey",
            secret_name=names.PROXY_TOKEN_KEY_SECRET,
            description="Gatehouse: HMAC key that signs the Postgres proxy's passwords (base64 text).",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=_MASKING_KEY_LENGTH,
                exclude_punctuation=True,
                include_space=False,
            ),
            # Only short-lived passwords depend on it: a stack deleted with it loses nothing durable.
            removal_policy=RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.proxy_token_key,
            "AwsSolutions-SMG4",
            "Rotated by an operator with gatehouse.proxy_tokens.rotate_key (put-secret-value): "
            "passwords name their key version and AWSPREVIOUS still verifies, so a rotation cuts "
            "no password short if done at most once per 12 h (the longest password lifetime).",
        )
        # Secret ARNs end in "-" plus six random characters, hence the trailing wildcard.
        self.connection_secrets_arn = Stack.of(self).format_arn(
            service="secretsmanager",
            resource="secret",
            resource_name=f"{names.CONNECTION_SECRET_PREFIX}*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

    def grant_proxy_token_key_read(self, grantee: iam.IGrantable) -> None:
        """Issue and verify proxy passwords (the API function; later the proxy service)."""
        self.proxy_token_key.grant_read(grantee)

    def grant_read(self, grantee: iam.IGrantable) -> None:
        """Read the masking key and any connection secret, and nothing else in Secrets Manager."""
        self.masking_key.grant_read(grantee)
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=[self.connection_secrets_arn],
            )
        )

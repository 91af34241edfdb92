"""cdk-nag (v3) findings are acknowledged through CDK's own Validations, one finding at a time,
each with the reason written next to the resource it concerns."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(construct: IConstruct, rule_id: str, reason: str) -> None:
    """`rule_id` is a rule (`AwsSolutions-S1`) or one finding of it (`AwsSolutions-IAM5[Resource::*]`)."""
    Validations.of(construct).acknowledge(Acknowledgment(id=rule_id, reason=reason))

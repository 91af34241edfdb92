"""Slack: the approval message (views), posting it (notify), and the interactions Slack sends back.

Nothing here builds a client or reads a secret at import; `gatehouse.slack.app` wires the pieces
for `functions/slack`.
"""

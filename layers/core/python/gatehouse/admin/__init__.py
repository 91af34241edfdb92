"""`gatehouse admin ...`: register connections, agents and approvers in a deployed (or local) stack.

`connections` writes a target's secret and its registry item (a Postgres role is checked for least
privilege first); `agents` maps an IAM role to an agent; `approvers` gives a Slack user the groups
Cedar policies ask for. The command line is in `gatehouse.admin.cli`; the rules are here beside it:
`connections` and `principals`, with `policies` reading what the loaded Cedar policies expect.
"""

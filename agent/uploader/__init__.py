"""Outbox delivery, the portal protocol and CSV export.

Not built yet: the portal push arrives with issue [5/7] and the Service-Portal CSV export
with [4/7]. Nothing in the agent imports this package until then.
"""

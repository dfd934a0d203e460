"""Collectors: ways of reading a device's identity from an endpoint a source found.

One module per way of reading (standard USB descriptors, the Sync interface of CollabOS
bars, SNMP, SSH…). A collector never changes a device's state: it sends identity and status
reads only.
"""

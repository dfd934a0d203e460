"""roomsync: an on-prem agent for Logitech meeting-room hardware."""

__version__ = "0.1.0"

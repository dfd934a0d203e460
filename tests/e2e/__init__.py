"""End-to-end tests: a whole site on loopback, ``roomsync run`` against real peers."""

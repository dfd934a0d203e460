"""SNMP: the client (one shared pysnmp engine, read-only GET / GETBULK requests) and the
collector that turns the system group and ENTITY-MIB rows into an observation."""

"""Where the inventory goes: the licensing portal, GLPI, an MQTT broker.

* :mod:`agent.uploader.protocol` — the portal's wire protocol (``roomsync.inventory.v1``,
  ``roomsync.events.v1``): pydantic models, builders from the inventory, serialisation and
  the JSON Schemas embedded in ``docs/portal-api.md``.
* :mod:`agent.uploader.outbox` — the durable outbox: one queue per output in the store.
* :mod:`agent.uploader.delivery` — the delivery loop every output shares (backoff, park,
  pause) and the portal's transport.
* :mod:`agent.uploader.outputs` — the outputs (:data:`OUTPUTS`): their settings, how their
  queues fill, GLPI's and MQTT's transports.
* :mod:`agent.uploader.glpi` — GLPI native inventory documents; :mod:`agent.uploader.mqtt`
  — the MQTT connection; :mod:`agent.uploader.snapshot` — the snapshot from the store.
* :mod:`agent.uploader.service_portal` — the Service Portal's room upload CSV (S14,
  ``roomsync export --format service-portal-csv``).

This module stays light (the CLI reads :data:`OUTPUTS` to build its parser).
"""

#: The outputs, in the order they are shown and delivered.
PORTAL, GLPI, MQTT = "portal", "glpi", "mqtt"
OUTPUTS = (PORTAL, GLPI, MQTT)

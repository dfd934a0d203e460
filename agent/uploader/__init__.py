"""The portal push.

* :mod:`agent.uploader.protocol` — the wire protocol (``roomsync.inventory.v1``,
  ``roomsync.events.v1``): pydantic models, builders from the inventory, serialisation and
  the JSON Schemas embedded in ``docs/portal-api.md``.

Still to come with issue [5/7]: the durable outbox and its delivery (retries, backoff,
``Retry-After``, parking), and ``roomsync push``.

* :mod:`agent.uploader.service_portal` — the Service Portal's room upload CSV (S14,
  ``roomsync export --format service-portal-csv``).
"""

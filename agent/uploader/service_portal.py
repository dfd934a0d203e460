"""The Service Portal's room upload (S14): for customers without Sync, who enter their rooms
and devices in Logitech's Service Portal by hand or upload them as a CSV file.

One row per key device (the units whose serials must be registered to their room) per room, in
the order of :func:`agent.inventory.summarize_rooms`; units in no room are not listed. Cells a
spreadsheet would run as a formula are defused (:func:`csv_cell`). Rows end in CRLF, as
RFC 4180 and spreadsheets write them.

``roomsync export --format service-portal-csv`` writes it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from agent.inventory import RoomsReport

__all__ = ["SERVICE_PORTAL_COLUMNS", "csv_cell", "service_portal_csv", "service_portal_rows"]

#: The Service Portal CSV's columns (S14), in order.
SERVICE_PORTAL_COLUMNS = ("room_id", "room_name", "location", "product", "model", "serial", "firmware")


def csv_cell(value: object) -> str:
    """A cell safe to open in a spreadsheet: text a spreadsheet would run as a formula
    (=, +, -, @, tab, CR at the start) is prefixed with a quote."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def service_portal_rows(report: RoomsReport) -> list[list[str]]:
    """The rows under the header: one per key device per room, cells defused."""
    rows = []
    for summary in report.rooms:
        room = report.directory.get(summary.room_id)
        for key in summary.key_devices:
            rows.append(
                [
                    csv_cell(v)
                    for v in (
                        summary.room_id,
                        room.name if room else None,
                        room.location if room else None,
                        key.product,
                        key.model,
                        key.serial,
                        key.firmware,
                    )
                ]
            )
    return rows


def service_portal_csv(rows: Iterable[Sequence[str]]) -> str:
    """The file's text: the header, then ``rows`` (:func:`service_portal_rows`)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(SERVICE_PORTAL_COLUMNS)
    writer.writerows(rows)
    return out.getvalue()

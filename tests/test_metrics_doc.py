"""docs/metrics.md names exactly the metrics ``agent/api.py`` exports, with their types and labels.

The metric families are read from ``agent/api.py``'s source (every ``CounterMetricFamily(…)``,
``GaugeMetricFamily(…)`` and ``InfoMetricFamily(…)`` call), so a metric added, renamed or
relabelled there without a line in the document (or the reverse) fails here. Exported names
follow prometheus_client: counters get ``_total``, info metrics ``_info``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
API = REPO / "agent" / "api.py"
DOC = REPO / "docs" / "metrics.md"

_KINDS = {"CounterMetricFamily": "counter", "GaugeMetricFamily": "gauge", "InfoMetricFamily": "info"}
_SUFFIX = {"counter": "_total", "gauge": "", "info": "_info"}


def code_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Exported name → (type, labels) of every metric family agent/api.py builds."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for node in ast.walk(ast.parse(API.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _KINDS):
            continue
        kind = _KINDS[node.func.id]
        first = node.args[0]
        assert isinstance(first, ast.Constant) and isinstance(first.value, str), ast.dump(node)
        keywords = {k.arg: k.value for k in node.keywords}
        labels: tuple[str, ...] = ()
        if isinstance(keywords.get("labels"), ast.List):
            labels = tuple(ast.literal_eval(keywords["labels"]))
        elif kind == "info" and isinstance(keywords.get("value"), ast.Dict):
            labels = tuple(ast.literal_eval(k) for k in keywords["value"].keys if k is not None)
        name = first.value + _SUFFIX[kind]
        assert name not in found, f"{name} is built twice"
        found[name] = (kind, labels)
    return found


def doc_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Exported name → (type, labels) of every row of the document's metrics table."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\| `(roomsync_\w+)` \| (\w+) \|([^|]*)\|", line)
        if match:
            assert match[1] not in found, f"{match[1]} is documented twice"
            found[match[1]] = (match[2], tuple(re.findall(r"`(\w+)`", match[3])))
    return found


def test_every_exported_metric_is_documented_and_nothing_else() -> None:
    code, doc = code_metrics(), doc_metrics()
    assert len(code) >= 15
    assert sorted(set(code) - set(doc)) == [], "exported by agent/api.py but not in docs/metrics.md"
    assert sorted(set(doc) - set(code)) == [], "in docs/metrics.md but not exported by agent/api.py"


def test_types_and_labels_match() -> None:
    code, doc = code_metrics(), doc_metrics()
    assert {name: doc[name] for name in code} == code


def test_every_metric_the_document_mentions_exists() -> None:
    """Alert examples and prose may only use exported names (``roomsync_source_runs`` without
    ``_total`` is mentioned once on purpose, as the family name)."""
    names = set(code_metrics())
    mentioned = set(re.findall(r"\broomsync_[a-z_]+\b", DOC.read_text(encoding="utf-8")))
    assert sorted(mentioned - names - {"roomsync_source_runs"}) == []

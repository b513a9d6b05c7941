"""Bar ingest: Redis Streams -> validation at the edge -> the bar store.

``IngestService`` is the daemon's ingest step; ``decode_bar`` the edge;
``IngestMetrics`` its Prometheus metrics.
"""

from quantum_daemon.ingest.consumer import IngestService
from quantum_daemon.ingest.decode import Reason, Rejection, Series, decode_bar
from quantum_daemon.ingest.ledger import IngestTotals
from quantum_daemon.ingest.metrics import IngestMetrics

__all__ = [
    "IngestMetrics",
    "IngestService",
    "IngestTotals",
    "Reason",
    "Rejection",
    "Series",
    "decode_bar",
]

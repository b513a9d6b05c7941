"""Push to consumers that are not Redis clients: HMAC-signed webhooks of the
lifecycle events (the SSE stream of the signals is ``web.signal_stream``)."""

from quantum_daemon.push.service import WebhookService

__all__ = ["WebhookService"]

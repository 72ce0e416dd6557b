"""The storage-events webhook: stores that POST notifications (MinIO, OSS via MNS/EventBridge).

The request body is one notification in any shape the Kafka subscriber
accepts, processed the same way. Answers: 200 with what was applied (also
when some records were dead-lettered: the store must not retry those), 400
when nothing in the body was usable (it was dead-lettered with the reason),
401 for a missing or wrong token, 413 for a body over the limit.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid

from aiohttp import web

from viewfinder_common.logging import get_logger
from viewfinder_ingest.domain.notification_processor import NotificationInput, NotificationProcessor

log = get_logger(__name__)


def webhook_app(
    processor: NotificationProcessor, *, path: str, token: str | None, max_body_bytes: int
) -> web.Application:
    """The aiohttp application serving ``POST <path>``."""

    async def receive(request: web.Request) -> web.Response:
        if token is not None and not _authorised(request.headers.get("Authorization", ""), token):
            return web.json_response({"error": "missing or wrong Authorization token"}, status=401)
        body = await request.read()
        trace_id = uuid.uuid4().hex
        outcome = await processor.process(
            [
                NotificationInput(
                    body=body, source={"source": "webhook", "remote": request.remote or ""}, trace_id=trace_id
                )
            ]
        )
        reasons = [letter.reason for letter in outcome.dead_letters]
        unusable = bool(reasons) and outcome.changes == 0 and outcome.ignored == 0
        return web.json_response(
            {
                "changes": outcome.changes,
                "applied": outcome.applied,
                "skipped": outcome.skipped,
                "ignored": outcome.ignored,
                "events": outcome.events,
                "dead_lettered": reasons,
                "trace_id": trace_id,
            },
            status=400 if unusable else 200,
        )

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post(path, receive)
    app.router.add_get("/healthz", health)
    return app


def _authorised(header: str, token: str) -> bool:
    presented = header.removeprefix("Bearer ").strip()
    return hmac.compare_digest(presented.encode(), token.encode())


class WebhookServer:
    """Runs the webhook application on a TCP port (0 picks a free one)."""

    def __init__(self, app: web.Application, *, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._port = port
        self.port = 0

    async def start(self) -> int:
        """Binds and starts serving; returns the bound port."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self._port
        log.info("webhook_started", host=self._host, port=self.port)
        return self.port

    async def stop(self) -> None:
        """Stops accepting requests and closes the server."""
        await self._runner.cleanup()
        log.info("webhook_stopped")

    async def serve_forever(self) -> None:
        """Starts, then serves until cancelled (a background task of the service)."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

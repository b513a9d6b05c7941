"""The feed as its own process (``quantum-daemon feed``): one Redis client,
the bar store read (never written) for where each series stands, SIGTERM and
SIGINT as the stop."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import uvloop

from quantum_daemon.domain.config import Config
from quantum_daemon.domain.errors import EX_OK, ConfigError
from quantum_daemon.ingest.feed.service import FeedService, NewestStored
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.runtime.redis_link import make_client
from quantum_daemon.storage.bar_store import DB_FILENAME, BarStore

log = get_logger()


def newest_stored_in(data_dir: Path) -> NewestStored:
    """The newest stored bar of every series of the store in ``data_dir``
    (none while there is no store: this process creates nothing there)."""

    def read() -> dict[tuple[str, str], int]:
        if not (data_dir / DB_FILENAME).exists():
            return {}
        with BarStore.in_dir(data_dir) as store:
            return store.last_ts()

    return read


def run_feed(cfg: Config) -> int:
    try:
        return uvloop.run(_main(cfg))
    except ConfigError as exc:
        log.error("feed.config_error", error=str(exc), exit_code=exc.exit_code)
        print(f"quantum-daemon feed: {exc}", file=sys.stderr)
        return exc.exit_code


async def _main(cfg: Config) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = make_client(cfg.redis)
    try:
        async with FeedService(cfg, client, newest_stored_in(cfg.storage.data_dir)) as feed:
            await feed.run(stop)
    finally:
        await client.aclose()
    return EX_OK

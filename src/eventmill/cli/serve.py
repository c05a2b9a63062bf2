"""``eventmill serve``: run the gateway."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Annotated

import typer

from eventmill.cli._common import (
    ConfigOption,
    app,
    command_name,
    fail,
    load_settings,
    make_data_dir,
)
from eventmill.cli.config import refuse_problems
from eventmill.errors import ConfigurationError


def _graceful_server() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, except that a SIGTERM handled gracefully ends the process
        with status 0 (uvicorn re-raises it, so the process would end "killed by
        SIGTERM"): an orchestrator asked it to stop, and it stopped cleanly."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals[:] = [
                        s for s in self._captured_signals if s != signal.SIGTERM
                    ]

    return GracefulServer


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default 8080).")] = None,
    role: Annotated[
        str | None,
        typer.Option(
            help="Roles to run, comma-separated: api, ingest, delivery, realtime (default all)."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the gateway: the HTTP API, webhook receivers, delivery and realtime, as the
    roles say. SIGTERM or Ctrl-C stops it gracefully within the shutdown grace period."""
    import uvicorn

    from eventmill.app import create_app, startup_message
    from eventmill.devmode import dev_secrets_path, with_dev_secrets
    from eventmill.logs import configure_logging

    configured = load_settings(config, host=host, port=port, roles=role)
    # What would fail the app's build or start (a bus URL of no backend, a JWT key that
    # does not load, a source's empty secret, ...): one line naming the setting, exit 2.
    refuse_problems(configured)
    make_data_dir(configured)
    settings = with_dev_secrets(configured)
    used = [
        name
        for name, before, after in (
            (
                "Razorpay",
                bool(configured.razorpay_webhook_secret),
                settings.razorpay_webhook_secret,
            ),
            ("JWT", configured.jwt.configured, settings.jwt.configured),
        )
        if after and not before
    ]
    dev = dev_secrets_path(settings) if used else None
    message = startup_message(settings, command_name(), dev_secrets=dev, dev_secret_names=used)
    configure_logging(settings.log_level)
    try:
        asgi = create_app(
            settings, freeze_gc=True, on_started=lambda: print(message, file=sys.stderr)
        )
    except ConfigurationError as exc:  # what the checks above do not foresee
        raise fail(str(exc), 2) from None
    server_config = uvicorn.Config(
        asgi,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # configure_logging routed uvicorn's loggers already
        # Above "info" no access line is printed: uvicorn then need not build one per request.
        access_log=settings.log_level in ("debug", "info"),
        # Browsers negotiate permessage-deflate: ~45 KB more per WebSocket connection
        # for events that are small JSON; the hub's frames go uncompressed.
        ws_per_message_deflate=False,
        # the protocol refuses (1009) a larger client message while it arrives, instead
        # of buffering up to uvicorn's 16 MiB default before the realtime check
        ws_max_size=settings.realtime.max_client_message_bytes,
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
    server = _graceful_server()(server_config)
    server.run()
    if not server.started:
        raise typer.Exit(3)  # uvicorn's "startup failure" status

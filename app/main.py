"""`create_app(settings)`: the FastAPI app; its lifespan loads the models and stops the engines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.config import Settings
from app.model import set_torch_threads
from app.native_memory import (
    MKLDNN_LRU_CACHE_ENV,
    ONEDNN_CACHE_ENV,
    bound_mkldnn_lru_cache,
    bound_onednn_cache,
)
from app.routes import health, realtime, turns
from app.routes.deps import ApiError, api_error_handler
from app.server_state import ServerState

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Models load in the background after start; /readyz says when they are in."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServerState(settings)
        app.state.server = state
        if not settings.api_keys:
            log.warning("no API keys configured: the server is open to anyone who can reach it")
        # Before any model runs (the CLI has set it before torch loaded; this covers other launchers).
        capacity = bound_onednn_cache(settings.onednn_primitive_cache_capacity)
        log.info(
            "oneDNN keeps at most %d compiled kernels (FREEZE_OMNI_ONEDNN_PRIMITIVE_CACHE_CAPACITY, or %s)",
            capacity,
            ONEDNN_CACHE_ENV,
        )
        lru = bound_mkldnn_lru_cache(settings.mkldnn_lru_cache_capacity)
        log.info(
            "torch keeps at most %d oneDNN computations per thread (FREEZE_OMNI_MKLDNN_LRU_CACHE_CAPACITY, or %s)",
            lru,
            MKLDNN_LRU_CACHE_ENV,
        )
        threads = set_torch_threads(settings.torch_threads)
        log.info(
            "torch uses %d CPU thread(s) (FREEZE_OMNI_TORCH_THREADS=%d)", threads, settings.torch_threads
        )
        state.start_loading()
        state.memory.start()
        loop_watch = asyncio.create_task(state.loop_watch.run(), name="loop-watch")
        try:
            yield
        finally:
            loop_watch.cancel()
            await state.stop()

    app = FastAPI(
        title="Freeze-Omni serving",
        summary="Real-time speech-to-speech over the OpenAI Realtime protocol, and offline turns over REST",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_exception_handler(ApiError, api_error_handler)
    app.include_router(health.router)
    app.include_router(turns.router)
    app.include_router(realtime.router)
    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app

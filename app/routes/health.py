"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from app.process_stats import process_gauges
from app.routes.deps import Server

router = APIRouter()


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Models are loaded and sessions can be served")
async def readyz(server: Server) -> JSONResponse:
    auth = bool(server.settings.api_keys)
    if server.load_error is not None:
        return JSONResponse({"status": "failed", "error": server.load_error, "auth": auth}, status_code=503)
    if server.fatal_error is not None:
        return JSONResponse({"status": "failed", "error": server.fatal_error, "auth": auth}, status_code=503)
    if server.draining:
        return JSONResponse({"status": "draining", "auth": auth}, status_code=503)
    if server.pool is None:
        return JSONResponse({"status": "loading", "auth": auth}, status_code=503)
    pool = server.pool
    return JSONResponse(
        {
            "status": "ready",
            "replicas": [e.name for e in pool.engines],
            "capacity": pool.capacity,
            "active_sessions": pool.active_sessions,
            "headroom": {e.name: asdict(e.headroom()) for e in pool.engines},
            "instance_id": server.instance_id,
            "auth": auth,
        }
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(server: Server) -> PlainTextResponse:
    gauges: dict[str, float] = {
        "ready": float(server.ready and not server.draining),
        "draining": float(server.draining),
        "websocket_sessions": float(len(server.sessions)),
        "websocket_sessions_parked": float(server.resumable.parked),
        "session_tasks": float(sum(getattr(c, "live_tasks", 0) for c in server.sessions)),
        **process_gauges(),
        **server.memory.gauges(),
        **server.loop_watch.gauges(),
    }
    rows: dict[str, tuple[int, int]] = {}
    if server.pool is not None:
        engines = server.pool.engines
        gauges["engine_sessions"] = float(server.pool.active_sessions)
        gauges["engine_capacity"] = float(server.pool.capacity)
        gauges["queue_depth_chunks"] = float(sum(e.pending_chunks() for e in engines))
        gauges["engine_steps"] = float(sum(e.stats.steps for e in engines))
        gauges["engine_busy_seconds"] = sum(e.stats.step_seconds for e in engines)
        gauges["llm_cache_slots_in_use"] = float(
            sum(e.llm_cache.shape.num_slots - e.llm_cache.num_free for e in engines)
        )
        gauges["decoder_cache_slots_in_use"] = float(
            sum(e.decoder_cache.shape.num_slots - e.decoder_cache.num_free for e in engines)
        )
        headrooms = [e.headroom() for e in engines]
        gauges["engine_load"] = max(h.load for h in headrooms)
        gauges["engine_headroom_sessions"] = float(sum(h.headroom_sessions for h in headrooms))
        for engine in engines:
            for stage, count in engine.stats.rows.items():
                total, forwards = rows.get(stage, (0, 0))
                rows[stage] = (total + count, forwards + engine.stats.forwards_with_rows.get(stage, 0))
    return PlainTextResponse(server.metrics.render(gauges, rows), media_type="text/plain; version=0.0.4")

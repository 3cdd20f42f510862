"""The jobs API of the frontend's queue panel: /api/jobs, one job, its assets, and cancelling."""
from __future__ import annotations

import mimetypes
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from comfyui_server import jobs
from comfyui_server.http import error_response, read_json_object

if TYPE_CHECKING:
    from comfyui_server.server import PromptServer

MAX_CANCEL = 100


def _snapshot(server: "PromptServer", prompt_id: Any = None) -> tuple[list, list, dict]:
    queue = server.prompt_queue
    running, pending = queue.get_current_queue()
    history = queue.get_history(prompt_id) if prompt_id is not None else queue.get_history()
    return running, pending, history


def cancel(server: "PromptServer", prompt_id: str) -> bool:
    """Remove a pending job or interrupt the running one; False when it is neither."""
    transport = server.runtime.transport
    running, pending = server.prompt_queue.get_current_queue()
    if any(item[1] == prompt_id for item in pending):
        delete = getattr(transport, "delete", None)
        return delete(prompt_id) if delete is not None else server.prompt_queue.delete_queue_item(prompt_id)
    if any(item[1] == prompt_id for item in running):
        transport.interrupt(prompt_id)
        return True
    return False


def job_assets(job_id: str, outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each file a job produced, with a /view URL the frontend can show."""
    assets = []
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for key, items in node_outputs.items():
            if key == "animated" or not isinstance(items, list):
                continue
            for index, item in enumerate(items):
                if not isinstance(item, dict) or "filename" not in item:
                    continue
                query = {"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                         "type": item.get("type", "output")}
                assets.append({"id": f"{job_id}:{node_id}:{key}:{index}", "name": item["filename"],
                               "preview_url": "/api/view?" + urlencode(query),
                               "mime_type": mimetypes.guess_type(item["filename"])[0], "node_id": str(node_id),
                               "output_key": key, "output_index": index})
    return assets


def add_routes(routes: web.RouteTableDef, server: "PromptServer") -> None:
    @routes.get("/jobs")
    async def get_jobs(request: web.Request) -> web.Response:
        try:
            query = jobs.parse_job_query(request.query)
        except jobs.JobQueryError as error:
            return error_response(400, str(error))
        running, pending, history = _snapshot(server)
        found = jobs.list_jobs(running, pending, history, query["statuses"], query["workflow_id"], query["sort_by"],
                               query["sort_order"])
        offset, limit = query["offset"], query["limit"]
        page = found[offset:offset + limit] if limit is not None else found[offset:]
        return web.json_response({"jobs": page, "pagination": {
            # The frontend needs a number here even when no limit was asked for.
            "offset": offset, "limit": limit if limit is not None else len(page), "total": len(found),
            "has_more": offset + len(page) < len(found)}})

    @routes.post("/jobs/cancel")
    async def cancel_jobs(request: web.Request) -> web.Response:
        body = await read_json_object(request)
        job_ids = body.get("job_ids")
        if not isinstance(job_ids, list) or not 1 <= len(job_ids) <= MAX_CANCEL \
                or not all(isinstance(job_id, str) for job_id in job_ids):
            return error_response(400, f"job_ids must be a list of 1 to {MAX_CANCEL} job ids")
        return web.json_response({"cancelled": [job_id for job_id in job_ids if cancel(server, job_id)]})

    @routes.get("/jobs/{job_id}")
    async def get_job(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = jobs.find_job(job_id, *_snapshot(server, job_id))
        if job is None:
            return error_response(404, "Job not found")
        return web.json_response(job)

    @routes.post("/jobs/{job_id}/cancel")
    async def cancel_job(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if cancel(server, job_id):
            return web.json_response({"cancelled": [job_id]})
        if server.prompt_queue.get_history(job_id):
            return web.json_response({"cancelled": []})  # it finished first; nothing left to cancel
        return error_response(404, "Job not found")

    @routes.get("/jobs/{job_id}/assets")
    async def get_job_assets(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        history = server.prompt_queue.get_history(job_id)
        if job_id not in history:
            return error_response(404, "Job not found")
        try:
            limit = int(request.query.get("limit", 500))
            offset = max(int(request.query.get("offset", 0)), 0)
        except ValueError:
            return error_response(400, "limit and offset must be integers")
        assets = job_assets(job_id, history[job_id].get("outputs") or {})
        page = assets[offset:offset + max(limit, 0)]
        return web.json_response({"job_id": job_id, "assets": page, "pagination": {
            "offset": offset, "limit": limit, "total": len(assets), "has_more": offset + len(page) < len(assets)}})


__all__ = ["add_routes", "cancel", "job_assets"]

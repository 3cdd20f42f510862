"""Jobs: the queue and the history as the frontend's queue panel reads them (``/api/jobs``).

A job is one prompt: pending, in progress, or finished as completed, failed or cancelled. The
frontend validates every field strictly, so each job is built here with exactly its schema.
"""
from __future__ import annotations

import os
from typing import Any, Optional, TypedDict

from typing_extensions import NotRequired

PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "pending", "in_progress", "completed", "failed", "cancelled"
STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
SORT_FIELDS = ("created_at", "execution_duration")
PREVIEWABLE_MEDIA = frozenset({"images", "video", "audio"})
THREE_D_EXTENSIONS = frozenset({".obj", ".fbx", ".gltf", ".glb"})


class PreviewOutput(TypedDict, total=False):
    filename: str
    subfolder: str
    type: str
    nodeId: str
    mediaType: str


class Job(TypedDict):
    id: str
    status: str
    create_time: int
    priority: NotRequired[float]
    execution_start_time: NotRequired[int]
    execution_end_time: NotRequired[int]
    outputs_count: Optional[int]
    previewable_outputs_count: Optional[int]
    preview_output: NotRequired[PreviewOutput]
    execution_error: NotRequired[dict[str, Any]]
    workflow_id: NotRequired[str]
    # Only in a single job's detail:
    outputs: NotRequired[dict[str, Any]]
    execution_status: NotRequired[dict[str, Any]]
    workflow: NotRequired[dict[str, Any]]


class JobQueryError(ValueError):
    """A /api/jobs query parameter is out of range; the message says which."""


def _create_time(extra_data: dict[str, Any]) -> int:
    value = extra_data.get("create_time")
    return int(value) if isinstance(value, (int, float)) else 0


def _workflow_id(extra_data: dict[str, Any]) -> Optional[str]:
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow") if isinstance(
        extra_data.get("extra_pnginfo"), dict) else None
    value = workflow.get("id") if isinstance(workflow, dict) else None
    return str(value) if value is not None else None


def queued_job(item: list[Any], status: str) -> Job:
    """A job from a queue tuple ``[number, id, prompt, extra_data, outputs]``."""
    number, prompt_id, _prompt, extra_data, _outputs = item[:5]
    job: Job = {"id": prompt_id, "status": status, "create_time": _create_time(extra_data), "priority": number,
                "outputs_count": 0, "previewable_outputs_count": 0}
    workflow_id = _workflow_id(extra_data)
    if workflow_id is not None:
        job["workflow_id"] = workflow_id
    return job


def is_previewable(media_type: str, item: dict[str, Any]) -> bool:
    if media_type in PREVIEWABLE_MEDIA:
        return True
    mime = str(item.get("format") or "")
    if mime.startswith(("video/", "audio/")):
        return True
    return os.path.splitext(str(item.get("filename") or ""))[1].lower() in THREE_D_EXTENSIONS


def summarize_outputs(outputs: dict[str, Any]) -> tuple[int, int, Optional[PreviewOutput]]:
    """(output items, previewable items, the preview): the first previewable item, an output one first."""
    count = previewable = 0
    preview: Optional[PreviewOutput] = None
    fallback: Optional[PreviewOutput] = None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            # "animated" is a list of flags beside images, not outputs of its own.
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if not is_previewable(media_type, item):
                    continue
                previewable += 1
                candidate: PreviewOutput = {**item, "nodeId": str(node_id), "mediaType": media_type}
                if preview is None and item.get("type") == "output":
                    preview = candidate
                elif fallback is None:
                    fallback = candidate
    return count, previewable, preview or fallback


def _error_payload(data: dict[str, Any]) -> dict[str, Any]:
    # The frontend requires strings here even when the failure belongs to no node.
    return {**data, "node_id": str(data.get("node_id") or ""), "node_type": str(data.get("node_type") or ""),
            "exception_message": str(data.get("exception_message") or ""),
            "exception_type": str(data.get("exception_type") or ""),
            "traceback": [str(line) for line in data.get("traceback") or []]}


def history_job(prompt_id: str, entry: dict[str, Any], detail: bool = False) -> Job:
    """A job from a history entry; ``detail`` adds outputs, status and the workflow."""
    number, _id, prompt, extra_data, _outputs = entry["prompt"][:5]
    status_info = entry.get("status") or {}
    outputs = entry.get("outputs") or {}
    count, previewable, preview = summarize_outputs(outputs)
    job: Job = {"id": prompt_id, "status": COMPLETED, "create_time": _create_time(extra_data), "priority": number,
                "outputs_count": count, "previewable_outputs_count": previewable}
    interrupted = False
    for message in status_info.get("messages") or []:
        if not (isinstance(message, (list, tuple)) and len(message) >= 2 and isinstance(message[1], dict)):
            continue
        event, data = message[0], message[1]
        if event == "execution_start" and "timestamp" in data:
            job["execution_start_time"] = data["timestamp"]
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            if "timestamp" in data:
                job["execution_end_time"] = data["timestamp"]
            if event == "execution_error":
                job["execution_error"] = _error_payload(data)
            interrupted = interrupted or event == "execution_interrupted"
    if status_info.get("status_str") == "error":
        job["status"] = CANCELLED if interrupted else FAILED
    if preview is not None:
        job["preview_output"] = preview
    workflow_id = _workflow_id(extra_data)
    if workflow_id is not None:
        job["workflow_id"] = workflow_id
    if detail:
        job["outputs"] = outputs
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def _sort_key(sort_by: str):
    if sort_by == "execution_duration":
        def duration(job: Job) -> float:
            start, end = job.get("execution_start_time"), job.get("execution_end_time")
            return end - start if start and end else 0
        return duration
    return lambda job: job.get("create_time", 0)


def list_jobs(running: list[list[Any]], pending: list[list[Any]], history: dict[str, Any],
              statuses: Optional[list[str]] = None, workflow_id: Optional[str] = None,
              sort_by: str = "created_at", sort_order: str = "desc") -> list[Job]:
    """Every job matching the filters, sorted."""
    wanted = set(statuses or STATUSES)
    jobs: list[Job] = []
    if IN_PROGRESS in wanted:
        jobs.extend(queued_job(item, IN_PROGRESS) for item in running)
    if PENDING in wanted:
        jobs.extend(queued_job(item, PENDING) for item in pending)
    if wanted & {COMPLETED, FAILED, CANCELLED}:
        for prompt_id, entry in history.items():
            job = history_job(prompt_id, entry)
            if job["status"] in wanted:
                jobs.append(job)
    if workflow_id:
        jobs = [job for job in jobs if job.get("workflow_id") == workflow_id]
    return sorted(jobs, key=_sort_key(sort_by), reverse=sort_order == "desc")


def find_job(prompt_id: str, running: list[list[Any]], pending: list[list[Any]],
             history: dict[str, Any]) -> Optional[Job]:
    if prompt_id in history:
        return history_job(prompt_id, history[prompt_id], detail=True)
    for items, status in ((running, IN_PROGRESS), (pending, PENDING)):
        for item in items:
            if item[1] == prompt_id:
                return queued_job(item, status)
    return None


class JobQuery(TypedDict):
    statuses: Optional[list[str]]
    workflow_id: Optional[str]
    sort_by: str
    sort_order: str
    limit: Optional[int]
    offset: int


def parse_job_query(query: Any) -> JobQuery:
    """The /api/jobs query string, checked; raises ``JobQueryError`` naming the bad parameter."""
    statuses = None
    if query.get("status"):
        statuses = [status.strip().lower() for status in query["status"].split(",") if status.strip()]
        invalid = [status for status in statuses if status not in STATUSES]
        if invalid:
            raise JobQueryError(f"Invalid status value(s): {', '.join(invalid)}. Valid values: {', '.join(STATUSES)}")
    sort_by = query.get("sort_by", "created_at").lower()
    if sort_by not in SORT_FIELDS:
        raise JobQueryError("sort_by must be 'created_at' or 'execution_duration'")
    sort_order = query.get("sort_order", "desc").lower()
    if sort_order not in ("asc", "desc"):
        raise JobQueryError("sort_order must be 'asc' or 'desc'")
    limit = None
    if "limit" in query:
        try:
            limit = int(query["limit"])
        except ValueError:
            raise JobQueryError("limit must be an integer") from None
        if limit <= 0:
            raise JobQueryError("limit must be a positive integer")
    offset = 0
    if "offset" in query:
        try:
            offset = max(int(query["offset"]), 0)
        except ValueError:
            raise JobQueryError("offset must be an integer") from None
    return {"statuses": statuses, "workflow_id": query.get("workflow_id") or None, "sort_by": sort_by,
            "sort_order": sort_order, "limit": limit, "offset": offset}


__all__ = ["CANCELLED", "COMPLETED", "FAILED", "IN_PROGRESS", "PENDING", "STATUSES", "Job", "JobQuery",
           "JobQueryError", "find_job", "history_job", "list_jobs", "parse_job_query", "queued_job",
           "summarize_outputs"]

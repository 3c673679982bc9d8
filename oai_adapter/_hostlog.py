"""The host's narration: one record per step, never per token (HOST.md, "Observability").

Every record carries the standard fields of log-fields.md (`None` where they belong to a task
and there is none) plus `actor="adapter-host"`, `action`, `target` (the replica's engine and
version when known, else `"openai-http"`), `pool_id`, `replica_id` and `job_id`. Records go
through the library's logger, so redaction applies and nothing is written until the
application enables "oai_adapter". Actions and levels:

| action | level |
|---|---|
| bind, rebind, unbind (also when its drain is done) | INFO |
| route | DEBUG |
| failover, retry-budget | WARNING |
| breaker | WARNING when it opens, INFO for half-open and closed |
| readiness, cancel | INFO |
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeAlias

from ._log import ENGINE, TASK_FIELDS, log

__all__ = ["ACTOR", "Action", "Level", "narrate"]

ACTOR: Final = "adapter-host"

Action: TypeAlias = Literal[
    "bind",
    "rebind",
    "unbind",
    "route",
    "failover",
    "retry-budget",
    "breaker",
    "readiness",
    "cancel",
]
Level: TypeAlias = Literal["DEBUG", "INFO", "WARNING"]


def narrate(
    level: Level,
    action: Action,
    message: str,
    *,
    pool_id: str,
    replica_id: str | None = None,
    job_id: str | None = None,
    target: str | None = None,
    **fields: Any,
) -> None:
    """Write one narration record. `fields` may fill any standard field (model, api,
    session_id, correlation_id, attempt, error_kind, …) or add one."""
    record: dict[str, Any] = dict.fromkeys(TASK_FIELDS)
    record.update(engine=ENGINE, queue_position=None, predicted_start_ms=None)
    record.update(fields)
    record.update(
        actor=ACTOR,
        action=action,
        target=target or ENGINE,
        pool_id=pool_id,
        replica_id=replica_id,
        job_id=job_id,
    )
    # The message goes pre-formatted, fields through `bind` (see `_log.TaskLog._write`).
    log.bind(**record).opt(depth=1).log(level, message)

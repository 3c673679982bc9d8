"""oai_adapter — a trio-native adapter for OpenAI-compatible HTTP endpoints.

`submit` streams a completion as ordered events (`Started → Token* → Metrics? → End`, with
`ToolCallDelta` and `ReasoningDelta` among the Tokens when the model calls tools or reasons),
`cancel(task_id)` ends a running task, and `health`, `props` and `engine_version` describe the
upstream. See DESIGN.md for the contract; everything public is importable from here.
"""

from ._adapter import AdapterStatistics as AdapterStatistics
from ._adapter import OpenAIAdapter as OpenAIAdapter
from ._budget import RetryBudget as RetryBudget
from ._budget import RetryBudgetStatistics as RetryBudgetStatistics
from ._config import AdapterConfig as AdapterConfig
from ._config import RetryPolicy as RetryPolicy
from ._config import TaskRequest as TaskRequest
from ._config import Timeouts as Timeouts
from ._errors import ErrorInfo as ErrorInfo
from ._errors import ErrorKind as ErrorKind
from ._errors import WorkerError as WorkerError
from ._events import End as End
from ._events import EngineVersion as EngineVersion
from ._events import Event as Event
from ._events import HealthStatus as HealthStatus
from ._events import Metrics as Metrics
from ._events import ReasoningDelta as ReasoningDelta
from ._events import Started as Started
from ._events import Token as Token
from ._events import ToolCallDelta as ToolCallDelta
from ._events import WorkerProps as WorkerProps
from ._host import AdapterHost as AdapterHost
from ._hostpolicy import HostPolicy as HostPolicy
from ._hoststats import HostStatistics as HostStatistics
from ._hoststats import PoolCapabilities as PoolCapabilities
from ._hoststats import PoolHealth as PoolHealth
from ._hoststats import PoolStatistics as PoolStatistics
from ._hoststats import ReplicaStatistics as ReplicaStatistics
from ._hoststats import ReplicaStatus as ReplicaStatus
from ._redact import Secret as Secret
from ._stream import EventStream as EventStream
from ._stream import EventStreamStatistics as EventStreamStatistics

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "AdapterHost",
    "AdapterStatistics",
    "End",
    "EngineVersion",
    "ErrorInfo",
    "ErrorKind",
    "Event",
    "EventStream",
    "EventStreamStatistics",
    "HealthStatus",
    "HostPolicy",
    "HostStatistics",
    "Metrics",
    "OpenAIAdapter",
    "PoolCapabilities",
    "PoolHealth",
    "PoolStatistics",
    "ReasoningDelta",
    "ReplicaStatistics",
    "ReplicaStatus",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RetryPolicy",
    "Secret",
    "Started",
    "TaskRequest",
    "Timeouts",
    "Token",
    "ToolCallDelta",
    "WorkerError",
    "WorkerProps",
]

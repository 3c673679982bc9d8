"""An OpenAI-compatible upstream for tests and demos: a real server on loopback that streams
chat, completions and responses and plays scripted faults. One sans-IO `Responder` decides every
answer (a `Plan`); `FakeUpstream` plays it over HTTP/1.1 and `H2Upstream` over HTTP/2 (h2c or TLS
with ALPN, with a record of the RST_STREAM and GOAWAY frames it received)."""

from ._faults import Fault as Fault
from ._grammar import check_stream as check_stream
from ._grammar import stream_problem as stream_problem
from ._h2upstream import H2Upstream as H2Upstream
from ._h2upstream import RecordedFrame as RecordedFrame
from ._h2upstream import open_h2_upstream as open_h2_upstream
from ._responder import DEFAULT_TEXT as DEFAULT_TEXT
from ._responder import Plan as Plan
from ._responder import Responder as Responder
from ._script import Gate as Gate
from ._script import GoAway as GoAway
from ._script import Hang as Hang
from ._script import RecordedRequest as RecordedRequest
from ._script import Reply as Reply
from ._script import Reset as Reset
from ._script import ResetStream as ResetStream
from ._script import ResponsesShape as ResponsesShape
from ._script import ScriptedToolCall as ScriptedToolCall
from ._script import Send as Send
from ._script import Sleep as Sleep
from ._script import Step as Step
from ._script import Stream as Stream
from ._script import UpdateSettings as UpdateSettings
from ._script import chat_chunk as chat_chunk
from ._script import completion_chunk as completion_chunk
from ._script import render_chat_deltas as render_chat_deltas
from ._script import render_responses_stream as render_responses_stream
from ._script import render_stream as render_stream
from ._script import responses_event as responses_event
from ._script import split_words as split_words
from ._script import sse as sse
from ._upstream import FakeUpstream as FakeUpstream
from ._upstream import open_upstream as open_upstream
from ._upstream import serving as serving

__all__ = [
    "DEFAULT_TEXT",
    "FakeUpstream",
    "Fault",
    "Gate",
    "GoAway",
    "H2Upstream",
    "Hang",
    "Plan",
    "RecordedFrame",
    "RecordedRequest",
    "Reply",
    "Reset",
    "ResetStream",
    "Responder",
    "ResponsesShape",
    "ScriptedToolCall",
    "Send",
    "Sleep",
    "Step",
    "Stream",
    "UpdateSettings",
    "chat_chunk",
    "check_stream",
    "completion_chunk",
    "open_h2_upstream",
    "open_upstream",
    "render_chat_deltas",
    "render_responses_stream",
    "render_stream",
    "responses_event",
    "serving",
    "split_words",
    "sse",
    "stream_problem",
]

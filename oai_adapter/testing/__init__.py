"""An OpenAI-compatible upstream for tests and demos: a real server on loopback that streams
chat and completions and plays scripted faults. See `FakeUpstream`."""

from ._faults import Fault as Fault
from ._grammar import check_stream as check_stream
from ._script import Hang as Hang
from ._script import RecordedRequest as RecordedRequest
from ._script import Reply as Reply
from ._script import Reset as Reset
from ._script import Send as Send
from ._script import Sleep as Sleep
from ._script import Step as Step
from ._script import Stream as Stream
from ._script import chat_chunk as chat_chunk
from ._script import completion_chunk as completion_chunk
from ._script import render_stream as render_stream
from ._script import split_words as split_words
from ._script import sse as sse
from ._upstream import DEFAULT_TEXT as DEFAULT_TEXT
from ._upstream import FakeUpstream as FakeUpstream
from ._upstream import open_upstream as open_upstream

__all__ = [
    "DEFAULT_TEXT",
    "FakeUpstream",
    "Fault",
    "Hang",
    "RecordedRequest",
    "Reply",
    "Reset",
    "Send",
    "Sleep",
    "Step",
    "Stream",
    "chat_chunk",
    "check_stream",
    "completion_chunk",
    "open_upstream",
    "render_stream",
    "split_words",
    "sse",
]

"""The public face: everything DESIGN names is importable from `oai_adapter`, and `__all__`
is complete and sorted."""

import pytest

import oai_adapter
import oai_adapter.testing

DESIGN_NAMES = {
    "OpenAIAdapter",
    "AdapterConfig",
    "Timeouts",
    "RetryPolicy",
    "TaskRequest",
    "Started",
    "Token",
    "Metrics",
    "End",
    "ErrorInfo",
    "ErrorKind",
    "WorkerError",
    "HealthStatus",
    "WorkerProps",
    "EngineVersion",
}


@pytest.mark.req("OC-ADAPT-OAI-6000")
def test_design_names_are_exported() -> None:
    assert DESIGN_NAMES <= set(oai_adapter.__all__)
    for name in oai_adapter.__all__:
        assert getattr(oai_adapter, name) is not None


def test_all_is_sorted_and_complete() -> None:
    for module in (oai_adapter, oai_adapter.testing):
        assert list(module.__all__) == sorted(module.__all__)
        public = {n for n in vars(module) if not n.startswith("_")} - {"annotations"}
        modules = {n for n in public if type(getattr(module, n)).__name__ == "module"}
        assert public - modules - {"__version__"} <= set(module.__all__) | {"__version__"}

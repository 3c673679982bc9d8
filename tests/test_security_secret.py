"""The API key's wrapper and the config that holds it (OC-ADAPT-OAI-6020): every way of turning
them into text or bytes shows `****<fp6>` or refuses, and never the key."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pickle
from typing import Any

import msgspec
import pytest
from loguru import logger

from oai_adapter import AdapterConfig, OpenAIAdapter, Secret
from oai_adapter._redact import fingerprint

KEY = "sk-proj-Zq8Xr4Lm2Np7Vt1Wc5Yb9Hd3Kf6Gs0Ja"
FP = "****" + hashlib.sha256(KEY.encode()).hexdigest()[:6]


def make(**overrides: Any) -> AdapterConfig:
    values: dict[str, Any] = {
        "base_url": "http://127.0.0.1:9/v1",
        "model": "m",
        "api_key": KEY,
    }
    values.update(overrides)
    return AdapterConfig(**values)


def test_fingerprint_is_four_stars_and_first_six_hex_of_sha256() -> None:
    assert fingerprint(KEY) == FP
    assert Secret(KEY).fingerprint == FP


@pytest.mark.parametrize(
    "render",
    [
        repr,
        str,
        lambda s: f"{s}",
        lambda s: f"{s!r}",
        lambda s: f"{s:>40}",
        lambda s: "%s" % s,  # noqa: UP031 - the %-formatting path is the point
        lambda s: "%r" % s,  # noqa: UP031
        lambda s: "{}".format(s),  # noqa: UP032
        lambda s: json.dumps({"k": s}, default=str),
        lambda s: msgspec.json.encode(s, enc_hook=Secret.enc_hook).decode(),
        lambda s: msgspec.msgpack.decode(msgspec.msgpack.encode(s, enc_hook=Secret.enc_hook)),
    ],
    ids=[
        "repr",
        "str",
        "fstring",
        "fstring_r",
        "format_spec",
        "percent_s",
        "percent_r",
        "str_format",
        "json_default_str",
        "msgspec_json_enc_hook",
        "msgspec_msgpack_enc_hook",
    ],
)
@pytest.mark.req("OC-ADAPT-OAI-6020")
def test_every_rendering_of_a_secret_is_its_fingerprint(render: Any) -> None:
    out = render(Secret(KEY))
    assert KEY not in out
    assert FP in out


def test_msgspec_without_the_hook_refuses_a_secret_without_naming_the_key() -> None:
    for encode in (msgspec.json.encode, msgspec.msgpack.encode):
        with pytest.raises(TypeError) as info:
            encode({"api_key": Secret(KEY)})
        assert KEY not in str(info.value)
        assert "Secret" in str(info.value)


def test_msgspec_encodes_a_whole_config_with_the_hook() -> None:
    config = make(headers={"x-tenant": "t1"})
    raw = msgspec.json.encode(config, enc_hook=Secret.enc_hook)
    assert KEY.encode() not in raw
    decoded = msgspec.json.decode(raw)
    assert decoded["api_key"] == FP
    assert decoded["headers"] == {"x-tenant": "t1"}


def test_loguru_formats_a_secret_in_message_args_and_extra_as_its_fingerprint() -> None:
    # The root logger, not the library's patched one: the wrapper alone must be enough.
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message} {extra[key]}", level="TRACE", colorize=False)
    try:
        logger.bind(key=Secret(KEY)).info("key={}", Secret(KEY))
    finally:
        logger.remove(sink)
    assert lines
    assert KEY not in lines[0]
    assert lines[0].count(FP) == 2


@pytest.mark.req("OC-ADAPT-OAI-6020")
def test_pickling_drops_the_key_and_keeps_the_fingerprint() -> None:
    raw = pickle.dumps(Secret(KEY))
    assert KEY.encode() not in raw
    back = pickle.loads(raw)
    assert back.fingerprint == FP
    assert back.dropped
    with pytest.raises(ValueError, match="dropped"):
        back.reveal()


def test_pickled_config_holds_no_key_and_can_be_given_it_again() -> None:
    config = make()
    raw = pickle.dumps(config)
    assert KEY.encode() not in raw
    back = pickle.loads(raw)
    assert repr(back.api_key) == FP
    assert KEY not in repr(back)
    again = dataclasses.replace(back, api_key=KEY)
    assert again.api_key is not None
    assert again.api_key.reveal() == KEY


async def test_opening_an_adapter_whose_key_was_dropped_raises_value_error() -> None:
    back = pickle.loads(pickle.dumps(make()))
    with pytest.raises(ValueError, match="dropped when the config was pickled") as info:
        async with OpenAIAdapter(back):
            pass  # pragma: no cover
    assert KEY not in str(info.value)
    assert FP in str(info.value)


def test_copies_share_the_secret_and_equality_compares_values() -> None:
    secret = Secret(KEY)
    assert copy.copy(secret) is secret
    assert copy.deepcopy(secret) is secret
    assert secret == Secret(KEY)
    assert secret != Secret(KEY + "x")
    assert hash(secret) == hash(Secret(KEY))
    dropped = pickle.loads(pickle.dumps(secret))
    assert dropped != secret  # a dropped key equals nothing but itself
    assert dropped == dropped


def test_config_repr_asdict_and_str_never_show_the_key() -> None:
    config = make()
    assert KEY not in repr(config)
    assert FP in repr(config)
    assert KEY not in str(config)
    assert KEY not in json.dumps(dataclasses.asdict(config), default=str)
    assert config.api_key is not None
    assert config.api_key.reveal() == KEY  # the value is kept, only hidden


def test_config_repr_hides_a_proxy_password() -> None:
    config = make(proxy="http://proxyuser:Pr0xyPa55word@127.0.0.1:3128")
    assert "Pr0xyPa55word" not in repr(config)
    assert "proxyuser" in repr(config)
    assert config.proxy is not None
    assert "Pr0xyPa55word" in config.proxy


@pytest.mark.parametrize(
    "base_url",
    [
        "http://user:pass@127.0.0.1:8080/v1",
        "https://sk-abcdefghijklmnop@api.example.com/v1",
        "https://user@api.example.com/v1",
    ],
)
def test_base_url_with_credentials_is_a_value_error_that_does_not_echo_them(
    base_url: str,
) -> None:
    with pytest.raises(ValueError, match="credentials") as info:
        make(base_url=base_url)
    for secret in ("pass", "sk-abcdefghijklmnop"):
        assert secret not in str(info.value)


@pytest.mark.parametrize(
    "base_url",
    ["ftp://example.com/v1", "file:///etc/passwd", "ws://example.com/v1", "example.com/v1"],
)
def test_base_url_scheme_other_than_http_or_https_is_a_value_error(base_url: str) -> None:
    with pytest.raises(ValueError, match=r"AdapterConfig\.base_url"):
        make(base_url=base_url)


@pytest.mark.parametrize("name", ["x-api-key", "api-key", "Proxy-Authorization", "Cookie"])
def test_credential_headers_are_refused_in_favour_of_api_key(name: str) -> None:
    with pytest.raises(ValueError, match="credential") as info:
        make(headers={name: KEY})
    assert KEY not in str(info.value)


def test_authorization_header_is_reserved() -> None:
    with pytest.raises(ValueError, match="set by the adapter"):
        make(headers={"Authorization": f"Bearer {KEY}"})


def test_api_key_with_whitespace_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="whitespace") as info:
        make(api_key=" " + KEY)
    assert KEY not in str(info.value)


def test_from_env_wraps_the_key_and_reads_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    config = AdapterConfig.from_env(model="m")
    assert isinstance(config.api_key, Secret)
    assert config.proxy is None
    assert KEY not in repr(config)


def test_ca_bundle_that_is_not_pem_is_a_value_error(tmp_path: Any) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match="ca_bundle"):
        make(ca_bundle=str(bad))


def test_allowed_hosts_must_hold_the_base_url_host_and_only_strings() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        make(allowed_hosts={"example.com"})
    with pytest.raises(ValueError, match="must be str"):
        make(allowed_hosts=[1])
    assert make().allowed_hosts == frozenset({"127.0.0.1"})


async def test_pickling_drops_the_proxy_password_and_an_adapter_refuses_to_open_with_it() -> None:
    config = make(proxy="http://proxyuser:Pr0xyPa55word@127.0.0.1:3128")
    data = pickle.dumps(config)
    assert b"Pr0xyPa55word" not in data
    back = pickle.loads(data)
    assert back.proxy == "http://proxyuser:" + fingerprint("Pr0xyPa55word") + "@127.0.0.1:3128"
    with pytest.raises(ValueError, match=r"AdapterConfig\.proxy: its password was dropped"):
        async with OpenAIAdapter(dataclasses.replace(back, api_key=KEY)):
            pass  # pragma: no cover
    again = dataclasses.replace(back, api_key=KEY, proxy=config.proxy)
    assert again == config
    async with OpenAIAdapter(again):
        pass  # opens: nothing is missing any more


def test_a_pickled_proxy_without_a_password_is_kept_as_it_was() -> None:
    config = make(proxy="http://127.0.0.1:3128")
    assert pickle.loads(pickle.dumps(config)).proxy == config.proxy

"""String options: one ``Literal`` type each, checked in one place wherever the value comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from temseg.config import ConfigError, Settings, load_settings
from temseg.engine import BACKENDS
from temseg.options import Backend, HostPriority, MaskEncoding, choices
from temseg.stream.protocol import ENCODINGS


def test_the_allowed_values_come_from_the_types() -> None:
    assert BACKENDS == choices(Backend) == ("auto", "torch", "onnxruntime", "tensorrt")
    assert ENCODINGS == choices(MaskEncoding) == ("raw", "packbits")
    assert choices(HostPriority) == ("auto", "normal", "idle")


@pytest.mark.parametrize(
    ("name", "value"),
    [("backend", "cudnn"), ("mask_encoding", "zip"), ("host_priority", "low")],
)
def test_an_unknown_value_is_refused_from_code_file_environment_and_flags(
    tmp_path: Path, name: str, value: str
) -> None:
    expected = f"{name} '{value}': choose from "
    with pytest.raises(ConfigError, match=expected):
        Settings(**{name: value})
    config = tmp_path / "temseg.toml"
    config.write_text(f'{name} = "{value}"\n')
    with pytest.raises(ConfigError, match=expected):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match=expected):
        load_settings(None, environ={f"TEMSEG_{name.upper()}": value})
    with pytest.raises(ConfigError, match=expected):
        load_settings(None, {name: value}, environ={})


def test_known_values_pass_from_every_source(tmp_path: Path) -> None:
    config = tmp_path / "temseg.toml"
    config.write_text('backend = "torch"\n')
    settings = load_settings(
        config, {"host_priority": "idle"}, environ={"TEMSEG_MASK_ENCODING": "packbits"}
    )
    assert (settings.backend, settings.mask_encoding, settings.host_priority) == (
        "torch",
        "packbits",
        "idle",
    )
    assert load_settings(None, environ={"TEMSEG_STOP_TIMEOUT_S": "2.5"}).stop_timeout_s == 2.5

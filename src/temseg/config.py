"""One settings object, read from (later wins): defaults, a TOML file,
``TEMSEG_*`` environment variables, command-line flags.

An unknown key in the file is an error naming the file (with the closest
setting as a suggestion), as is a value of the wrong type; an unknown
``TEMSEG_*`` variable is logged at WARNING and ignored.

TOML keys are the field names below (top level or under a ``[temseg]``
table); environment variables are ``TEMSEG_`` + the upper-case field name,
e.g. ``TEMSEG_PUBLISH=tcp://127.0.0.1:6000``. List fields take comma-separated
values in the environment. ``folder_rules`` maps glob patterns relative to the
watched folder to materials, e.g. ``{"CdSe/**" = "CdSe"}`` (TOML only).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_origin, get_type_hints

from temseg.options import Backend, HostPriority, MaskEncoding, check_choice

ENV_PREFIX = "TEMSEG_"
DEFAULT_CONFIG_PATH = Path("/etc/temseg/temseg.toml")

OTHER_VARIABLES = ("TEMSEG_CONFIG", "TEMSEG_FAULT_POINT", "TEMSEG_FAULTS_FULL")
"""``TEMSEG_*`` variables that are not settings (config file, test hooks)."""

ENDPOINT_SCHEMES = ("tcp", "ipc", "inproc", "ws", "wss", "pgm", "epgm", "tipc", "vmci")

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration file, variable or flag has an invalid value."""


@dataclass
class Settings:
    """Everything the daemon and the offline commands can be configured with."""

    watch: Path | None = None
    db: str = "sqlite:///temseg.db"
    instrument: str | None = None  # microscope name recorded with every frame (one per daemon)
    publish: str = "tcp://127.0.0.1:5557"
    material: str = "Au"
    model: str | None = None  # bundle directory; None = active model in db, else the bundled one
    backend: Backend = "auto"
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU inference threads; 0 = all cores
    polling: bool = False
    poll_interval_s: float = 1.0
    stable_s: float = 1.0  # polling: size and mtime unchanged this long = complete
    # the frame files temseg.frames reads; a TIA .emi is the metadata half of a .ser
    patterns: list[str] = field(
        default_factory=lambda: [
            "*.tif",
            "*.tiff",
            "*.mrc",
            "*.mrcs",
            "*.emd",
            "*.dm3",
            "*.dm4",
            "*.ser",
        ]
    )
    recursive: bool = True
    follow_symlinks: bool = False
    masks: Path | None = None  # optional output folder for mask TIFFs
    folder_rules: dict[str, str] = field(default_factory=dict)
    #: Equivalent diameter (nm) below which a component of the mask is not counted as a
    #: particle (it stays in the mask); needs the frame's pixel size; 0 counts everything.
    min_particle_nm: float = 1.0
    send_hwm: int = 100
    max_subscribers: int = 256  # stream connections kept at once; more are closed on arrival
    send_probability: bool = False
    mask_encoding: MaskEncoding = "raw"
    curve_keys: Path | None = None
    #: Longest side (pixels) of a downsampled 8-bit preview of the frame put in each mask
    #: message's header (``docs/protocol.md``), for viewers; 0 sends none.
    send_preview_px: int = 0
    engine_cache: Path | None = None
    tile: int = 0  # pixels; larger frames are tiled; 0 = 2048 on CPU, 4096 on a GPU
    tile_overlap: int = 64  # pixels
    queue_size: int = 16  # frames waiting for inference
    batch_size: int = 4  # GPU: frames that arrived together are batched up to this many; CPU: 1
    compile: bool = False  # torch on CUDA: torch.compile at start, one frame per engine call
    warmup_shapes: list[str] = field(default_factory=list)  # "HxW" frame shapes run before READY
    readers: int = 0  # threads that hash and decode frames; 0 = from the number of cores
    segmenters: int = 0  # threads that threshold, measure particles, write masks; 0 = from cores
    host_priority: HostPriority = "auto"  # readers, segmenters, recorder (see docs/daemon.md)
    segmenter_processes: bool = False  # measure particles in worker processes (see docs)
    #: Seconds ``stop()`` keeps retrying a locked database before it gives up: the frames
    #: not recorded by then stay unrecorded (the next start's backlog finds them) and the
    #: daemon exits non-zero. Keep it below systemd's ``TimeoutStopSec``.
    stop_timeout_s: float = 60.0
    log_level: str = "INFO"
    #: HOST:PORT of the HTTP endpoint with /metrics (Prometheus), /healthz and /readyz;
    #: "off" serves none. Port 0 picks a free one (``Daemon.metrics_url``).
    metrics: str = "127.0.0.1:9557"
    #: Seconds a frame may go without reaching its next stage before the daemon counts as
    #: wedged: /healthz fails and the systemd watchdog ping stops. Keep it above the longest
    #: legitimate wait (a full frame queue times the slowest frame's inference).
    stuck_after_s: float = 120.0
    max_file_bytes: int = 2 * 1024**3  # larger frame files get a failed row, unread
    max_pixels: int = 2**28  # per frame, checked on the file's grid and on the model's
    max_decoded_bytes: int = 4 * 1024**3  # decoded pixels held by all readers at once
    read_timeout_s: float = 60.0  # one file's read; a slower one gets a failed row
    max_depth: int = 32  # folder levels below 'watch' where frames are looked for

    def __post_init__(self) -> None:
        check_options(self)


def check_options(settings: Settings) -> None:
    """Raise :class:`ConfigError` for a string option outside its ``Literal`` type's values.

    The one check of the string options: called when a :class:`Settings` is made and
    for every value read from a file, the environment or a flag.
    """
    for name, kind in get_type_hints(Settings).items():
        if get_origin(kind) is Literal:
            check_choice(name, getattr(settings, name), kind, ConfigError)


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` is not a ZeroMQ endpoint (with the likely fix), or None if it is one."""
    match = re.fullmatch(r"([a-z]+)://(.+)", url.strip())
    if match is not None and match.group(1) in ENDPOINT_SCHEMES:
        return None
    if match is not None:
        return f"{url!r} has an unknown scheme; use tcp://HOST:PORT or ipc:///PATH"
    port = re.fullmatch(r"(?:([\w.*-]+|\[[0-9a-fA-F:]+\]):)?(\d{1,5})", url.strip())
    if port is not None:
        host = port.group(1) or "127.0.0.1"
        return f"{url!r} is not a ZeroMQ endpoint; did you mean tcp://{host}:{port.group(2)}?"
    return f"{url!r} is not a ZeroMQ endpoint; use tcp://HOST:PORT or ipc:///PATH"


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    text = str(kind)
    if raw is None:
        return None
    if get_origin(kind) is Literal:  # checked by check_options
        return str(raw)
    try:
        if "dict" in text:
            if not isinstance(raw, Mapping):
                raise TypeError(f"expected a table, got {raw!r}")
            return {str(k): str(v) for k, v in raw.items()}
        if "list" in text:
            if isinstance(raw, str):
                return [part.strip() for part in raw.split(",") if part.strip()]
            if not isinstance(raw, list | tuple):
                raise TypeError(f"expected a list of strings, got {raw!r}")
            return [str(item) for item in raw]
        if "bool" in text:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if isinstance(raw, Mapping | list):
            raise TypeError(f"expected a single value, got {raw!r}")
        if "Path" in text:
            return Path(str(raw)).expanduser()
        if "float" in text:
            return float(raw)
        if "int" in text:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(f"expected a whole number, got {raw!r}")
            return int(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: {exc}") from exc


def _apply(settings: Settings, values: Mapping[str, Any], origin: str) -> None:
    hints = get_type_hints(Settings)
    for key, raw in values.items():
        name = key.replace("-", "_")
        if name not in hints:
            raise ConfigError(f"{origin}: unknown setting {key!r}{_suggest(name, list(hints))}")
        try:
            setattr(settings, name, _coerce(name, raw, hints[name]))
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
    try:
        check_options(settings)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _warn_unknown_variables(env: Mapping[str, str]) -> None:
    names = [ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)]
    known = {*names, *OTHER_VARIABLES}
    for variable in sorted(env):
        if variable.startswith(ENV_PREFIX) and variable not in known:
            logger.warning(
                "ignoring environment variable %s: not a temseg setting%s",
                variable,
                _suggest(variable, names),
            )


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from defaults < TOML file < environment < ``overrides`` (CLI flags).

    ``config_file`` None reads ``TEMSEG_CONFIG`` if set, else
    ``/etc/temseg/temseg.toml`` if it exists. ``overrides`` entries that are
    None are ignored, so unset CLI flags do not clobber the file.
    """
    env = os.environ if environ is None else environ
    settings = Settings()
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        table = data.get("temseg", data)
        if not isinstance(table, Mapping):
            raise ConfigError(f"config file {path}: [temseg] must be a table")
        _apply(settings, table, f"config file {path}")
    _warn_unknown_variables(env)
    fields = {f.name for f in dataclasses.fields(Settings)}
    from_env = {
        name: env[ENV_PREFIX + name.upper()]
        for name in fields
        if ENV_PREFIX + name.upper() in env and name != "folder_rules"
    }
    _apply(settings, from_env, "environment")
    _apply(settings, {k: v for k, v in (overrides or {}).items() if v is not None}, "flags")
    problem = endpoint_problem(settings.publish)
    if problem is not None:
        raise ConfigError(f"setting 'publish': {problem}")
    return settings

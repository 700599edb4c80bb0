"""Configuration: a TOML file with ``DICOMNODE_*`` environment overrides.

Every value is validated when the node starts; a bad value raises
:class:`~dicomnode.errors.ConfigError` naming the key, e.g.
``node.port: must be an integer from 0 to 65535, got 'abc'``.

Environment overrides use a double underscore between the section and the
key: ``DICOMNODE_NODE__PORT=11113``, ``DICOMNODE_SERIES__QUIET_SECONDS=5``.
Their values are read as TOML when they parse (numbers, booleans, arrays)
and as plain strings otherwise.  ``DICOMNODE_CONFIG`` names the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from dicomnode.config.peers import Destination, TLSConfig, WebTLSConfig
from dicomnode.config.notify import Notify, parse_notify
from dicomnode.config.sources import Source, parse_sources
from dicomnode.config.peers import parse_destinations as _parse_destinations
from dicomnode.config.peers import parse_tls as _parse_tls
from dicomnode.config.peers import parse_web_tls as _web_tls
from dicomnode.config.values import ae as _ae
from dicomnode.config.values import boolean as _bool
from dicomnode.config.values import check_keys as _check_keys
from dicomnode.config.values import choice as _choice
from dicomnode.config.values import header_name as _header_name
from dicomnode.config.values import host_names as _host_names
from dicomnode.config.values import hosts as _hosts
from dicomnode.config.values import integer as _int
from dicomnode.config.values import number as _num
from dicomnode.config.values import str_list as _str_list
from dicomnode.config.values import string as _str
from dicomnode.config.values import table as _table
from dicomnode.errors import ConfigError
from dicomnode.routing import Rule, RoutingConfig, parse_routing, parse_rules
from dicomnode.selection import SelectionConfig, parse_selection

ENV_PREFIX = "DICOMNODE_"
_ENV_SECTIONS = ("node", "series", "worker", "outputs", "delivery", "web", "retention")
_T = TypeVar("_T")
DEFAULT_CONFIG = Path("config/dicomnode.toml")


@dataclass(frozen=True)
class NodeConfig:
    """The ``[node]`` section: identity, listener and storage."""

    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    storage_dir: Path = Path("storage")
    database_url: str = "sqlite:///storage/dicomnode.db"
    sqlite_synchronous: str = "FULL"
    max_associations: int = 16
    max_pdu_size: int = 1048576
    min_free_mb: int = 1024
    allowed_calling_aes: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    require_called_ae: bool = True
    network_timeout: float = 60.0
    tls: TLSConfig | None = None
    max_connections_per_host: int = 8  # connections (and associations) one address may hold at once
    pdu_seconds: float = 30.0  # once a PDU's first byte arrives, the rest must follow within this
    max_instance_mb: int = 1024  # one C-STORE dataset; larger ones are refused (0xA700) without being held
    audit_log: str = "audit.log"  # JSON lines under storage_dir (or an absolute path); "" turns it off
    non_image_objects: str = "drop"  # dose SRs, dose screens, KOS, PR, PDF, SEG: "drop" or "store" (under other/)

    @property
    def incoming_dir(self) -> Path:
        """Where received instances live: ``<storage_dir>/incoming/<study>/<series>/<sop>.dcm``."""
        return self.storage_dir / "incoming"

    @property
    def quarantine_dir(self) -> Path:
        """Where the files of failed series are moved (never deleted)."""
        return self.storage_dir / "quarantine"

    @property
    def audit_path(self) -> Path | None:
        """The audit log file, or ``None`` when it is off."""
        return self.storage_dir / self.audit_log if self.audit_log else None

    @property
    def other_dir(self) -> Path:
        """Where non-image objects go when they are kept: ``<storage_dir>/other/<study>/<series>/<sop>.dcm``."""
        return self.storage_dir / "other"

    @property
    def outputs_dir(self) -> Path:
        """Where job outputs are written: ``<storage_dir>/outputs/<job id>/``."""
        return self.storage_dir / "outputs"


@dataclass(frozen=True)
class SeriesConfig:
    """The ``[series]`` section: when a series counts as complete."""

    quiet_seconds: float = 10.0
    incomplete_timeout_seconds: float = 300.0
    complete_on_release: bool = True
    gap_factor: float = 1.5
    check_interval_seconds: float = 0.5
    process_incomplete: bool = False  # run models on a series that completed with instances missing


@dataclass(frozen=True)
class WorkerConfig:
    """The ``[worker]`` section: running jobs (inside ``serve``, or ``dicomnode worker``)."""

    enabled: bool = True  # run jobs inside ``dicomnode serve``
    threads: int = 1  # jobs run at the same time in one process
    device: str = "auto"  # auto | cpu | cuda
    lease_seconds: float = 120.0  # a running job whose heartbeat is older is reclaimed
    poll_seconds: float = 1.0
    max_job_attempts: int = 3  # a job that kills its worker this often fails instead
    models: tuple[str, ...] = ()  # bundle names or folders; empty: every shipped bundle
    models_dir: str = "models"  # where `dicomnode models import` installs models (under node.storage_dir unless absolute)
    gpu_concurrency: int = 1  # model runs on the GPU at once (per process)
    gpu_memory_mb: int = 0  # their declared memory (bundle inference.gpu_memory_mb) must fit this; 0: no limit


@dataclass(frozen=True)
class OutputsConfig:
    """The ``[outputs]`` section: which DICOM objects a job writes, and their series."""

    seg: bool = True
    sr: bool = True
    preview: bool = True
    kos: bool = True  # a Key Object Selection that flags each finding's source slice
    fractional: bool = False  # FRACTIONAL instead of BINARY segmentations
    max_key_images: int = 6  # one key image per finding, largest first, up to this many
    seg_series_number: int = 9001
    sr_series_number: int = 9002
    preview_series_number: int = 9003
    kos_series_number: int = 9004
    number_by_source: bool = True  # each source series gets its own block: base + 10 x its SeriesNumber
    series_description_prefix: str = "AI"
    multi_model_seg: str = "separate"  # several segmentation models on a series: a SEG each (separate) or one (merged)


@dataclass(frozen=True)
class DeliveryConfig:
    """The ``[delivery]`` section: sending results, retries and Storage Commitment."""

    max_attempts: int = 8
    backoff_seconds: float = 10.0  # first retry delay; doubles each attempt
    backoff_max_seconds: float = 900.0
    commitment_timeout_seconds: float = 300.0  # re-send when no commitment report came by then
    report_wait_seconds: float = 5.0  # how long to wait for the report on the delivery's own association
    network_timeout: float = 60.0
    poll_seconds: float = 1.0


@dataclass(frozen=True)
class RetentionConfig:
    """The ``[retention]`` section: when the files of delivered series are removed."""

    enabled: bool = True
    keep_days: float = 30.0  # purge delivered series received longer ago than this
    min_free_percent: float = 10.0  # below this much free disk, purge the oldest delivered series first
    interval_seconds: float = 600.0
    quarantine_days: float = 90.0  # held quarantine entries older than this are purged (their files deleted)


@dataclass(frozen=True)
class WebConfig:
    """The ``[web]`` section: status page, JSON API, /metrics and /healthz, and who may see them."""

    enabled: bool = True
    host: str = "127.0.0.1"  # keep it on an internal interface
    port: int = 8080  # 0: let the OS choose
    users_file: str = "web-users.json"  # under node.storage_dir (or an absolute path), mode 0600
    trusted_hosts: tuple[str, ...] = ()  # Host headers served; empty: localhost, 127.0.0.1, ::1 and web.host
    trusted_proxies: tuple[str, ...] = ()  # addresses of an authenticating reverse proxy
    trusted_proxy_header: str = ""  # e.g. "X-Remote-User", believed only from trusted_proxies
    plain_http_login_from: tuple[str, ...] = ()  # networks that may send passwords without TLS, besides loopback
    api_docs: bool = False  # /api/docs and /api/openapi.json, to logged-in users
    session_idle_minutes: float = 30.0
    session_max_hours: float = 12.0
    login_max_failures: int = 5  # per client address within login_window_seconds; then 429
    login_window_seconds: float = 300.0
    tls: WebTLSConfig | None = None
    stow_max_mb: int = 4096  # one STOW-RS request body (POST /dicom-web/studies); each instance is bounded by node.max_instance_mb

    def __post_init__(self) -> None:
        if self.trusted_proxy_header and not self.trusted_proxies:
            raise ConfigError("web.trusted_proxies: required when web.trusted_proxy_header is set (who may send it)")

    @property
    def host_names(self) -> tuple[str, ...]:
        """The Host header names served: ``trusted_hosts``, or loopback and ``host`` when it is not a wildcard."""
        if self.trusted_hosts:
            return self.trusted_hosts
        return ("localhost", "127.0.0.1", "::1") + (() if self.host in ("0.0.0.0", "::", "127.0.0.1") else (self.host.lower(),))


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    node: NodeConfig = field(default_factory=NodeConfig)
    series: SeriesConfig = field(default_factory=SeriesConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    web: WebConfig = field(default_factory=WebConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    destinations: tuple[Destination, ...] = ()
    sources: tuple[Source, ...] = ()  # PACS to query and retrieve from (dicomnode fetch)
    notify: tuple[Notify, ...] = ()  # who hears that a job is done or failed (webhook, HL7 ORU)
    rules: tuple[Rule, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    log_level: str = "INFO"
    log_format: str = "text"  # text | json (one object per line, for log collectors)
    source: Path | None = None

    @property
    def models_dir(self) -> Path:
        """Where installed models live: ``worker.models_dir``, under ``node.storage_dir`` unless absolute."""
        d = Path(self.worker.models_dir)
        return d if d.is_absolute() else self.node.storage_dir / d

    def known_ae_titles(self) -> frozenset[str]:
        """Every AE title the configuration names: allowed callers, destinations, rules and TLS subjects."""
        titles = set(self.node.allowed_calling_aes) | {d.ae_title for d in self.destinations if d.ae_title}
        titles |= {s.ae_title for s in self.sources}
        titles |= {ae for r in self.rules for ae in r.calling_ae}
        if self.node.tls is not None:
            titles |= {ae for aes in self.node.tls.allowed_subjects.values() for ae in aes}
        return frozenset(a.strip() for a in titles)

    def source_named(self, name: str) -> Source:
        """The source called ``name``.

        Raises
        ------
        ConfigError
            There is none; the message lists the configured names.
        """
        return _named(self.sources, name, "sources", "source")

    def destination(self, name: str) -> Destination:
        """The destination called ``name``.

        Raises
        ------
        ConfigError
            There is none; the message lists the configured names.
        """
        return _named(self.destinations, name, "destinations", "destination")


_Named = TypeVar("_Named", Source, Destination)


def _named(items: tuple[_Named, ...], name: str, section: str, what: str) -> _Named:
    for item in items:
        if item.name == name:
            return item
    known = ", ".join(i.name for i in items) or "none"
    raise ConfigError(f"{section}: no {what} named {name!r} (configured: {known}; add a [[{section}]] entry)")


def _parse_node(data: Mapping[str, Any]) -> NodeConfig:
    d = NodeConfig()
    _check_keys("node", data, set(NodeConfig.__dataclass_fields__))
    sync = str(data.get("sqlite_synchronous", d.sqlite_synchronous)).upper()
    if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError(f"node.sqlite_synchronous: must be OFF, NORMAL, FULL or EXTRA, got {sync!r}")
    url = _str("node.database_url", data.get("database_url", d.database_url))
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
        raise ConfigError(f"node.database_url: must be a sqlite:/// or postgresql:// URL, got {url!r}")
    return NodeConfig(
        ae_title=_ae("node.ae_title", data.get("ae_title", d.ae_title)),
        host=_str("node.host", data.get("host", d.host)),
        port=_int("node.port", data.get("port", d.port), 0, 65535),
        storage_dir=Path(_str("node.storage_dir", data.get("storage_dir", str(d.storage_dir)))),
        database_url=url,
        sqlite_synchronous=sync,
        max_associations=_int("node.max_associations", data.get("max_associations", d.max_associations), 1, 1000),
        max_pdu_size=_int("node.max_pdu_size", data.get("max_pdu_size", d.max_pdu_size), 4096, 64 * 2**20),
        min_free_mb=_int("node.min_free_mb", data.get("min_free_mb", d.min_free_mb), 0, 2**40),
        allowed_calling_aes=tuple(
            _ae("node.allowed_calling_aes", a)
            for a in _str_list("node.allowed_calling_aes", data.get("allowed_calling_aes", []))
        ),
        allowed_hosts=_hosts("node.allowed_hosts", data.get("allowed_hosts", [])),
        require_called_ae=_bool("node.require_called_ae", data.get("require_called_ae", d.require_called_ae)),
        network_timeout=_num("node.network_timeout", data.get("network_timeout", d.network_timeout), 1),
        tls=_parse_tls(data.get("tls")),
        max_connections_per_host=_int(
            "node.max_connections_per_host", data.get("max_connections_per_host", d.max_connections_per_host), 1, 1000
        ),
        pdu_seconds=_num("node.pdu_seconds", data.get("pdu_seconds", d.pdu_seconds), 1, 3600),
        max_instance_mb=_int("node.max_instance_mb", data.get("max_instance_mb", d.max_instance_mb), 1, 64 * 1024),
        audit_log=str(data.get("audit_log", d.audit_log)),
        non_image_objects=_choice("drop", "store")("node.non_image_objects", data.get("non_image_objects", d.non_image_objects)),
    )


def _parse_series(data: Mapping[str, Any]) -> SeriesConfig:
    d = SeriesConfig()
    _check_keys("series", data, set(SeriesConfig.__dataclass_fields__))
    quiet = _num("series.quiet_seconds", data.get("quiet_seconds", d.quiet_seconds), 0.1)
    timeout = _num(
        "series.incomplete_timeout_seconds",
        data.get("incomplete_timeout_seconds", max(d.incomplete_timeout_seconds, quiet)),
        0.1,
    )
    if timeout < quiet:
        raise ConfigError(
            f"series.incomplete_timeout_seconds: must be at least series.quiet_seconds ({quiet}), got {timeout}"
        )
    return SeriesConfig(
        quiet_seconds=quiet,
        incomplete_timeout_seconds=timeout,
        complete_on_release=_bool("series.complete_on_release", data.get("complete_on_release", d.complete_on_release)),
        gap_factor=_num("series.gap_factor", data.get("gap_factor", d.gap_factor), 1.01),
        check_interval_seconds=_num(
            "series.check_interval_seconds", data.get("check_interval_seconds", d.check_interval_seconds), 0.05, 60
        ),
        process_incomplete=_bool("series.process_incomplete", data.get("process_incomplete", d.process_incomplete)),
    )


def _parse_section(name: str, cls: type[_T], data: Any, checks: Mapping[str, Callable[[str, Any], Any]]) -> _T:
    """A simple section: every field has a validator; missing keys keep the defaults."""
    data = _table(name, data)
    _check_keys(name, data, set(checks))
    defaults = cls()
    return cls(**{k: check(f"{name}.{k}", data.get(k, getattr(defaults, k))) for k, check in checks.items()})


def _parse_worker(data: Any) -> WorkerConfig:
    return _parse_section("worker", WorkerConfig, data, {
        "enabled": _bool,
        "threads": partial(_int, lo=1, hi=64),
        "device": _choice("auto", "cpu", "cuda"),
        "lease_seconds": partial(_num, lo=5),
        "poll_seconds": partial(_num, lo=0.05, hi=60),
        "max_job_attempts": partial(_int, lo=1, hi=100),
        "models": _str_list,
        "models_dir": _str,
        "gpu_concurrency": partial(_int, lo=1, hi=64),
        "gpu_memory_mb": partial(_int, lo=0, hi=10**7),
    })


def _parse_outputs(data: Any) -> OutputsConfig:
    number = partial(_int, lo=1, hi=2**31 - 1)
    return _parse_section("outputs", OutputsConfig, data, {
        "seg": _bool, "sr": _bool, "preview": _bool, "kos": _bool, "fractional": _bool,
        "max_key_images": partial(_int, lo=1, hi=100),
        "seg_series_number": number, "sr_series_number": number, "preview_series_number": number,
        "kos_series_number": number, "number_by_source": _bool,
        "series_description_prefix": _str, "multi_model_seg": _choice("separate", "merged"),
    })


def _parse_delivery(data: Any) -> DeliveryConfig:
    return _parse_section("delivery", DeliveryConfig, data, {
        "max_attempts": partial(_int, lo=1, hi=1000),
        "backoff_seconds": partial(_num, lo=0.01),
        "backoff_max_seconds": partial(_num, lo=0.01),
        "commitment_timeout_seconds": partial(_num, lo=1),
        "report_wait_seconds": partial(_num, lo=0, hi=600),
        "network_timeout": partial(_num, lo=1),
        "poll_seconds": partial(_num, lo=0.05, hi=60),
    })


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return ``data`` with ``DICOMNODE_SECTION__KEY`` overrides applied.

    ``DICOMNODE_LOG_LEVEL`` sets the top-level ``log_level``.
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "DICOMNODE_CONFIG" or name == "DICOMNODE_TORCH":
            continue
        rest = name[len(ENV_PREFIX):].lower()
        if "__" in rest:
            section, key = rest.split("__", 1)
            if section not in _ENV_SECTIONS:
                raise ConfigError(f"{name}: unknown section {section!r} (use {', '.join(s.upper() for s in _ENV_SECTIONS)})")
            if key.startswith("tls__"):
                tls = dict(out.setdefault(section, {}).get("tls", {}))
                tls[key[5:]] = _env_value(raw)
                out[section]["tls"] = tls
            else:
                out.setdefault(section, {})[key] = _env_value(raw)
        elif rest in ("log_level", "log_format"):
            out[rest] = raw
    return out


def parse_config(data: Mapping[str, Any], source: Path | None = None) -> Config:
    """Validate a configuration mapping (as read from TOML).

    Raises
    ------
    ConfigError
        A value is invalid; the message names its key.
    """
    _check_keys("config", data, {*_ENV_SECTIONS, "destinations", "sources", "notify", "rules", "routing", "selection", "log_level", "log_format"})
    level = str(data.get("log_level", "INFO")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    destinations = _parse_destinations(data.get("destinations", []))
    names = [d.name for d in destinations]
    node = _parse_node(_table("node", data.get("node", {})))
    sources = parse_sources(data.get("sources", []))
    for i, src in enumerate(sources):
        if node.allowed_calling_aes and src.ae_title not in node.allowed_calling_aes:
            raise ConfigError(
                f"sources[{i}].ae_title: {src.ae_title} sends fetched studies to the node, but node.allowed_calling_aes "
                "does not list it (add it there)"
            )
    return Config(
        node=node,
        series=_parse_series(_table("series", data.get("series", {}))),
        worker=_parse_worker(data.get("worker", {})),
        outputs=_parse_outputs(data.get("outputs", {})),
        delivery=_parse_delivery(data.get("delivery", {})),
        web=_parse_section("web", WebConfig, data.get("web", {}), {
            "enabled": _bool, "host": _str, "port": partial(_int, lo=0, hi=65535), "users_file": _str,
            "trusted_hosts": _host_names, "trusted_proxies": _hosts, "trusted_proxy_header": _header_name,
            "plain_http_login_from": _hosts, "api_docs": _bool, "session_idle_minutes": partial(_num, lo=1.0, hi=1440.0),
            "session_max_hours": partial(_num, lo=0.1, hi=720.0), "login_max_failures": partial(_int, lo=1, hi=1000),
            "login_window_seconds": partial(_num, lo=1.0, hi=86400.0), "tls": _web_tls,
            "stow_max_mb": partial(_int, lo=1, hi=1024 * 1024),
        }),
        retention=_parse_section("retention", RetentionConfig, data.get("retention", {}), {
            "enabled": _bool, "keep_days": partial(_num, lo=0.0), "min_free_percent": partial(_num, lo=0.0, hi=99.0),
            "interval_seconds": partial(_num, lo=1.0), "quarantine_days": partial(_num, lo=1.0),
        }),
        destinations=destinations,
        sources=sources,
        notify=parse_notify(data.get("notify", [])),
        rules=parse_rules(data.get("rules", []), names),
        routing=parse_routing(data.get("routing", {}), names),
        selection=parse_selection(data.get("selection", {})),
        log_level=level,
        log_format=_choice("text", "json")("log_format", data.get("log_format", "text")),
        source=source,
    )


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override and validate the configuration.

    Parameters
    ----------
    path : path, optional
        TOML file.  Defaults to ``$DICOMNODE_CONFIG`` or ``config/dicomnode.toml``;
        if that default does not exist the embedded defaults are used.
    environ : mapping, optional
        Environment to take overrides from (defaults to ``os.environ``).

    Raises
    ------
    ConfigError
        The file is missing or not valid TOML, or a value is invalid.
    """
    env = os.environ if environ is None else environ
    explicit = path is not None or "DICOMNODE_CONFIG" in env
    p = Path(path) if path is not None else Path(env.get("DICOMNODE_CONFIG", DEFAULT_CONFIG))
    data: dict[str, Any] = {}
    if p.is_file():
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read: {exc.strerror}") from exc
    elif explicit:
        raise ConfigError(f"configuration file {p} does not exist")
    return parse_config(apply_env(data, env), source=p if p.is_file() else None)

r"""Log output in ztunnel's format, and the log levels the admin server's `/logging` changes.

Text lines look like ztunnel's:
`2024-05-01T12:00:00.123456Z<TAB>info<TAB>access<TAB>connection complete<TAB>src.addr=10.0.0.1:5000
src.workload="web-1" ... bytes_sent=12 duration="3ms"`: string values are quoted and escaped the
way ztunnel's formatter writes them (Rust's debug form: `\"`, `\\`, `\n`, `\r`, `\t`, `\0`, any
other unprintable character as `\u{hex}`), numbers and booleans are bare, and values wrapped in
`Display` (addresses) are written as they are. JSON lines (`LOG_FORMAT=json`) carry `level`,
`time`, `scope`, `message` and the fields, numbers as numbers. Structured fields travel in a
record's `fields` attribute (`log.info("msg", extra={"fields": {...}})`).

Every part of a text line a peer or a request can influence (the message with its arguments,
field names and values) has its control characters escaped (`\n`, `\t`, `\u001b`...), so a
pod name or header with a newline cannot forge a log line, and a tab cannot shift the columns;
the lines of a traceback are indented, so none of them can pass for a record of its own.

Levels are written like ztunnel's `RUST_LOG` / `/logging?level=`: `info`, or
`info,access=debug,agent.xds=trace` (a default level plus per-module levels; `:` works as well
as `=`, as `istioctl ztunnel-config log --level access:debug` writes it). A default level applies
to our two logger trees, `ztunnel_py` and `access`; a module `agent.xds` names the logger
`ztunnel_py.agent.xds`. Other libraries' loggers stay at WARNING.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import sys
import time
from typing import Any, TextIO

TRACE = 5
OFF = logging.CRITICAL + 10
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "off": OFF,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
_ALIASES = {"warning": "warn"}
_LEVEL_NAMES = {
    TRACE: "trace",
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}
PACKAGE = "ztunnel_py"
ACCESS = "access"
_MODULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: escaped wherever a
# peer's text lands in a line (messages, field names, tracebacks)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


class Display(str):
    """A field value written bare in text lines, as ztunnel writes addresses (`src.addr=1.2.3.4:80`
    rather than a quoted string).

    Only for values that cannot hold spaces, quotes or control characters.
    """

    __slots__ = ()


class LevelSpecError(ValueError):
    pass


def parse_level_spec(spec: str) -> tuple[str | None, dict[str, str]]:
    """`info,access=debug` -> ("info", {"access": "debug"}); raises LevelSpecError."""
    default: str | None = None
    modules: dict[str, str] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        module, sep, level = item.rpartition("=") if "=" in item else item.rpartition(":")
        level = _level_name(level.strip())
        if not sep:
            default = level
            continue
        module = module.strip()
        if not _MODULE.match(module):
            raise LevelSpecError(f"invalid module name {module!r} in {item!r}")
        modules[module] = level
    if default is None and not modules:
        raise LevelSpecError("empty level: expected e.g. 'info' or 'info,access=debug'")
    return default, modules


def _level_name(text: str) -> str:
    name = _ALIASES.get(text.lower(), text.lower())
    if name not in LEVELS:
        raise LevelSpecError(f"invalid level {text!r}: expected one of {', '.join(LEVELS)}")
    return name


def logger_name(module: str) -> str:
    """The Python logger a module name in a level spec refers to."""
    name = module.replace("::", ".")
    if name in (ACCESS, PACKAGE) or name.startswith(PACKAGE + "."):
        return name
    name = name.removeprefix("ztunnel.")
    return f"{PACKAGE}.{name}"


class LogLevels:
    """The current levels: a default plus module overrides; changes merge, `reset` restores."""

    def __init__(self, spec: str = "info") -> None:
        self._initial = spec
        self._default = "info"
        self._modules: dict[str, str] = {}
        self._installed: set[str] = set()
        self.set(spec)

    def set(self, spec: str) -> None:
        """Merge `spec` into the current levels (as ztunnel does); raises LevelSpecError."""
        default, modules = parse_level_spec(spec)
        if default is not None:
            self._default = default
        self._modules.update(modules)
        self._install()

    def reset(self) -> None:
        self._default = "info"
        self._modules = {}
        self.set(self._initial)

    def describe(self) -> str:
        return ",".join([self._default, *(f"{m}={lvl}" for m, lvl in self._modules.items())])

    def _install(self) -> None:
        wanted = {PACKAGE: self._default, ACCESS: self._default}
        wanted |= {logger_name(m): lvl for m, lvl in self._modules.items()}
        for name in self._installed - wanted.keys():
            logging.getLogger(name).setLevel(logging.NOTSET)
        for name, level in wanted.items():
            logging.getLogger(name).setLevel(LEVELS[level])
        self._installed = set(wanted)


# (second, its text): most lines fall in the same second as the previous one, whose date and
# time of day are formatted once
_second: tuple[float, str] = (-1.0, "")


def _timestamp(record: logging.LogRecord) -> str:
    return _time_text(record.created)


def _time_text(created: float) -> str:
    global _second
    # microseconds rounded as `datetime.fromtimestamp` rounds them
    fraction, second = math.modf(created)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        second += 1
        micros -= 1_000_000
    if _second[0] != second:
        t = datetime.datetime.fromtimestamp(second, tz=datetime.UTC)
        _second = (second, t.strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{micros:06d}Z"


def _level(record: logging.LogRecord) -> str:
    return _LEVEL_NAMES.get(record.levelno, record.levelname.lower())


def _target(record: logging.LogRecord) -> str:
    return record.name.removeprefix(PACKAGE + ".")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    if not isinstance(fields, dict):
        return {}
    return {k: v for k, v in fields.items() if v is not None}


def _quoted(text: str) -> str:
    """`text` as Rust's `{:?}` writes a string: quoted, with quotes and unprintables escaped."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        # nothing to escape (the common case, checked without a loop in Python)
        return f'"{text}"'
    out = ['"']
    for ch in text:
        escaped = _ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    out.append('"')
    return "".join(out)


def _text_value(value: object) -> str:
    if type(value) is str:
        # most values: checked first
        return _quoted(value)
    if isinstance(value, Display):
        return str.__str__(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return _quoted(value if isinstance(value, str) else str(value))


def _escaped(text: str) -> str:
    if text.isprintable():
        # no control character (every one `_CONTROL` matches is unprintable): no regex pass
        return text
    return _CONTROL.sub(lambda m: json.dumps(m.group())[1:-1], text)


# field name -> its escaped text with the `=`: the names are the code's own few, so each is
# escaped once (the size bound only guards against a caller making names up without end)
_names: dict[str, str] = {}
_MAX_NAMES = 1024


def _name(key: str) -> str:
    if len(_names) >= _MAX_NAMES:
        _names.clear()
    text = _names[key] = f"{_escaped(key)}="
    return text


def _text_fields(fields: object) -> str:
    """A record's fields as text (None values left out). A line per request goes through here:
    the common value types are told apart by `type` inline rather than by a call each."""
    if not isinstance(fields, dict):
        return ""
    out = []
    names = _names
    for k, v in fields.items():
        if v is None:
            continue
        kind = type(v)
        if kind is str:
            text = _quoted(v)
        elif kind is int:
            text = str(v)
        elif kind is Display:
            text = str.__str__(v)
        else:
            text = _text_value(v)
        out.append((names.get(k) or _name(k)) + text)
    return " ".join(out)


def _text_line(created: float, level: str, target: str, message: str, fields: object) -> str:
    """A text line without its traceback: time, level, target, message, fields."""
    parts = [_time_text(created), level, target, _escaped(message)]
    text = _text_fields(fields)
    if text:
        parts.append(text)
    return "\t".join(parts)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = _text_line(
            record.created,
            _level(record),
            _target(record),
            record.getMessage(),
            getattr(record, "fields", None),
        )
        if record.exc_info:
            trace = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n  {_escaped(t)}" for t in trace)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "level": _level(record),
            "time": _timestamp(record),
            "scope": _target(record),
            "message": record.getMessage(),
        }
        out |= _fields(record)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler setup_logging installed, so a second call replaces it."""


def write_text_line(logger: logging.Logger, level: int, message: str, fields: object) -> bool:
    """Write a record's line straight to the stream of the handler `setup_logging` installed,
    without building a `LogRecord` and passing it through the logging machinery (a third of
    the cost of an access log line); False, writing nothing, unless the logging is set up the
    simple way: text format, that handler the only one on the root logger, no filters, `logger`
    a child of the root with no handler of its own. The caller has checked that `logger` is
    enabled for `level`; the line is the one `TextFormatter` writes for the same record. Once
    the line was begun it is True: a stream that fails is reported as the logging machinery
    reports it (`Handler.handleError`), never by writing the line again."""
    root = logging.root
    handlers = root.handlers
    if len(handlers) != 1 or logger.handlers or logger.filters or root.filters:
        return False
    handler = handlers[0]
    if (
        type(handler) is not _Handler
        or type(handler.formatter) is not TextFormatter
        or handler.filters
        or level < handler.level
        or logger.parent is not root
        or not logger.propagate
    ):
        return False
    created = time.time()
    name = _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower()
    line = _text_line(created, name, logger.name.removeprefix(PACKAGE + "."), message, fields)
    with handler.lock:  # type: ignore[union-attr]
        try:
            _write_whole(handler.stream, line + handler.terminator)
        except Exception:
            # Part of the line may be out already: handing the record to `logging` now would
            # write it a second time. A failing stream is reported as `StreamHandler.emit`
            # reports it, and the line is not written again.
            record = logger.makeRecord(logger.name, level, "", 0, message, (), None)
            record.created = created
            record.fields = fields
            handler.handleError(record)
    return True


def _write_whole(stream: TextIO, text: str) -> None:
    """Write all of `text`, then flush: a stream that takes only part of it (a short count
    from `write`) is given the rest of the same line until it takes none, which is an error."""
    while text:
        written = stream.write(text)
        if written is None or written >= len(text):
            break
        if written <= 0:
            raise OSError(f"the log stream took none of {len(text)} characters")
        text = text[written:]
    stream.flush()


def setup_logging(
    spec: str = "info", *, json_format: bool = False, stream: TextIO | None = None
) -> LogLevels:
    """Send logs to `stream` (stderr) in ztunnel's text or JSON format; levels from `spec`.

    Raises LevelSpecError for a bad spec, before changing anything.
    """
    parse_level_spec(spec)
    # Neither format writes where a call came from, nor a thread's or process's name: the
    # logging module need not look them up for every record (a walk up the stack for the
    # source file and line, the thread and process names), which the access log, a record
    # per request, would pay for each time (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    return LogLevels(spec)

"""Describe a service's twistd options once; get a standalone plugin and a suite section.

A :class:`ServiceSpec` lists a service's parameters and flags and a ``build`` function that
turns parsed values into a service (by calling the service's library builders). From one
spec we derive:

* the standalone plugin's ``Options`` (``twistd netsvc-echo --port 7007``), and
* the suite's ``Options``, where every name gets the service's prefix
  (``twistd netsvc --echo-port 7007``) and each service can be switched off or on.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet.error import CannotListenError
from twisted.python import usage

from netsvc.listening import ListenError, StartupError, add_child, describe_listen_error

__all__ = [
    "NO_LIMIT",
    "Flag",
    "Param",
    "ServiceSpec",
    "checked",
    "make_suite_service",
    "number",
    "run_foreground",
    "standalone_options",
    "suite_options",
    "whole_number",
]


@attrs.frozen
class Param:
    """An option that takes a value (``--port 7007``)."""

    name: str
    default: Any
    help: str
    coerce: Callable[[str], Any] | None = None
    short: str | None = None
    #: Its name in the suite, when ``<service>-<name>`` is not wanted (``--chat``).
    suite_name: str | None = None


@attrs.frozen
class Flag:
    """An option that is off unless given (``--no-udp``)."""

    name: str
    help: str
    short: str | None = None
    #: Its name in the suite, when ``<service>-<name>`` is not wanted (``--announce``).
    suite_name: str | None = None


Values = Mapping[str, Any]


@attrs.frozen
class ServiceSpec:
    """One service as twistd sees it."""

    #: Suite prefix and plugin suffix: ``echo`` gives ``--echo-port`` and ``netsvc-echo``.
    name: str
    description: str
    params: Sequence[Param]
    flags: Sequence[Flag]
    #: Build the service from option values keyed by unprefixed name, and a reactor.
    build: Callable[[Values, Any], IService]
    #: How the suite switches the service on: ``"default-on"`` (``--no-<name>`` turns it
    #: off), ``"flag"`` (off unless ``--<name>``), or the names of parameters or flags of
    #: its own that turn it on when given (``("root",)``: ``--tftp-root DIR``).
    suite_switch: str | tuple[str, ...] = "default-on"
    #: Checks on the values; raise ``usage.UsageError`` with a readable message.
    check: Callable[[Values], None] = lambda values: None


T = TypeVar("T")


def checked(
    name: str, parse: Callable[[str], T], valid: Callable[[T], bool], allowed: str
) -> Callable[[str], T]:
    """A coerce function whose error says which option is wrong and what it takes.

    ``twisted.python.usage`` reports a coerce error as "Parameter type enforcement failed:
    MESSAGE" without the option's name, and the suite prefixes every name (``--tftp-...``):
    the message names the option as both spell it (``max-blksize``).
    """

    def coerce(text: str) -> T:
        try:
            value = parse(text)
        except ValueError:
            pass
        else:
            if valid(value):
                return value
        raise ValueError(f"{name} must be {allowed}, not {text!r}")

    return coerce


#: ``whole_number``'s note for a count where 0 turns the limit off.
NO_LIMIT = " (0: no limit)"


def whole_number(
    name: str, low: int, high: int | None = None, note: str = ""
) -> Callable[[str], int]:
    """A whole number from ``low`` (to ``high``)."""
    if high is None:
        return checked(
            name, int, lambda value: low <= value, f"a whole number of at least {low}{note}"
        )
    return checked(
        name, int, lambda value: low <= value <= high, f"a whole number from {low} to {high}{note}"
    )


def number(
    name: str, unit: str, *, zero_means: str | None = None, at_least: float | None = None
) -> Callable[[str], float]:
    """A finite number above 0; also 0 when ``zero_means`` says what 0 does.

    With ``at_least``, a finite number from ``at_least`` instead (a burst of at least one
    datagram: ``at_least=1``).
    """
    if at_least is not None:
        if zero_means is not None:
            raise TypeError("number() takes zero_means or at_least, not both")
        low = at_least
        allowed = f"a number of {unit}, {low:g} or more"
        return checked(name, float, lambda value: low <= value < math.inf, allowed)
    if zero_means is None:
        return checked(
            name, float, lambda value: 0 < value < math.inf, f"a number of {unit} above 0"
        )
    return checked(
        name,
        float,
        lambda value: 0 <= value < math.inf,
        f"a number of {unit}, 0 or more (0: {zero_means})",
    )


def _options_class(
    name: str, params: list[list[Any]], flags: list[list[Any]], post: Callable[[Any], None]
) -> type[usage.Options]:
    def postOptions(self: usage.Options) -> None:
        post(self)

    return type(
        name,
        (usage.Options,),
        {"optParameters": params, "optFlags": flags, "postOptions": postOptions},
    )


def _suite_name(spec: ServiceSpec, option: Param | Flag) -> str:
    return option.suite_name or f"{spec.name}-{option.name}"


def _param_row(param: Param, name: str | None = None) -> list[Any]:
    short = None if name else param.short
    return [name or param.name, short, param.default, param.help, param.coerce]


def standalone_options(spec: ServiceSpec) -> type[usage.Options]:
    """The ``Options`` class of ``twistd netsvc-<name>``."""
    params = [_param_row(p) for p in spec.params]
    flags = [[f.name, f.short, f.help] for f in spec.flags]
    return _options_class(
        f"{spec.name.title()}Options", params, flags, lambda options: spec.check(options)
    )


def _values_for(spec: ServiceSpec, options: Mapping[str, Any]) -> dict[str, Any]:
    values = {p.name: options[_suite_name(spec, p)] for p in spec.params}
    values.update({f.name: options[_suite_name(spec, f)] for f in spec.flags})
    return values


def _enabled(spec: ServiceSpec, options: Mapping[str, Any]) -> bool:
    if spec.suite_switch == "default-on":
        return not options["no-" + spec.name]
    if spec.suite_switch == "flag":
        return bool(options[spec.name])
    values = _values_for(spec, options)
    return any(values[name] not in (None, False) for name in _switch_names(spec))


def _switch_names(spec: ServiceSpec) -> tuple[str, ...]:
    """The names of the options that switch on a service switched by its own options."""
    switch = spec.suite_switch
    return (switch,) if isinstance(switch, str) else tuple(switch)


def _set_options(spec: ServiceSpec, options: Mapping[str, Any]) -> list[str]:
    """The suite spellings of ``spec``'s options that were set (away from defaults)."""
    changed: list[Param | Flag] = [
        p for p in spec.params if options[_suite_name(spec, p)] != p.default
    ]
    changed += [f for f in spec.flags if options[_suite_name(spec, f)]]
    return [f"--{_suite_name(spec, o)}" for o in changed]


def _what_runs_it(spec: ServiceSpec) -> str:
    if spec.suite_switch == "default-on":
        return f"--no-{spec.name} switched it off"
    if spec.suite_switch == "flag":
        return f"it runs only with --{spec.name}"
    options: list[Param | Flag] = [*spec.params, *spec.flags]
    spelled = [f"--{_suite_name(spec, o)}" for o in options if o.name in _switch_names(spec)]
    return f"it runs only with {' or '.join(spelled)}"


def suite_options(specs: Sequence[ServiceSpec]) -> type[usage.Options]:
    """The ``Options`` class of ``twistd netsvc``: every spec's options, prefixed."""
    params: list[list[Any]] = []
    flags: list[list[Any]] = []
    for spec in specs:
        if spec.suite_switch == "flag":
            flags.append([spec.name, None, f"Run {spec.description}"])
        elif spec.suite_switch == "default-on":
            flags.append(["no-" + spec.name, None, f"Do not run {spec.description}"])
        params.extend(_param_row(p, _suite_name(spec, p)) for p in spec.params)
        flags.extend([_suite_name(spec, f), None, f.help] for f in spec.flags)

    def check(options: usage.Options) -> None:
        enabled = [spec for spec in specs if _enabled(spec, options)]
        for spec in specs:
            # An option of a service that does not run would be ignored without a word.
            ignored = [] if spec in enabled else _set_options(spec, options)
            if ignored:
                raise usage.UsageError(
                    f"{', '.join(ignored)}: for {spec.name}, which is off ({_what_runs_it(spec)})"
                )
        if not enabled:
            raise usage.UsageError("every service is switched off: nothing to run")
        for spec in enabled:
            spec.check(_values_for(spec, options))

    return _options_class("SuiteOptions", params, flags, check)


class _ExplainBindErrors(MultiService):
    """Turns a failed bind into one line saying what to do, instead of a traceback."""

    def __init__(self, program: str) -> None:
        MultiService.__init__(self)
        self.program = program

    def addService(self, service: IService) -> None:
        MultiService.addService(self, service)

    def _explained(self, start: Callable[[], None]) -> None:
        try:
            start()
        except ListenError as error:
            raise StartupError(f"{self.program}: {error.explain()}") from None
        except CannotListenError as error:
            line = describe_listen_error("a service", error)
            raise StartupError(f"{self.program}: {line}") from None

    def privilegedStartService(self) -> None:
        self._explained(lambda: MultiService.privilegedStartService(self))

    def startService(self) -> None:
        self._explained(lambda: MultiService.startService(self))


def make_standalone_service(spec: ServiceSpec, options: Values, reactor: Any) -> IService:
    """What ``makeService`` of ``twistd netsvc-<name>`` returns."""
    root = _ExplainBindErrors(f"netsvc-{spec.name}")
    add_child(root, spec.build(options, reactor))
    return root


def make_suite_service(specs: Sequence[ServiceSpec], options: Values, reactor: Any) -> IService:
    """What ``makeService`` of ``twistd netsvc`` returns: every enabled service."""
    root = _ExplainBindErrors("netsvc")
    for spec in specs:
        if _enabled(spec, options):
            child = spec.build(_values_for(spec, options), reactor)
            if isinstance(child, Service):
                child.setName(spec.name)
            add_child(root, child)
    return root


def run_foreground(
    spec: ServiceSpec,
    options_class: type[usage.Options],
    argv: Sequence[str],
    program: str,
    started: Callable[[IService, usage.Options], None] = lambda service, options: None,
) -> int:
    """``python -m netsvc.<service>``: parse like the plugin, run in the foreground.

    The same service as ``twistd netsvc-<name>``, without daemonising or a pid file: for a
    quick try, benchmarks and containers. ``started`` reports where it listens. Returns
    the exit status (2 for bad options, 1 when a port cannot be bound).
    """
    options = options_class()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as error:
        print(f"{options}\n{program}: {error}", file=sys.stderr)
        return 2
    from twisted.internet import reactor  # a command line, not a library: the global one

    service = make_standalone_service(spec, options, reactor)
    try:
        service.privilegedStartService()
        service.startService()
    except StartupError as error:
        print(error, file=sys.stderr)
        return 1
    started(service, options)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0

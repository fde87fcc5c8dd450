"""Write ferrule device drivers and data processors in Python.

A driver subclasses :class:`Driver`, a processor :class:`Processor`.
``ferrule-py build`` (or ``python -m ferrule_sdk build``) turns the module
into a WebAssembly component for the ``ferrule:plugin@0.2.0`` world, which
ferrule runs in its sandbox like a plugin written in Rust.

Readings go by channel name (the SDK maps each name to its index in the
channel table and declares a name it has not seen) or by index, the
position of a channel in the table the driver declares::

    from ferrule_sdk import Channel, Driver, Reading

    class Counter(Driver):
        def __init__(self, config):
            self.next = int(config.get("start", 0))

        def channels(self):
            return [Channel("count", int)]

        def poll(self):
            self.next += 1
            return [Reading(0, self.next)]

Nothing here needs the component runtime: a plugin's own tests import
its module and call it with plain Python.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Union

__all__ = [
    "WIT_VERSION",
    "Channel",
    "Channels",
    "DeviceStatus",
    "Driver",
    "Error",
    "InvalidConfig",
    "Other",
    "Processor",
    "ProtocolError",
    "Quality",
    "Reading",
    "Timeout",
    "Unavailable",
    "Unsupported",
    "ValueType",
    "is_number",
    "log",
]

#: The version of the ``ferrule:plugin`` WIT package this SDK builds against.
WIT_VERSION = "0.2.0"

#: A measured value: float, int (64-bit signed), bool, str or bytes.
Value = Union[float, int, bool, str, bytes]


class ValueType(enum.Enum):
    """Which kind of value a channel's readings carry."""

    FLOAT = 0
    INT = 1
    BOOLEAN = 2
    TEXT = 3
    BYTES = 4

    @staticmethod
    def of(value: Value) -> "ValueType":
        """The type of ``value`` (``bool`` before ``int``: a bool is an int in Python)."""
        if isinstance(value, bool):
            return ValueType.BOOLEAN
        if isinstance(value, int):
            return ValueType.INT
        if isinstance(value, float):
            return ValueType.FLOAT
        if isinstance(value, str):
            return ValueType.TEXT
        if isinstance(value, (bytes, bytearray, memoryview)):
            return ValueType.BYTES
        raise TypeError(
            f"a reading's value must be float, int, bool, str or bytes, not {type(value).__name__}"
        )

    @staticmethod
    def parse(kind: Union["ValueType", type, str]) -> "ValueType":
        """``ValueType.FLOAT``, ``float`` or ``"float"`` alike."""
        if isinstance(kind, ValueType):
            return kind
        by_type = {float: ValueType.FLOAT, int: ValueType.INT, bool: ValueType.BOOLEAN,
                   str: ValueType.TEXT, bytes: ValueType.BYTES}
        if isinstance(kind, type) and kind in by_type:
            return by_type[kind]
        if isinstance(kind, str):
            try:
                return ValueType[kind.upper()]
            except KeyError:
                pass
        raise ValueError(f"unknown value type {kind!r}: float, int, boolean, text or bytes")


class Quality(enum.Enum):
    """How far a reading can be trusted, in the OPC UA sense."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


@dataclass
class Channel:
    """One channel of a device: what a reading's index stands for.

    ``value_type`` takes a :class:`ValueType`, a Python type (``float``,
    ``int``, ``bool``, ``str``, ``bytes``) or its name.
    """

    name: str
    value_type: Any = ValueType.FLOAT
    unit: Optional[str] = None
    description: Optional[str] = None
    #: Where the device keeps it: "holding:40001", "ns=2;s=Line1.Temp".
    address: Optional[str] = None
    #: The range its values are expected in, as ``(min, max)``.
    range: Optional[tuple] = None
    #: Whether ``Driver.write`` accepts values for it.
    writable: bool = False

    def __post_init__(self) -> None:
        self.value_type = ValueType.parse(self.value_type)
        if self.range is not None:
            lo, hi = self.range
            self.range = (float(lo), float(hi))


@dataclass
class Reading:
    """One value of one channel at one moment.

    ``channel`` is a name (the SDK maps it to its index) or an index in the
    channel table. ``timestamp_ns`` (nanoseconds since the Unix epoch)
    left out means the time the runtime received the batch. ``unit`` is
    used when the SDK declares a name it has not seen.
    """

    channel: Union[str, int]
    value: Value
    timestamp_ns: Optional[int] = None
    quality: Quality = Quality.GOOD
    unit: Optional[str] = None


@dataclass
class DeviceStatus:
    """What a driver knows about the device behind it."""

    connected: bool = True
    firmware: Optional[str] = None
    battery_percent: Optional[int] = None
    #: Link or communication quality, 0 to 100.
    signal_quality: Optional[int] = None
    #: Anything else worth reporting.
    extra: dict = field(default_factory=dict)


class Error(Exception):
    """Why a plugin call failed; raise one of the subclasses.

    Any other exception a plugin raises reaches the runtime as
    :class:`Other`, with its type and message (and the traceback in the log).
    """

    kind = "other"

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class InvalidConfig(Error):
    """The plugin's configuration is wrong; say what and where."""

    kind = "invalid-config"


class Unavailable(Error):
    """The device cannot be reached right now."""

    kind = "unavailable"


class Timeout(Error):
    """The device did not answer in time."""

    kind = "timeout"


class ProtocolError(Error):
    """The device answered something the plugin could not understand."""

    kind = "protocol"


class Unsupported(Error):
    """The operation is not supported by this plugin or channel."""

    kind = "unsupported"


class Other(Error):
    """Any other failure."""

    kind = "other"


class Channels:
    """The channel table as a plugin knows it: the driver's channels, then
    those of the processors before (and including) this one."""

    def __init__(self, channels: Iterable[Channel] = ()) -> None:
        self._table: list = []
        self._by_name: dict = {}
        for c in channels:
            self.push(c)

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[Channel]:
        return iter(self._table)

    def __getitem__(self, index: int) -> Channel:
        return self._table[index]

    def get(self, index: int) -> Optional[Channel]:
        """The channel at ``index``, or None."""
        if isinstance(index, int) and 0 <= index < len(self._table):
            return self._table[index]
        return None

    def next_index(self) -> int:
        """The index the next channel appended will get."""
        return len(self._table)

    def index(self, name: str, unit: Any = ...) -> Optional[int]:
        """The index of the first channel called ``name`` (and with
        ``unit``, when given), or None."""
        for i in self._by_name.get(name, ()):
            if unit is ... or self._table[i].unit == unit:
                return i
        return None

    def name(self, reading: Reading) -> Optional[str]:
        """A reading's channel name."""
        if isinstance(reading.channel, str):
            return reading.channel
        c = self.get(reading.channel)
        return c.name if c else None

    def push(self, channel: Channel) -> int:
        i = len(self._table)
        self._table.append(channel)
        self._by_name.setdefault(channel.name, []).append(i)
        return i

    def resolve(self, reading: Reading, added: list) -> int:
        """The index of ``reading``'s channel, declaring it into ``added``
        when the reading names one not yet in the table."""
        channel = reading.channel
        if isinstance(channel, bool) or not isinstance(channel, (int, str)):
            raise TypeError(f"a reading's channel must be a name or an index, not {channel!r}")
        if isinstance(channel, int):
            c = self.get(channel)
            if c is None or reading.unit is None or c.unit == reading.unit:
                # An index the table does not hold goes to the runtime as
                # it is; the runtime rejects and counts the reading.
                return channel
            name = c.name
        else:
            name = channel
        found = self.index(name, reading.unit)
        if found is not None:
            return found
        declared = Channel(name, ValueType.of(reading.value), unit=reading.unit, writable=True)
        added.append(declared)
        return self.push(declared)


class Driver:
    """A device driver: reads a device on the runtime's schedule.

    ``__init__(self, config)`` receives the driver's ``config`` table from
    the gateway's TOML file as a dict (empty when absent). Validate it there
    and raise :class:`InvalidConfig`; do not contact the device yet
    (``ferrule check`` builds the driver without network access).
    """

    def __init__(self, config: dict) -> None:
        if config:
            raise InvalidConfig(f"this driver takes no configuration, got {sorted(config)}")

    def channels(self) -> list:
        """The channels the driver declares, once, after ``__init__``: the
        ``i``-th has index ``i``. By default none: a name a reading uses
        is declared the first time it appears."""
        return []

    def poll(self) -> list:
        """Reads the device: a list of :class:`Reading`."""
        raise NotImplementedError("a driver implements poll()")

    def write(self, channel: str, value: Value) -> None:
        """Writes a value to a channel (a command from the cloud)."""
        raise Unsupported(f"channel {channel!r} is not writable")

    def status(self) -> DeviceStatus:
        """Reports the device's health; by default connected, nothing else known."""
        return DeviceStatus()


class Processor:
    """A data processor: transforms each batch of readings a driver produces.

    ``__init__(self, config)`` receives its ``config`` table as a dict.
    """

    def __init__(self, config: dict) -> None:
        if config:
            raise InvalidConfig(f"this processor takes no configuration, got {sorted(config)}")

    def channels(self, table: Channels) -> list:
        """The channels it derives, once, given the table so far: the
        ``i``-th gets index ``table.next_index() + i``. By default none."""
        return []

    def process(self, readings: list, table: Channels) -> list:
        """Transforms one batch: readings come by index (``table[r.channel]``
        names them); return fewer to filter, more to derive, by index or name."""
        raise NotImplementedError("a processor implements process()")


def is_number(value: Value) -> bool:
    """Whether ``value`` is a float or an int (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


from . import log  # noqa: E402  (log imports nothing from here but is part of the API)

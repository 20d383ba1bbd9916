"""Named variants of one kind (loss aggregations, reward scalings, importance-sampling levels, reward aggregations,
evaluation protocols, rewards, rollout engines, model adapters): one registry type for all of them, and the source
of truth for the config's choices.

A registry maps names to entries in the order they were registered. A config option that picks a variant is a
plain ``str`` checked against its registry when the option group is built (:meth:`Registry.check`), so a variant
registered before the config is read is selectable from YAML with no other edit, and an unknown name gets one
message that lists the registered ones::

    LOSS_AGGREGATORS = Registry("loss_type")

    @LOSS_AGGREGATORS.register("grpo")
    def _sequence_mean_loss(...): ...

    LOSS_AGGREGATORS["grpo"]        # the entry
    LOSS_AGGREGATORS["ppo"]         # ConfigError: Unknown loss_type 'ppo'; known values are: grpo, ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from grpo_lightning.errors import ConfigError

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Entries by name, for the option ``option`` (the name its messages use).

    Args:
        option: what the names choose, as a user reads it (``loss_type``, ``model.rollout_engine``).
    """

    def __init__(self, option: str) -> None:
        self.option = option
        self._entries: dict[str, Entry] = {}

    @overload
    def register(self, name: str) -> Callable[[Entry], Entry]: ...

    @overload
    def register(self, name: str, entry: Entry) -> Entry: ...

    def register(self, name: str, entry: Entry | None = None) -> Entry | Callable[[Entry], Entry]:
        """Register ``entry`` under ``name``; without ``entry``, a decorator that registers what it decorates.

        Raises:
            ValueError: ``name`` is registered already.
        """

        def add(value: Entry) -> Entry:
            if name in self._entries:
                raise ValueError(f"{self.option} {name!r} is already registered ({_described(self._entries[name])}).")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def check(self, name: str, option: str | None = None) -> str:
        """``name`` itself when it is registered.

        Raises:
            ConfigError: an unknown name, with the registered ones; ``option`` (default: the registry's) is the name
                the message gives the setting.
        """
        if name not in self._entries:
            known = ", ".join(self._entries)
            raise ConfigError(f"Unknown {option or self.option} {name!r}; known values are: {known}.")
        return name

    def __getitem__(self, name: str) -> Entry:
        return self._entries[self.check(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """The registered names, in the order they were registered."""
        return tuple(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.option!r}: {', '.join(self._entries)})"


def _described(entry: object) -> str:
    """A registered function or class by its dotted name; anything else as its repr."""
    qualname = getattr(entry, "__qualname__", None)
    return f"{entry.__module__}.{qualname}" if qualname and hasattr(entry, "__module__") else repr(entry)


__all__ = ["Registry"]

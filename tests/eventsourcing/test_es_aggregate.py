"""Aggregate: dispatch, raise/commit, history, snapshot hooks."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pydantic
import pytest
from es_domain import Account, AccountState, Closed, Deposited, Opened, Withdrawn, stored

from catga.errors import BackendError, ConfigurationError, SerializationError, ValidationError
from catga.eventsourcing import Aggregate, applies
from catga.messages import message_name


def test_raise_event_applies_and_records_without_changing_version() -> None:
    account = Account.open("a1", "ada")
    account.deposit(10)
    account.withdraw(3)

    assert account.state == AccountState(owner="ada", balance=7, deposits=1)
    assert account.version == -1
    assert account.uncommitted_events == (Opened("ada"), Deposited(10), Withdrawn(amount=3))


def test_events_of_all_three_families_dispatch() -> None:
    # Opened is a msgspec Struct, Deposited a dataclass, Withdrawn a pydantic model.
    account = Account.from_events("a1", [Opened("x"), Deposited(5), Withdrawn(amount=2), Closed()])
    assert account.state == AccountState(owner="x", balance=3, deposits=1, closed=True)
    assert account.version == 3
    assert account.uncommitted_events == ()


def test_mark_committed_sets_version_and_clears() -> None:
    account = Account.open("a1", "ada")
    account.deposit(1)
    account.mark_committed()
    assert account.version == 1
    assert account.uncommitted_events == ()
    account.deposit(2)
    account.mark_committed(7)
    assert account.version == 7


def test_failed_apply_records_nothing() -> None:
    account = Account.open("a1", "ada")
    with pytest.raises(ValidationError, match="insufficient"):
        account.withdraw(100)
    assert account.uncommitted_events == (Opened("ada"),)
    assert account.state.balance == 0


def test_unknown_event_raises_naming_aggregate_and_event() -> None:
    class Stranger(msgspec.Struct):
        x: int = 0

    account = Account("a1")
    with pytest.raises(ConfigurationError, match=r"Account has no apply method for event .*Stranger"):
        account.raise_event(Stranger())
    assert account.uncommitted_events == ()


def test_ignore_unknown_events_option() -> None:
    class Tolerant(Account):
        ignore_unknown_events = True

    class Retired(msgspec.Struct):
        pass

    account = Tolerant.from_events("a1", [Opened("ada"), Retired(), Deposited(4)])
    assert account.version == 2
    assert account.state.balance == 4


def test_naming_convention_uses_wire_name_or_class_name() -> None:
    @message_name("bank.Frozen")
    class Frozen(msgspec.Struct):
        pass

    class Thawed(msgspec.Struct):
        pass

    class Box(Aggregate):
        def __init__(self, id: str) -> None:
            super().__init__(id)
            self.log: list[str] = []

        def apply_Frozen(self, event: Frozen) -> None:  # class name
            self.log.append("frozen")

        def apply_Thawed(self, event: Thawed) -> None:
            self.log.append("thawed")

    box = Box.from_events("b", [Frozen(), Thawed(), Frozen()])
    assert box.log == ["frozen", "thawed", "frozen"]


def test_subclass_override_and_event_inheritance() -> None:
    @dataclasses.dataclass
    class Base:
        n: int

    @dataclasses.dataclass
    class Special(Base):
        pass

    class Parent(Aggregate):
        def __init__(self, id: str) -> None:
            super().__init__(id)
            self.seen: list[str] = []

        @applies(Base)
        def _base(self, event: Base) -> None:
            self.seen.append(f"parent{event.n}")

    class Child(Parent):
        def _base(self, event: Base) -> None:  # overrides by name, without re-decorating
            self.seen.append(f"child{event.n}")

    class Specific(Parent):
        def apply_Special(self, event: Special) -> None:  # an exact match beats the base class's method
            self.seen.append(f"specific{event.n}")

    parent = Parent.from_events("p", [Base(1), Special(2)])
    child = Child.from_events("c", [Base(1), Special(2)])
    specific = Specific.from_events("s", [Base(1), Special(2)])
    assert parent.seen == ["parent1", "parent2"]  # Special uses its base class's method
    assert child.seen == ["child1", "child2"]
    assert specific.seen == ["parent1", "specific2"]


def test_one_method_for_several_event_types() -> None:
    class A1(msgspec.Struct):
        pass

    class A2(msgspec.Struct):
        pass

    class Counter(Aggregate):
        def __init__(self, id: str) -> None:
            super().__init__(id)
            self.count = 0

        @applies(A1, A2)
        def _any(self, event: object) -> None:
            self.count += 1

    assert Counter.from_events("c", [A1(), A2(), A1()]).count == 3


def test_applies_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="at least one event type"):
        applies()
    with pytest.raises(ConfigurationError, match="event classes"):
        applies("Opened")  # type: ignore[arg-type]


def test_history_from_stored_events_takes_their_versions() -> None:
    history = [stored("Account-a1", 0, Opened("ada")), stored("Account-a1", 1, Deposited(3))]
    account = Account.from_events("a1", history)
    assert account.version == 1
    account.load_from_history([stored("Account-a1", 2, Deposited(4))])
    assert account.version == 2
    assert account.state.balance == 7


def test_history_gap_is_detected() -> None:
    history = [stored("Account-a1", 0, Opened("ada")), stored("Account-a1", 2, Deposited(3))]
    with pytest.raises(BackendError, match="jumps from version 0 to 2"):
        Account.from_events("a1", history)


def test_history_after_uncommitted_events_is_refused() -> None:
    account = Account.open("a1", "ada")
    with pytest.raises(ConfigurationError, match="uncommitted"):
        account.load_from_history([Deposited(1)])


@dataclasses.dataclass
class DcState:
    items: list[str] = dataclasses.field(default_factory=list)


class PdState(pydantic.BaseModel):
    total: int = 0


class DcCart(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.state = DcState()


class PdCart(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.state = PdState()


@pytest.mark.parametrize(
    ("cls", "state"),
    [(Account, AccountState("ada", 5, 1)), (DcCart, DcState(["x", "y"])), (PdCart, PdState(total=9))],
)
def test_default_snapshot_hooks_round_trip(cls: type[Any], state: Any) -> None:
    from catga.eventsourcing.snapshots import Snapshot

    source = cls("s")
    source.state = state
    snap = Snapshot.of("S-s", 3, "t", source.snapshot_state())
    target = cls("s")
    target.restore_snapshot(snap.decoded_state())
    assert target.state == state
    assert type(target.state) is type(state)


def test_default_snapshot_needs_a_state_record() -> None:
    class Plain(Aggregate):
        pass

    with pytest.raises(ConfigurationError, match=r"keep its state in self\.state"):
        Plain("p").snapshot_state()
    with pytest.raises(ConfigurationError, match=r"initialise self\.state"):
        Plain("p").restore_snapshot({})


def test_restore_snapshot_rejects_data_of_the_wrong_shape() -> None:
    with pytest.raises(SerializationError, match="AccountState"):
        Account("a").restore_snapshot({"balance": "not a number"})


def test_repr_mentions_id_version_and_pending() -> None:
    account = Account.open("a1", "ada")
    assert repr(account) == "<Account id='a1' version=-1, uncommitted=1>"

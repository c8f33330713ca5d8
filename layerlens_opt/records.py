"""Building many frozen dataclass rows fast (tens of thousands of layers per manifest)."""

from __future__ import annotations

from dataclasses import fields
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

T = TypeVar("T")


def positional(cls: type[T]) -> Callable[..., T]:
    """A constructor of the frozen dataclass ``cls`` taking every field, in order, positionally.

    It builds the same object as ``cls(*values)`` -- equal, same hash and repr -- without the generated
    ``__init__``'s ``object.__setattr__`` per field (half the cost of a row); the fields may also be given by
    name. Only for classes whose ``__init__`` does nothing else (no ``__post_init__``, no validation, no
    ``InitVar``); defaults are not applied, so every field must be given (a fresh object where the default is a
    factory)."""
    if getattr(cls, "__post_init__", None) is not None:
        raise TypeError(f"{cls.__name__} has a __post_init__, which positional() would skip")
    names = tuple(f.name for f in fields(cls))
    # generated, as dataclasses generate __init__: named parameters (Python itself refuses a missing or extra
    # value) and one dict display (a third faster than updating the __dict__ from zip(names, values))
    name = f"{cls.__name__}_positional"
    source = (f"def {name}({', '.join(names)}):\n"
              f"    obj = _records_new(_records_cls)\n"
              f"    obj.__dict__.update({{{', '.join(f'{n!r}: {n}' for n in names)}}})\n"
              f"    return obj\n")
    namespace = {"_records_new": object.__new__, "_records_cls": cls}
    exec(source, namespace)  # noqa: S102 -- the source is built from the dataclass's own field names
    make = namespace[name]
    make.__qualname__ = name
    return make


def column_of(rows: Sequence, name: str) -> Sequence:
    """Field ``name`` of every row: the column itself where ``rows`` is a :class:`Rows` (no row built), else read
    from each row."""
    return rows.column(name) if isinstance(rows, Rows) else [getattr(row, name) for row in rows]


class TupleLike(Sequence[T]):
    """A sequence that stands for the tuple :meth:`as_tuple` builds (once): it iterates, compares (``==`` with a
    tuple or another TupleLike), hashes, prints and pickles as that tuple. Subclasses give ``__len__``,
    ``__getitem__`` and ``as_tuple``."""

    __slots__ = ()

    def as_tuple(self) -> tuple[T, ...]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[T]:
        return iter(self.as_tuple())

    def __eq__(self, other) -> bool:
        if isinstance(other, TupleLike):
            return self.as_tuple() == other.as_tuple()
        if isinstance(other, tuple):
            return self.as_tuple() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __repr__(self) -> str:
        return repr(self.as_tuple())

    def __reduce__(self):
        return tuple, (self.as_tuple(),)


class Rows(TupleLike[T]):
    """A tuple of rows built on first use from columns: ``make(*(column[i] for column in columns))`` is row i.

    A 50,000-layer solve that prints a table of 40 rows builds 40 rows, not 50,000 (~2 us each), while the
    columns stay at hand for whole-table work (:meth:`column`). It reads as the tuple it stands for: length,
    indexing, slicing (a tuple), iteration, ``==`` with a tuple or another Rows, hash and pickling (as that
    tuple). A slice builds its rows alone (equal to, not the same objects as, those kept later); anything else
    (an index, iterating, comparing, hashing, pickling) builds every row once and keeps them."""

    __slots__ = ("_make", "_names", "_columns", "_n", "_rows")

    def __init__(self, make: Callable[..., T], columns: Mapping[str, Sequence]):
        """``columns``: each field's values, in the order ``make`` takes them, all of one length."""
        self._make, self._names, self._columns = make, tuple(columns), tuple(columns.values())
        lengths = {len(c) for c in self._columns}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        self._n = lengths.pop() if lengths else 0
        self._rows: tuple[T, ...] | None = None

    def column(self, name: str) -> Sequence:
        """The values of field ``name`` (the sequence given, not a copy: do not change it)."""
        return self._columns[self._names.index(name)]

    def rows(self) -> tuple[T, ...]:
        """Every row, built once."""
        if self._rows is None:
            self._rows = tuple(map(self._make, *self._columns)) if self._columns else ()
        return self._rows

    def row(self, i: int) -> T:
        """Row ``i`` (non-negative), built alone where the rows are not kept yet."""
        if self._rows is not None:
            return self._rows[i]
        return self._make(*[c[i] for c in self._columns])

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if self._rows is None and isinstance(i, slice):  # (a table's two ends)
            return tuple(self._make(*[c[j] for c in self._columns]) for j in range(*i.indices(self._n)))
        return self.rows()[i]  # one row: every row, once (callers index row after row)

    def as_tuple(self) -> tuple[T, ...]:
        return self.rows()

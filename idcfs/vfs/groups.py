"""A large folder seen in groups of its entries, for clients that cannot take it whole.

Windows' WebDAV client (the Mini-Redirector behind Explorer) refuses a folder listing over a
million bytes, its default ``FileAttributesLimitInBytes``, and then shows the folder empty: at
a few hundred bytes an entry, any folder of more than a few thousand entries (``nlst``'s 26,411
patients, a slide series' 92k files) is out of its reach. Such a client is shown a large folder
as groups: folders named ``<first> … <last>`` after the first and last entry they hold, each of
at most :data:`GROUP_SIZE` entries (or of groups, for a folder larger than ``GROUP_SIZE`` groups
of them). The groups are a view of the folder's own sorted entries, so they never change while
the tree does not.

Every other client and face lists the tree as it is. A grouped path still names the same file
everywhere: every face resolves a group's name (the mount, ``idc://`` and the share alike), so
a path copied from Explorer opens the same file on a Linux mount. A group name always contains
:data:`SEPARATOR` (with its spaces), which no name of IDC's index does.
"""

from __future__ import annotations

from collections.abc import Callable

#: Entries a group holds at most (and a grouped folder lists at most): a Windows listing of
#: this many of the tree's longest paths stays well under its million bytes.
GROUP_SIZE = 500
#: Between a group's first and last entry (an ellipsis, with a space either side).
SEPARATOR = " \u2026 "

#: A span of a folder's sorted entries: positions ``[start, stop)``.
Span = tuple[int, int]


def spans(start: int, stop: int, size: int = GROUP_SIZE) -> list[Span]:
    """The groups the entries ``[start, stop)`` are shown as; none when they are few enough to
    be shown themselves. Each group is as large as needed for at most ``size`` of them."""
    if stop - start <= size:
        return []
    step = size
    while -(-(stop - start) // step) > size:
        step *= size
    return [(at, min(at + step, stop)) for at in range(start, stop, step)]


def group_name(name_at: Callable[[int], str], span: Span) -> str:
    """The name of the group of ``span``: its first and last entry's names."""
    return f"{name_at(span[0])}{SEPARATOR}{name_at(span[1] - 1)}"


def find_group(name_at: Callable[[int], str], within: Span, name: str) -> Span | None:
    """The span of the group called ``name`` among the groups of ``within``, or None."""
    if SEPARATOR not in name:
        return None
    for span in spans(*within):
        if group_name(name_at, span) == name:
            return span
    return None

"""The leak census: which object holds the growing memory, its path from a GC root, and the line that adds to it.

Framework-free (standard library only: gc, sys, tracemalloc, dis, ast). The leak guard runs it at its
warnings and at its abort, never per step; a baseline is taken once, at the first memory reading.

One census is:

1. **A scan** (one pass over `gc.get_objects()`): every container (list, dict, set, deque and their
   subclasses) of at least `min_items` items, by id and length; objects of the `collect` types (the
   TensorFlow adapter asks for eager tensors, variables, tf.functions); the object counts by kind of
   `tfodtrain.memory.pyobjects`.
2. **Growth**: a container's length against the previous census (or the baseline). A container that grew
   by at least `min_growth_items` is a candidate; a deque full at its `maxlen` is bounded, never one.
3. **Bytes**: what a candidate holds, counted recursively to `size_depth` levels (`nbytes` of arrays and
   tensors through `sizer`, `sys.getsizeof` otherwise; into lists, tuples, sets, dicts and instance
   `__dict__`s, not into modules, classes or functions), each object once; a container of more than
   `sample_items` items is sized from its first and last items and scaled. Candidates whose growth in
   bytes is under `min_bytes` are dropped; the `top` largest are the holders.
4. **The path**: from each holder back to the nearest name a person recognises, breadth first through
   `gc.get_referrers` (one call per level for all holders together, `path_depth` levels at most): a
   module global `module.NAME`, an attribute `ClassName.attr` of a live object (or of a class), a closure
   variable of a named function, a mutable default argument, or a local variable of a running function;
   dict keys and list indexes on the way show as `[key]`, `[i]`. Wrapper objects (`transparent`, e.g.
   tf_keras' ListWrapper around a list set on a model) are looked through, so the attribute's name shows.
5. **The line** (`added_at`, with `added_at_source`): tracemalloc is started (`trace_frames` frames) at
   the very end of the first census, which holds on to the holders it named (at most `top`), and read and
   stopped first thing by the next one (before its scan: all that is allocated while tracing costs a
   traceback): `tracemalloc.get_object_traceback` tells where the holders' newest items were allocated
   (the innermost frame outside the standard library and site-packages), and the snapshot's largest live
   allocations since the start, grouped by that frame, are `top_lines`. Where tracing cannot tell (a fast
   leak: the first census is also the last; items allocated outside Python's allocator, as TensorFlow
   tensors are), the line is the code that adds to the holder, found in the bytecode: the functions of
   the owner's class, module or closure that call `append`, `extend`, `add`, ... on the name or store
   into it (`added_by`, source `bytecode`); `added_at_note` says why.

Cost: the pause is one scan, the sizing (bounded by depth and samples) and at most `path_depth`
`gc.get_referrers` passes; everything after the scan stops at `max_seconds` (what is left is reported
unresolved). Its own memory (the object list of the scan and its tables) is counted and returned as
`census_bytes`; tracemalloc's own memory as `tracemalloc_bytes`. Between censuses it holds only ids and
lengths of the large containers, never the objects.

Example:
    >>> census = Census(min_bytes=1 << 20)
    >>> census.baseline(step=1)
    >>> ...                                     # training leaks
    >>> result = census.run(step=400)
    >>> result["holders"][0]
    {'path': 'KeepDetections.kept', 'kind': 'list', 'items': 3040, 'bytes': 2469396480,
     'growth_per_100_steps': 800.0, 'bytes_per_100_steps': 649830643.2,
     'added_at': 'tfodtrain/callbacks/leak_demo.py:67 in KeepDetections.on_train_batch_end', ...}
"""

from __future__ import annotations

import ast
import collections
import dis
import gc
import os
import sys
import sysconfig
import time
import tracemalloc
import types

from tfodtrain.memory.pyobjects import count_object, filled_items

HOLDER_TYPES = (list, dict, set, collections.deque)


class _Own(dict):
    """The census's own tables (ids and lengths): never counted as holders."""
_OPAQUE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           types.CodeType, types.FrameType, types.CellType)
_ADDING = {"append", "extend", "insert", "appendleft", "extendleft", "add", "update", "setdefault",
           "__setitem__", "put"}
_LIBRARY = tuple(sorted({os.path.realpath(p) + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib")
                         if (p := sysconfig.get_paths().get(key))}, key=len, reverse=True))
_THIS_FILE = os.path.realpath(__file__)


def _is_library(filename: str) -> bool:
    path = os.path.realpath(filename)
    return path == _THIS_FILE or path.startswith(_LIBRARY) or filename.startswith("<")


def short_path(filename: str) -> str:
    """A path relative to the working directory when under it, else as given."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


def gib(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------------------------------
# Bytes


def default_sizer(obj) -> int | None:
    """`nbytes` of an array-like (NumPy, PyTorch, ...); None for anything else."""
    nbytes = getattr(type(obj), "nbytes", None)
    if nbytes is None:
        return None
    try:
        value = obj.nbytes
    except Exception:  # noqa: BLE001 - a property that fails is no size
        return None
    return int(value) if isinstance(value, int) else None


class Sizer:
    """Bytes held by an object, recursively to `depth` levels, each object once (`seen`)."""

    def __init__(self, sizer=None, depth: int = 4, sample_items: int = 64):
        self.sizers = [s for s in (sizer, default_sizer) if s is not None]
        self.depth = depth
        self.sample_items = sample_items
        self.seen: set[int] = set()

    def size(self, obj, depth: int | None = None) -> int:
        depth = self.depth if depth is None else depth
        if id(obj) in self.seen:
            return 0
        self.seen.add(id(obj))
        for sizer in self.sizers:
            value = sizer(obj)
            if value is not None:
                return value + (sys.getsizeof(obj) if sizer is default_sizer and value == 0 else 0)
        try:
            total = sys.getsizeof(obj)
        except TypeError:
            total = 0
        if depth <= 0 or isinstance(obj, _OPAQUE) or isinstance(obj, (str, bytes, bytearray, int, float)):
            return total
        if isinstance(obj, dict):
            items = obj.items()
            n = len(obj)
        elif isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
            items, n = obj, len(obj)
        else:
            inner = getattr(obj, "__dict__", None)
            if isinstance(inner, dict) and not isinstance(obj, _OPAQUE):
                return total + self.size(inner, depth - 1)
            return total
        return total + self._items(items, n, depth - 1)

    def _items(self, items, n: int, depth: int) -> int:
        if n <= self.sample_items:
            chosen, scale = list(items), 1.0
        else:  # the first and the newest items, scaled to all
            half = self.sample_items // 2
            listed = list(items) if not isinstance(items, (list, collections.deque)) else items
            chosen = [listed[i] for i in range(half)] + [listed[i] for i in range(n - half, n)]
            scale = n / len(chosen)
        total = 0
        for item in chosen:
            if isinstance(item, tuple) and len(item) == 2 and not isinstance(items, (list, tuple)):
                total += self.size(item[0], depth) + self.size(item[1], depth)  # a dict's key and value
            else:
                total += self.size(item, depth)
        return int(total * scale)


# --------------------------------------------------------------------------------------------------
# Paths from GC roots


_PENALTY = {"private attribute": 2, "local": 2}  # levels: a public name a little further up is better
_RANK = {"attribute": 0, "global": 1, "closure": 2, "default": 3, "class attribute": 4, "private attribute": 5,
         "local": 6}


def _edge(parent, child) -> str | None:
    """How `parent` refers to `child`: '[key]', '[i]', '.__dict__', or '' when it cannot be told."""
    if isinstance(parent, dict):
        if len(parent) > 100_000:
            return "[?]"
        for key, value in parent.items():
            if value is child:
                return f"[{key!r}]"
        return "[key]"
    if isinstance(parent, (list, tuple, collections.deque)):
        items = _items_of(parent) if len(parent) <= 1_000_000 else None  # a copy of its items: bounded
        if items is None:
            return "[?]"
        for i, item in enumerate(items[:100_000]):
            if item is child:
                return f"[{i}]"
        return "[?]"
    if isinstance(parent, types.CellType):
        return "cell"
    if getattr(parent, "__dict__", None) is child:
        return ".__dict__"
    return ""


def _items_of(parent) -> list | None:
    """A sequence's items without reading a NULL: a list or tuple that C code left partly unfilled refers to what
    it holds, so it can be a referrer on a path (None: it holds NULLs)."""
    if type(parent) is list or type(parent) is tuple:
        return filled_items(parent)
    return list(parent)


def _render(labels: list[str]) -> str:
    return "".join(labels)


class _Node:
    __slots__ = ("obj", "target", "labels")

    def __init__(self, obj, target: int, labels: list[str]):
        self.obj, self.target, self.labels = obj, target, labels


def find_paths(targets: list, *, depth: int = 12, deadline: float | None = None, frontier_limit: int = 400,
               transparent="default", ignore: set[int] | None = None) -> dict[int, dict]:
    """For each target, the nearest recognisable name: {id(target): {'path', 'anchor', 'owner'}}.

    `transparent(obj) -> bool`: wrapper objects to look through (their private attributes are not named)."""
    ignore = set(ignore or ())
    transparent = default_transparent if transparent == "default" else transparent
    module_dicts = _Own()
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            module_dicts[id(namespace)] = name
    here = sys._getframe()
    own_frames = set()
    frame = here
    while frame is not None:
        if frame.f_code.co_filename == __file__:
            own_frames.add(id(frame))
        frame = frame.f_back
    found: dict[int, list[tuple[int, int, dict]]] = _Own()  # target -> (level, rank, result)
    frontier = [_Node(t, id(t), []) for t in targets]
    visited = {id(t) for t in targets}
    ignore.update({id(frontier), id(visited), id(found), id(targets)})
    for level in range(depth):
        if not frontier or (deadline is not None and time.perf_counter() > deadline):
            break
        open_targets = {n.target for n in frontier
                        if n.target not in found or min(o[0] + _PENALTY.get(o[2]["anchor"], 0) for o in found[n.target]) >= level}
        frontier = [n for n in frontier if n.target in open_targets]
        if not frontier:
            break
        by_id: dict[int, list[_Node]] = _Own()
        for node in frontier:
            by_id.setdefault(id(node.obj), []).append(node)
        objs = [n.obj for n in frontier]
        ignore.add(id(objs))
        referrers = gc.get_referrers(*objs)
        ignore.add(id(referrers))
        next_frontier: list[_Node] = []
        for parent in referrers:
            if id(parent) in ignore or id(parent) in own_frames or isinstance(parent, _Node):
                continue
            if isinstance(parent, (list, tuple)) and len(parent) == len(objs) and len(objs) \
                    and (_items_of(parent) or [None])[0] is objs[0]:
                continue  # the argument tuple of get_referrers
            if isinstance(parent, types.FrameType):
                if parent.f_code.co_filename == __file__:
                    continue
                children = [n for n in frontier if any(v is n.obj for v in parent.f_locals.values())]
            else:
                try:
                    refs = gc.get_referents(parent)
                except Exception:  # noqa: BLE001
                    continue
                children = [n for r in refs for n in by_id.get(id(r), ())]
            for child in children:
                if child.target not in open_targets:
                    continue
                anchor = _anchor(parent, child, module_dicts, transparent)
                if anchor is not None:
                    if isinstance(anchor, tuple):  # a wrapper: its referrers are asked next
                        if id(parent) not in visited:
                            next_frontier.append(_Node(parent, child.target, anchor[1]))
                        continue
                    found.setdefault(child.target, []).append((level, _RANK.get(anchor["anchor"], 9), anchor))
                    continue
                if id(parent) in visited or isinstance(parent, types.FrameType):
                    continue
                label = _edge(parent, child.obj)
                if not label and isinstance(parent, (types.FunctionType, type, types.CodeType)):
                    continue  # a function's globals, a class's bases or MRO: no path a person would follow
                next_frontier.append(_Node(parent, child.target, ([label] if label else []) + child.labels))
        for node in next_frontier:
            visited.add(id(node.obj))
        frontier = next_frontier[:frontier_limit]
        del referrers, objs
    results = _Own()
    for target, options in found.items():
        options.sort(key=lambda o: (o[0] + _PENALTY.get(o[2]["anchor"], 0), o[1]))
        results[target] = options[0][2]
    return results


def _anchor(parent, child: _Node, module_dicts: dict, transparent):
    """A recognisable name where `parent` refers to `child`, 'look through' for a wrapper, else None."""
    rest = child.labels
    if isinstance(parent, dict) and id(parent) in module_dicts:
        label = _edge(parent, child.obj)
        if label.startswith("['"):
            name = label[2:-2]
            return {"anchor": "global", "path": f"{module_dicts[id(parent)]}.{name}" + _render(rest),
                    "owner": module_dicts[id(parent)], "name": name}
        return None
    if isinstance(parent, types.FrameType):
        for name, value in parent.f_locals.items():
            if value is child.obj:
                code = parent.f_code
                return {"anchor": "local", "path": f"{code.co_qualname}.<locals>.{name}" + _render(rest),
                        "owner": code.co_qualname, "name": name,
                        "where": f"{short_path(code.co_filename)}:{parent.f_lineno}"}
        return None
    if isinstance(parent, types.FunctionType):
        if parent.__closure__ is child.obj and rest and rest[0].startswith("[") and rest[1:2] == ["cell"]:
            index = int(rest[0][1:-1])
            name = parent.__code__.co_freevars[index]
            return {"anchor": "closure", "path": f"{parent.__qualname__}: closure variable '{name}'" + _render(rest[2:]),
                    "owner": parent.__qualname__, "name": name, "function": parent}
        if parent.__defaults__ is child.obj and rest:
            index = int(rest[0][1:-1]) if rest[0][1:-1].isdigit() else 0
            names = parent.__code__.co_varnames[:parent.__code__.co_argcount]
            name = names[len(names) - len(parent.__defaults__) + index] if names else "?"
            return {"anchor": "default", "path": f"{parent.__qualname__}: default of argument '{name}'" + _render(rest[1:]),
                    "owner": parent.__qualname__, "name": name, "function": parent}
        return None
    if isinstance(parent, (types.ModuleType, types.CellType, types.CodeType)):
        return None
    found = _attribute(parent, child, rest)
    if found is None:
        return None
    name, after, labels = found
    cls = parent if isinstance(parent, type) else type(parent)
    if transparent is not None and not isinstance(parent, type) and name.startswith("_") and transparent(parent):
        return ("look through", labels)
    kind = "class attribute" if isinstance(parent, type) else (
        "private attribute" if name.startswith("_") else "attribute")
    return {"anchor": kind, "path": f"{cls.__name__}.{name}" + _render(after), "owner": cls.__name__,
            "name": name, "owner_obj": parent}


_MISSING = object()


def _attribute(parent, child: _Node, rest: list[str]):
    """(attribute name, labels after it, labels for looking through) when `parent` holds `child` as an
    attribute: through its `__dict__` (a dict node below), its inline values, or `__slots__`."""
    try:
        if isinstance(parent, type):
            if isinstance(child.obj, dict) and rest and rest[0].startswith("['"):
                name = rest[0][2:-2]
                value = parent.__dict__.get(name, _MISSING)
                if value is not _MISSING and child.obj.get(name, None) is value:
                    return name, rest[1:], rest[1:]
            return None
        namespace = getattr(parent, "__dict__", None)
        if isinstance(namespace, dict):
            if namespace is child.obj:
                if rest and rest[0].startswith("['"):
                    return rest[0][2:-2], rest[1:], rest[1:]
                return None
            for key, value in namespace.items():
                if value is child.obj and isinstance(key, str):
                    return key, rest, rest
        for klass in type(parent).__mro__:
            for slot in getattr(klass, "__slots__", ()) if isinstance(getattr(klass, "__slots__", ()), (tuple, list)) else ():
                if getattr(parent, slot, None) is child.obj:
                    return slot, rest, rest
    except Exception:  # noqa: BLE001 - odd objects (proxies) are not named
        return None
    return None


def default_transparent(obj) -> bool:
    """Wrapper objects to look through: a class named like `...Wrapper` (tf_keras' ListWrapper, _DictWrapper)."""
    return type(obj).__name__.endswith("Wrapper")


# --------------------------------------------------------------------------------------------------
# The line


def _user_frame(traceback) -> tuple[str, int] | None:
    """The innermost frame outside the standard library and site-packages; None if all are inside."""
    for frame in reversed(list(traceback)):  # oldest first
        if not _is_library(frame.filename):
            return frame.filename, frame.lineno
    return None


def _children(item, n: int = 2) -> list:
    """A few of what an item holds (a container's newest, a mapping's values, an object's attributes):
    allocated where the item was filled, fewer frames below the code that made it."""
    try:
        if isinstance(item, HOLDER_TYPES + (tuple,)):
            return newest_items(item, n)
        values = getattr(item, "values", None)
        if callable(values) and hasattr(item, "keys"):
            return list(values())[-n:]
        inner = getattr(item, "__dict__", None)
        return list(inner.values())[-n:] if isinstance(inner, dict) else []
    except Exception:  # noqa: BLE001
        return []


_FUNCTIONS_OF_FILE: dict[str, list] = {}


def function_at(filename: str, lineno: int) -> str | None:
    """The qualified name of the innermost function defined around `filename:lineno` (parsed once per file)."""
    spans = _FUNCTIONS_OF_FILE.get(filename)
    if spans is None:
        spans = []
        try:
            with open(filename, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError, ValueError):
            tree = None

        def visit(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        spans.append((child.lineno, child.end_lineno or child.lineno, name))
                    visit(child, name + ("." if isinstance(child, ast.ClassDef) else ".<locals>."))
                else:
                    visit(child, prefix)

        if tree is not None:
            visit(tree, "")
        _FUNCTIONS_OF_FILE[filename] = spans
    inside = [s for s in spans if s[0] <= lineno <= s[1]]
    return min(inside, key=lambda s: s[1] - s[0])[2] if inside else None


def where(filename: str, lineno: int) -> str:
    function = function_at(filename, lineno)
    return f"{short_path(filename)}:{lineno}" + (f" in {function}" if function else "")


def newest_items(holder, n: int = 5) -> list:
    if isinstance(holder, dict):
        keys = list(holder.keys())[-n:] if len(holder) <= 100_000 else []
        return [holder[k] for k in reversed(keys)]
    if isinstance(holder, (list, collections.deque)):
        return [holder[i] for i in range(len(holder) - 1, max(len(holder) - 1 - n, -1), -1)]
    return list(holder)[:n] if len(holder) <= 100_000 else []


def allocated_at(holder) -> str | None:
    """Where the holder's newest items were allocated (tracemalloc must have been on then)."""
    for item in newest_items(holder):
        for obj in (item, *_children(item)):
            traceback = tracemalloc.get_object_traceback(obj)
            if traceback is not None:
                frame = _user_frame(traceback)
                if frame is not None:
                    return where(*frame)
    return None


def _functions_of(anchor: dict) -> list:
    """The functions that may add to the named holder: the owner class's methods, the module's functions
    and classes' methods, or the closure's function."""
    functions = []
    if "function" in anchor:
        functions.append(anchor["function"])
    elif "owner_obj" in anchor:
        cls = anchor["owner_obj"] if isinstance(anchor["owner_obj"], type) else type(anchor["owner_obj"])
        for klass in cls.__mro__:
            functions += [v for v in vars(klass).values() if isinstance(v, types.FunctionType)]
    elif anchor.get("anchor") == "global":
        module = sys.modules.get(anchor["owner"])
        for value in list(vars(module).values()) if module is not None else ():
            if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
                functions.append(value)
            elif isinstance(value, type) and value.__module__ == module.__name__:
                functions += [v for v in vars(value).values() if isinstance(v, types.FunctionType)]
    return [f for f in functions if not _is_library(f.__code__.co_filename)]


def _codes(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def added_by(anchor: dict, limit: int = 3) -> list[str]:
    """Lines whose code adds to the holder named by `anchor` (a method call like `append` on the name,
    or a store into it), found in the bytecode: no tracing needed."""
    name = anchor.get("name")
    if not name:
        return []
    loads = {"attribute": ("LOAD_ATTR",), "private attribute": ("LOAD_ATTR",), "class attribute": ("LOAD_ATTR",),
             "global": ("LOAD_GLOBAL", "LOAD_NAME"), "closure": ("LOAD_DEREF",), "default": ("LOAD_FAST",)}
    ops = loads.get(anchor.get("anchor"))
    if ops is None:
        return []
    lines = []
    for function in _functions_of(anchor):
        for code in _codes(function.__code__):
            instructions = list(dis.get_instructions(code))
            line = code.co_firstlineno
            for i, ins in enumerate(instructions):
                if ins.positions is not None and ins.positions.lineno:
                    line = ins.positions.lineno
                if ins.opname not in ops or ins.argval != name:
                    continue
                after = instructions[i + 1:i + 4]
                if (after and after[0].opname in ("LOAD_METHOD", "LOAD_ATTR") and after[0].argval in _ADDING) or \
                        any(a.opname == "STORE_SUBSCR" for a in after):
                    text = f"{short_path(code.co_filename)}:{line} in {function_at(code.co_filename, line) or code.co_qualname}"
                    if text not in lines:
                        lines.append(text)
                    if len(lines) >= limit:
                        return lines
    return lines


# --------------------------------------------------------------------------------------------------
# The census


class Census:
    """Holders that grow between censuses, with their path, bytes and line. See the module docstring."""

    def __init__(self, *, sizer=None, collect: tuple = (), transparent=default_transparent, min_items: int = 32,
                 min_growth_items: int = 16, min_bytes: int = 1 << 20, top: int = 5, size_depth: int = 4,
                 sample_items: int = 64, path_depth: int = 12, max_seconds: float = 20.0, trace_frames: int = 4,
                 top_lines: int = 5):
        self.sizer, self.collect, self.transparent = sizer, tuple(collect), transparent
        self.min_items, self.min_growth_items, self.min_bytes, self.top = min_items, min_growth_items, min_bytes, top
        self.size_depth, self.sample_items, self.path_depth = size_depth, sample_items, path_depth
        self.max_seconds, self.trace_frames, self.top_lines = max_seconds, trace_frames, top_lines
        self.lengths: dict[int, tuple[str, int]] | None = None  # id -> (type name, length) at the last census
        self.step: int | None = None
        self.censuses = 0
        self.lines: dict[str, str] = _Own()  # holder path -> where its items were allocated (kept once found)
        self.named: dict[str, int] = _Own()  # holder path -> items, at the last census
        self._tracing_since: int | None = None  # step at which a census started tracemalloc
        self._watched: list = []  # the holders named by that census (strong references, at most `top`)
        self._read: dict | None = None  # what `prepare` read, for this census
        self._collect_cache: dict[type, bool] = {}

    # the scan ---------------------------------------------------------------------------------------
    def scan(self) -> dict:
        """One pass over the GC's objects: large containers, collected objects, counts by kind."""
        counts: collections.Counter = collections.Counter()
        big, collected = [], []
        cache = self._collect_cache
        collect = self.collect
        objects = gc.get_objects()
        own = {id(big), id(collected), id(counts), id(objects), id(self.lengths), id(self.lines), id(self.named),
               id(self._collect_cache), id(self.__dict__)}
        for obj in objects:
            kind = type(obj)
            # A list or tuple that C code left unfilled is counted by its type alone and never taken for a
            # holder: its items are NULLs.
            readable = count_object(counts, obj, kind)
            if isinstance(obj, HOLDER_TYPES) and kind is not _Own and readable and id(obj) not in own:
                try:
                    if len(obj) >= self.min_items:
                        big.append(obj)
                except Exception:  # noqa: BLE001 - a broken __len__ of a subclass
                    pass
            if collect:
                wanted = cache.get(kind)
                if wanted is None:
                    wanted = cache[kind] = issubclass(kind, collect)
                if wanted:
                    collected.append(obj)
        # A dict of only untracked keys and values (ints, strings, arrays) is not tracked by the GC (not in
        # get_objects): found among the referents of tracked objects (a cell, an instance, a module dict)
        seen = {id(o) for o in big} | own
        own.add(id(seen))
        for start in range(0, len(objects), 20_000):
            for ref in [r for r in gc.get_referents(*objects[start:start + 20_000]) if type(r) is dict]:
                if id(ref) not in seen and len(ref) >= self.min_items and not gc.is_tracked(ref):
                    seen.add(id(ref))
                    big.append(ref)
        own_bytes = sys.getsizeof(seen) + sys.getsizeof(objects) + sys.getsizeof(big) + sys.getsizeof(collected) + sys.getsizeof(counts)
        del objects
        return {"counts": counts, "big": big, "collected": collected, "own_bytes": own_bytes}

    def baseline(self, step: int) -> dict:
        """The first reading: lengths of the large containers (ids and numbers only are kept)."""
        scan = self.scan()
        self.lengths = _Own((id(o), (type(o).__name__, len(o))) for o in scan["big"])
        self.step = step
        return scan

    # a census ---------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Read and stop tracemalloc, if the previous census started it: where the items of the holders it
        named (held since then, at most `top`) were allocated, and the lines whose memory grew. First of
        all, before the scan: everything allocated while tracemalloc is on costs a traceback."""
        if self._read is not None or self._tracing_since is None:
            return
        if not tracemalloc.is_tracing():  # stopped by someone else
            self._read = {"lines": {}, "top_lines": [], "tracing": {"state": "stopped by someone else: not read"}}
            self._tracing_since, self._watched = None, []
            return
        lines = {}
        for path, obj, anchor in self._watched:
            line = allocated_at(_current(anchor, obj))
            if line is not None:
                lines[path] = line
        snapshot = tracemalloc.take_snapshot()
        own = tracemalloc.get_tracemalloc_memory()
        since = self._tracing_since
        tracemalloc.stop()
        self._tracing_since, self._watched = None, []
        by_line: dict[tuple, list] = {}
        for stat in snapshot.statistics("traceback")[:2000]:  # largest first; by the innermost frame outside libraries
            if any(f.filename == __file__ for f in stat.traceback):
                continue  # the census's own allocations
            frame = _user_frame(stat.traceback)
            if frame is not None:
                entry = by_line.setdefault(frame, [0, 0])
                entry[0] += stat.size
                entry[1] += stat.count
        del snapshot
        top = [{"at": where(*frame), "bytes": size, "count": count}
               for frame, (size, count) in sorted(by_line.items(), key=lambda kv: -kv[1][0])[:self.top_lines]]
        self._read = {"lines": lines, "top_lines": top,
                      "tracing": {"state": f"read and stopped (on since step {since})", "since_step": since,
                                  "frames": self.trace_frames, "tracemalloc_bytes": own}}

    def run(self, step: int, scan: dict | None = None, trace: bool = True, untraced_note: str | None = None) -> dict:
        """Holders grown since the last census (or the baseline). tracemalloc: read and stopped first if
        the previous census started it (`prepare`), else started at the end (when `trace`), holding the
        named holders (at most `top`) until the next census reads it. `untraced_note`: why no line was
        traced, when tracemalloc was off (default: it starts at this census, read at the next)."""
        started = time.perf_counter()
        self.prepare()
        read, self._read = self._read, None
        deadline = started + self.max_seconds
        scan = scan if scan is not None else self.scan()
        scanned = time.perf_counter()
        since = self.step
        steps = step - since if since is not None and step > since else None
        previous = self.lengths or {}
        namespaces = {id(vars(m)) for m in list(sys.modules.values()) if hasattr(m, "__dict__")}
        candidates = []
        for obj in scan["big"]:
            if id(obj) in namespaces:
                continue  # a module's globals grow as it is imported
            n = len(obj)
            before = previous.get(id(obj))
            grown = n - before[1] if before is not None and before[0] == type(obj).__name__ else n
            if grown < self.min_growth_items:
                continue
            if isinstance(obj, collections.deque) and obj.maxlen is not None and n >= obj.maxlen:
                continue  # a full bounded deque does not grow
            candidates.append((grown, obj, before is None))
        candidates.sort(key=lambda c: -c[0])
        candidates = candidates[:200]
        sizer = Sizer(self.sizer, self.size_depth, self.sample_items)
        sizer.seen.update({id(scan["big"]), id(scan["collected"])})
        sized = []
        for grown, obj, new in candidates:  # largest growth first; each object counted once, in the first holder
            if time.perf_counter() > deadline:
                break
            size = sizer.size(obj)
            grown_bytes = size * grown / max(len(obj), 1)
            if grown_bytes >= self.min_bytes:
                sized.append({"obj": obj, "items": len(obj), "grown": grown, "bytes": size, "grown_bytes": grown_bytes,
                              "new": new})
        sized.sort(key=lambda h: -h["grown_bytes"])
        sized = sized[:self.top * 2]
        timing = {"scan_s": round(scanned - started, 3), "size_s": round(time.perf_counter() - scanned, 3)}
        mark = time.perf_counter()
        paths = find_paths([h["obj"] for h in sized], depth=self.path_depth, deadline=deadline,
                           transparent=self.transparent, ignore={id(scan["big"]), id(scan["collected"]), id(sized)})
        timing["paths_s"] = round(time.perf_counter() - mark, 3)
        mark = time.perf_counter()
        if read is not None:
            self.lines.update(read["lines"])
        named_before = self.named
        holders, named, seen_paths = [], [], set()
        for h in sized:
            obj = h["obj"]
            anchor = paths.get(id(obj))
            path = anchor["path"] if anchor else None
            if path is not None and path in seen_paths:
                continue  # a wrapper and the list it wraps: one holder
            if path is not None:
                seen_paths.add(path)
                if h["new"] and path in named_before:  # the same name, a new object (a list copied on append)
                    h["grown"] = h["items"] - named_before[path]
                    h["grown_bytes"] = h["bytes"] * h["grown"] / max(h["items"], 1)
                    h["new"] = False
            record = {
                "path": path or f"unnamed {type(obj).__name__} (no recognisable owner within {self.path_depth} references)",
                "kind": type(obj).__name__,
                "anchor": anchor["anchor"] if anchor else None,
                "items": h["items"],
                "bytes": int(h["bytes"]),
                "growth_items": h["grown"],
                "growth_per_100_steps": round(100.0 * h["grown"] / steps, 1) if steps else None,
                "bytes_per_100_steps": round(100.0 * h["grown_bytes"] / steps) if steps else None,
                "since_step": since,
                "new_since_then": h["new"],
                "item_types": _item_types(obj),
            }
            record["added_by"] = added_by(anchor) if anchor else []
            line = self.lines.get(record["path"])
            record["added_at"], record["added_at_source"] = line, "tracemalloc" if line else None
            if line is None:
                if read is not None:
                    since_t = read["tracing"].get("since_step")
                    why = (f"tracemalloc was on since step {since_t} but saw none of the newest items "
                           f"({record['item_types']}) allocated: they are allocated outside Python's allocator "
                           "(TensorFlow tensors are), or the census that started it did not name this holder"
                           if since_t is not None else read["tracing"]["state"])
                else:
                    why = untraced_note or "tracemalloc was off: this census starts it, the next one reads it"
                if record["added_by"]:
                    record["added_at"], record["added_at_source"] = record["added_by"][0], "bytecode"
                    why += "; the line is the code that adds to it, found in the bytecode"
                record["added_at_note"] = why
            holders.append(record)
            named.append((record["path"], obj, anchor))
            if len(holders) >= self.top:
                break
        timing["lines_s"] = round(time.perf_counter() - mark, 3)
        own = scan["own_bytes"] + sys.getsizeof(sized) + sys.getsizeof(candidates) + sys.getsizeof(sizer.seen)
        self.lengths = _Own((id(o), (type(o).__name__, len(o))) for o in scan["big"])
        self.named = _Own((h["path"], h["items"]) for h in holders)
        self.step = step
        self.censuses += 1
        del scan, sized, candidates, sizer, paths
        if read is not None:
            tracing = read["tracing"]
        elif trace and not tracemalloc.is_tracing():
            self._watched = named  # held until the next census reads where their new items come from
            tracing = {"state": f"started at step {step} ({self.trace_frames} frames); read at the next census",
                       "frames": self.trace_frames}
        elif tracemalloc.is_tracing():
            tracing = {"state": "on (started by someone else: left alone, not read)"}
        else:
            tracing = {"state": "off"}
        result = {"step": step, "since_step": since, "holders": holders,
                  "top_lines": read["top_lines"] if read is not None else [], "tracing": tracing,
                  "seconds": round(time.perf_counter() - started, 3), "timing": timing, "census_bytes": own,
                  "tracemalloc_bytes": tracing.get("tracemalloc_bytes")}
        if self._watched is named:
            self._tracing_since = step
            tracemalloc.start(self.trace_frames)  # last: nothing of this census is traced
        return result

    def stop(self) -> None:
        """Stop tracemalloc if a census started it (train end); let go of the holders held for it."""
        if self._tracing_since is not None and tracemalloc.is_tracing():
            tracemalloc.stop()
        self._tracing_since, self._watched, self._read = None, [], None


def _current(anchor: dict | None, obj):
    """The object now under the holder's name (a list replaced by a copy since: the copy), else `obj`."""
    if not anchor or not anchor.get("path", "").endswith(anchor.get("name") or "\0"):
        return obj
    try:
        if "owner_obj" in anchor:
            owner = anchor["owner_obj"]
            value = (owner.__dict__ if isinstance(owner, type) else vars(owner)).get(anchor["name"], obj)
        elif anchor["anchor"] == "global":
            value = vars(sys.modules[anchor["owner"]]).get(anchor["name"], obj)
        elif anchor["anchor"] == "closure":
            function = anchor["function"]
            value = function.__closure__[function.__code__.co_freevars.index(anchor["name"])].cell_contents
        else:
            return obj
    except Exception:  # noqa: BLE001
        return obj
    return value if isinstance(value, HOLDER_TYPES) or hasattr(value, "__len__") else obj


def _item_types(obj) -> str:
    items = newest_items(obj, 3)
    names = sorted({type(i).__name__ for i in items})
    return ", ".join(names)


def describe_holder(h: dict) -> str:
    """`KeepDetections.kept (list, 3040 items, 2.3 GiB, +800 items per 100 steps) added at FILE:LINE in F`."""
    rate = f", +{h['growth_per_100_steps']:g} items per 100 steps" if h.get("growth_per_100_steps") is not None else \
        f", +{h.get('growth_items')} items"
    text = f"{h['path']} ({h['kind']}, {h['items']} items, {gib(h['bytes'])}{rate})"
    if h.get("added_at"):
        text += f" added at {h['added_at']}"
    elif h.get("added_by"):
        text += f" added to by {h['added_by'][0]}"
    return text


# --------------------------------------------------------------------------------------------------
# The clues as text (framework-free: the report renders them without TensorFlow)


def retrace_text(f: dict) -> str:
    args = ", ".join(f"'{a['argument']}' ({a['what']}: {', '.join(a['values'][:3])}{', ...' if a['distinct'] > 3 else ''})"
                     for a in f["arguments"]) or "an argument (not told)"
    return (f"tf.function {f['function']}" + (f" ({f['defined_at']})" if f.get("defined_at") else "")
            + f" retraced {f['new_traces']} times ({f['traces']} traces) by {args}")


def clues_markdown(clues: dict) -> str:
    """`abort_report.json`'s `leak_clues` (or a warning's) as Markdown, for the TensorBoard text
    `guard/leak_clues` and report.md: a table of holders, retraced functions, tensors per device, the census's cost."""
    lines = []
    holders = clues.get("holders") or []
    if holders:
        lines += ["| holder | kind | items | bytes | growth per 100 steps | added at |", "|---|---|---|---|---|---|"]
        for h in holders:
            rate = "-" if h.get("growth_per_100_steps") is None else (
                f"+{h['growth_per_100_steps']:g} items, +{gib(h.get('bytes_per_100_steps'))}")
            added = (f"{h['added_at']} ({h.get('added_at_source')})" if h.get("added_at") else
                     f"? ({h.get('added_at_note', 'unknown')})")
            lines.append(f"| `{h['path']}` | {h['kind']} | {h['items']} | {gib(h['bytes'])} | {rate} | {added} |")
        lines.append("")
    else:
        lines.append("No holder grew by more than the census's thresholds." if not clues.get("census_error")
                     else f"The census failed: {clues['census_error']}")
    for f in (clues.get("retracing") or {}).get("functions") or []:
        lines.append(f"- {retrace_text(f)}")
    tensors = clues.get("tensors") or {}
    for device, d in (tensors.get("devices") or {}).items():
        lines.append(f"- {device}: {d['tensors']} eager tensors ({gib(d['tensor_bytes'])}), "
                     f"{d['variables']} variables ({gib(d['variable_bytes'])})")
    for t in tensors.get("growing") or []:
        lines.append(f"- growing: {t['kind']} {t['dtype']}{t['shape']} +{t['growth']} ({t['count']} live, {gib(t['bytes'])})")
    top = clues.get("top_lines") or {}
    for entry in (top.get("lines") or [])[:3]:
        lines.append(f"- traced: {entry['at']} +{gib(entry['bytes'])} live in {entry['count']} blocks "
                     f"(tracemalloc, steps {top.get('traced_since_step')}-{top.get('read_at_step')})")
    census = clues.get("census") or {}
    if census.get("seconds") is not None:
        lines.append(f"- census at step {census['step']}: {census['seconds']} s, its own memory "
                     f"{gib(census.get('census_bytes'))}; tracemalloc {census.get('tracing', {}).get('state', '?')}")
    return "\n".join(lines)


def clues_caption(clues: dict | None) -> str | None:
    """One line for a picture: `leak held by PATH (KIND, N items, X GiB) added at FILE:LINE`."""
    holders = (clues or {}).get("holders") or []
    if holders:
        h = holders[0]
        text = f"leak held by {h['path']} ({h['kind']}, {h['items']} items, {gib(h['bytes'])})"
        return text + (f", added at {h['added_at']}" if h.get("added_at") else "")
    functions = ((clues or {}).get("retracing") or {}).get("functions") or []
    return f"leak clue: {retrace_text(functions[0])}" if functions else None

"""Twisted's own ``Deferred`` methods, read from their source, for the Deferred probe.

``init_is_plain`` says whether ``Deferred.__init__`` is the body the hot path inlines.
``with_first_fire`` recompiles ``Deferred._startRunCallbacks`` with one statement added just
before ``self.called = True``: a call that counts the first firing. A hook *around* the
method (a C callable, or a Python wrapper) costs the interpreter the inlined Python-to-Python
call from ``callback()`` into ``_startRunCallbacks()``, measured as most of the fire path's
cost; the recompiled method keeps it, and runs in Twisted's module globals with Twisted's
file name and line numbers, so tracebacks and debug stacks read as before.

``__init__`` is not recompiled: ending it with a call to the C count (measured under
callgrind, a Klein server, per request) missed the instruction cache as often as the C
``__init__`` that replaces it (14,048 against 14,070 misses) and ran more instructions.
"""

from __future__ import annotations

import ast
import copy
import dis
import inspect
import linecache
import symtable
import types
from collections.abc import Callable
from typing import Any

#: ``Deferred.__init__``'s body, statement by statement (annotations dropped), as the probe
#: inlines it; any other body is called instead.
_PLAIN_INIT = ["self._callbacks = []", "self._canceller = canceller", "if self.debug:"]

#: The closure variable a recompiled method calls; never a name in Twisted's module.
HOOK = "_rd_hook"


def _function_def(func: Callable[..., Any]) -> ast.FunctionDef:
    """The parsed definition of ``func`` itself (read through its code object, never through
    ``__wrapped__``: a wrapper's source is the wrapper's), with its file's lines and columns
    (an indented definition is parsed inside an ``if 1:``)."""
    if not isinstance(func, types.FunctionType):
        raise TypeError("not a Python function")
    lines, first = inspect.getsourcelines(func.__code__)
    source = "".join(lines)
    indented = source[:1].isspace()
    tree = ast.parse("if 1:\n" + source if indented else source)
    node = tree.body[0].body[0] if indented else tree.body[0]  # type: ignore[attr-defined]
    if not isinstance(node, ast.FunctionDef) or node.name != func.__code__.co_name:
        raise TypeError("not a plain function definition")
    ast.increment_lineno(node, first - 2 if indented else first - 1)
    return node


def init_is_plain(init: Callable[..., None]) -> bool:
    """Whether ``init`` (Twisted's ``Deferred.__init__``) does exactly what the probe inlines:
    set ``_callbacks`` and ``_canceller``, and call into debug info only when debugging."""
    try:
        func = _function_def(init)
        if [a.arg for a in func.args.args] != ["self", "canceller"]:
            return False
        body = func.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        statements = []
        for stmt in body:
            if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                stmt = ast.Assign(targets=[stmt.target], value=stmt.value, lineno=stmt.lineno)
            statements.append(ast.unparse(stmt).splitlines()[0])
        return statements == _PLAIN_INIT
    except (OSError, TypeError, SyntaxError, IndexError):
        return False


def _is_called_true(stmt: ast.stmt) -> bool:
    """``self.called = True``."""
    return (
        isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and ast.unparse(stmt.targets[0]) == "self.called"
        and isinstance(stmt.value, ast.Constant)
        and stmt.value.value is True
    )


def _identifiers(tree: ast.AST) -> set[str]:
    """Every identifier in ``tree``, in whatever role: names, attributes, parameters,
    keywords, ``global`` names, import and except aliases, match captures..."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            continue  # the one field that holds arbitrary text
        for field, value in ast.iter_fields(node):
            if field == "type_comment":
                continue
            if isinstance(value, str):
                found.add(value)
            elif isinstance(value, list):
                found.update(item for item in value if isinstance(item, str))
    return found


def _compiles_alike_outside_its_class(func: ast.FunctionDef) -> bool:
    """Whether the method means the same compiled alone, in a closure: no decorator, no
    type parameters, no nested scope; no private name (mangled only inside a class), no
    zero-argument ``super()`` or ``__class__`` (a cell only a class body provides), no use
    of its own name (the closure binds it) or of the hook's."""
    if func.decorator_list or getattr(func, "type_params", None):
        return False
    for node in ast.walk(func):
        if node is not func and isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef
        ):
            return False
    names = set()
    for stmt in [func.args, *func.body]:
        names |= _identifiers(stmt)
    if names & {"super", "__class__", HOOK}:
        return False
    if any(isinstance(node, ast.Name) and node.id == func.name for node in ast.walk(func)):
        return False
    return not any(name.startswith("__") and not name.endswith("__") for name in names)


def _program(code: types.CodeType) -> list[tuple[str, object, object]]:
    """``code``'s instructions, their arguments and source positions, up to what compiling
    the same source elsewhere may change: a method call on an imported module is
    ``LOAD_ATTR`` in its module and ``LOAD_METHOD`` compiled alone (3.11), and jump targets
    are offsets, which follow."""
    program: list[tuple[str, object, object]] = []
    for ins in dis.get_instructions(code):
        op = "LOAD_ATTR" if ins.opname == "LOAD_METHOD" else ins.opname
        jumps = ins.opcode in dis.hasjrel or ins.opcode in dis.hasjabs
        program.append((op, None if jumps else ins.argval, ins.positions))
    return program


def with_first_fire(
    start: Callable[..., None], first_fire: Callable[[Any], object]
) -> Callable[..., None] | None:
    """``start`` (Twisted's ``Deferred._startRunCallbacks``) compiled again from its source
    with ``first_fire(self)`` called just before its ``self.called = True``, that is on a
    Deferred's first firing only, after the already-called checks. It runs in the original's
    module globals, read live, under its file name, lines and columns (the added call takes
    its neighbour's). ``None`` where that cannot be done alike, and the caller wraps ``start``
    instead: no source; a source on disk that is not the code running (compiled unedited
    first and compared); a shape that would compile differently outside its class; not
    exactly one top-level ``self.called = True``."""
    if not isinstance(start, types.FunctionType) or start.__closure__:
        return None
    try:
        func = _function_def(start)
        if not _compiles_alike_outside_its_class(func):
            return None
        marks = [i for i, stmt in enumerate(func.body) if _is_called_true(stmt)]
        if len(marks) != 1:
            return None
        # defaults and annotations are the original's objects, never evaluated again
        func.args.defaults = []
        func.args.kw_defaults = [None] * len(func.args.kwonlyargs)
        for arg in [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]:
            arg.annotation = None
        for rest in (func.args.vararg, func.args.kwarg):
            if rest is not None:
                rest.annotation = None
        func.returns = None
        imported: frozenset[str] = frozenset()
        unedited = _compiled(start, copy.deepcopy(func), first_fire, imported)
        if _program(unedited.__code__) != _program(start.__code__):
            # 3.13's compiler calls a method of a name its module imports as LOAD_ATTR +
            # PUSH_NULL, not as a method load: compile again with those imports declared
            imported = _module_imports(start) & _identifiers(func)
            if not imported:
                return None
            unedited = _compiled(start, copy.deepcopy(func), first_fire, imported)
            if _program(unedited.__code__) != _program(start.__code__):
                return None  # the file changed since it was imported, or compiles otherwise
        call = ast.Expr(ast.Call(ast.Name(HOOK, ast.Load()), [ast.Name("self", ast.Load())], []))
        func.body.insert(marks[0], ast.copy_location(call, func.body[marks[0]]))
        new = _compiled(start, func, first_fire, imported)
    except Exception:  # whatever the source holds, the caller falls back to a wrapper
        return None
    new.__defaults__ = start.__defaults__
    new.__kwdefaults__ = start.__kwdefaults__
    new.__annotations__ = dict(start.__annotations__)
    new.__doc__ = start.__doc__
    result: Callable[..., None] = new
    return result


def _module_imports(method: types.FunctionType) -> frozenset[str]:
    """The names an ``import`` binds at the top level of ``method``'s file, as its module's
    symbol table marks them (what 3.13's compiler reads to choose a plain attribute load over
    a method load): the file as the interpreter's line cache holds it."""
    filename = method.__code__.co_filename
    source = "".join(linecache.getlines(filename, method.__globals__))
    if not source:
        return frozenset()
    table = symtable.symtable(source, filename, "exec")
    return frozenset(s.get_name() for s in table.get_symbols() if s.is_imported())


def _compiled(
    method: types.FunctionType,
    func: ast.FunctionDef,
    hook: Callable[[Any], object],
    imported: frozenset[str] = frozenset(),
) -> types.FunctionType:
    """``func`` compiled inside a closure maker that binds ``hook``, in ``method``'s file and
    module globals, named as ``method`` is. Each name in ``imported`` is declared imported at
    the top of the compiled module by an ``import`` that never runs (``if False:``), so that
    the compiler treats it as the original module's symbol table does."""
    maker = ast.FunctionDef(
        name="_rd_make",
        args=ast.arguments(
            posonlyargs=[], args=[ast.arg(HOOK)], kwonlyargs=[], kw_defaults=[], defaults=[]
        ),
        body=[func, ast.Return(ast.Name(func.name, ast.Load()))],
        decorator_list=[],
    )
    declared: list[ast.stmt] = []
    if imported:
        imports: list[ast.stmt] = [ast.Import([ast.alias(name)]) for name in sorted(imported)]
        declared.append(ast.If(ast.Constant(False), imports, []))
    module = ast.fix_missing_locations(ast.Module(body=[*declared, maker], type_ignores=[]))
    made: dict[str, Any] = {}
    # the original's globals, read live as it reads them; the maker lands in `made`
    exec(compile(module, method.__code__.co_filename, "exec"), method.__globals__, made)
    new: types.FunctionType = made["_rd_make"](hook)
    new.__code__ = new.__code__.replace(co_qualname=method.__code__.co_qualname)
    return new


def bind_first_fire(recompiled: Callable[..., None], first_fire: Callable[[Any], object]) -> None:
    """Make ``recompiled`` (made by :func:`with_first_fire`) call ``first_fire`` from now on.
    Lets its code object exist before the count it calls (the compiled Tracker needs that code
    among the frames it skips, Twisted's own machinery, when it is constructed). Install time."""
    if not isinstance(recompiled, types.FunctionType) or recompiled.__closure__ is None:
        raise TypeError("not a function made by with_first_fire")
    index = recompiled.__code__.co_freevars.index(HOOK)
    recompiled.__closure__[index].cell_contents = first_fire

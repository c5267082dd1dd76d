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
import inspect
import textwrap
import types
from collections.abc import Callable
from typing import Any

#: ``Deferred.__init__``'s body, statement by statement (annotations dropped), as the probe
#: inlines it; any other body is called instead.
_PLAIN_INIT = ["self._callbacks = []", "self._canceller = canceller", "if self.debug:"]

#: The closure variable a recompiled method calls; never a name in Twisted's module.
HOOK = "_rd_hook"


def _function_def(func: Callable[..., Any]) -> tuple[ast.FunctionDef, int]:
    """The parsed definition of ``func`` and its first line in its file."""
    lines, first = inspect.getsourcelines(func)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    node = tree.body[0]
    if not isinstance(node, ast.FunctionDef):
        raise TypeError("not a plain function definition")
    return node, first


def init_is_plain(init: Callable[..., None]) -> bool:
    """Whether ``init`` (Twisted's ``Deferred.__init__``) does exactly what the probe inlines:
    set ``_callbacks`` and ``_canceller``, and call into debug info only when debugging."""
    try:
        func, _ = _function_def(init)
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


def _compiles_alike_outside_its_class(func: ast.FunctionDef) -> bool:
    """Whether the method means the same compiled outside its class body: no private name
    (mangled only inside a class), no zero-argument ``super()`` or ``__class__`` (a cell
    only a class body provides), no nested scopes, no decorators."""
    if func.decorator_list:
        return False
    for node in ast.walk(func):
        if node is not func and isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef
        ):
            return False
        name = (
            node.id
            if isinstance(node, ast.Name)
            else node.attr
            if isinstance(node, ast.Attribute)
            else None
        )
        if name is None:
            continue
        if name in ("super", "__class__", HOOK):
            return False
        if name.startswith("__") and not name.endswith("__"):
            return False
    return True


def with_first_fire(
    start: Callable[..., None], first_fire: Callable[[Any], object]
) -> Callable[..., None] | None:
    """``start`` (Twisted's ``Deferred._startRunCallbacks``) recompiled to call
    ``first_fire(self)`` just before its ``self.called = True``, that is on a Deferred's first
    firing only, after the already-called checks. ``None`` when ``start`` is not a plain
    function with its source at hand and exactly one top-level ``self.called = True``: the
    caller then wraps it instead."""

    def edit(body: list[ast.stmt]) -> bool:
        marks = [i for i, stmt in enumerate(body) if _is_called_true(stmt)]
        if len(marks) != 1:
            return False
        body.insert(marks[0], ast.copy_location(_call_hook(), body[marks[0]]))
        return True

    return _recompiled(start, edit, first_fire)


def _call_hook() -> ast.stmt:
    """``_rd_hook(self)``."""
    return ast.Expr(ast.Call(ast.Name(HOOK, ast.Load()), [ast.Name("self", ast.Load())], []))


def _recompiled(
    method: Callable[..., None],
    edit: Callable[[list[ast.stmt]], bool],
    hook: Callable[[Any], object],
) -> Callable[..., None] | None:
    """``method`` compiled again from its source after ``edit`` changed its body (in place;
    False: declined), with ``hook`` bound to the closure name the edit calls. It runs in
    the original's module globals, read live, under its file name and line numbers (an added
    statement takes the line of its neighbour). ``None`` where that cannot be done alike."""
    if not isinstance(method, types.FunctionType) or method.__closure__:
        return None
    try:
        func, first_line = _function_def(method)
        if func.name != method.__name__ or not _compiles_alike_outside_its_class(func):
            return None
        if not edit(func.body):
            return None
        # annotations are copied from the original, never evaluated again
        for arg in [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]:
            arg.annotation = None
        if func.args.vararg is not None:
            func.args.vararg.annotation = None
        if func.args.kwarg is not None:
            func.args.kwarg.annotation = None
        func.returns = None
        ast.increment_lineno(func, first_line - 1)
        maker = ast.FunctionDef(
            name="_rd_make",
            args=ast.arguments(
                posonlyargs=[], args=[ast.arg(HOOK)], kwonlyargs=[], kw_defaults=[], defaults=[]
            ),
            body=[func, ast.Return(ast.Name(func.name, ast.Load()))],
            decorator_list=[],
        )
        module = ast.fix_missing_locations(ast.Module(body=[maker], type_ignores=[]))
        made: dict[str, Any] = {}
        # the original's globals, read live as it reads them; the maker lands in `made`
        exec(compile(module, method.__code__.co_filename, "exec"), method.__globals__, made)
        new = made["_rd_make"](hook)
    except (OSError, TypeError, ValueError, SyntaxError):
        return None
    new.__code__ = new.__code__.replace(co_qualname=method.__code__.co_qualname)
    new.__defaults__ = method.__defaults__
    new.__kwdefaults__ = method.__kwdefaults__
    new.__annotations__ = dict(method.__annotations__)
    new.__doc__ = method.__doc__
    result: Callable[..., None] = new
    return result

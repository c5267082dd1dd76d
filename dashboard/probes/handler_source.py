"""Twisted's ``ReactorBase.runUntilCurrent``, recompiled with each call it makes timed; and
the reactor's I/O dispatch, recompiled with its body timed.

``runUntilCurrent`` runs the thread-call queue (``f(*a, **kw)``) and every due delayed call
(``call.func(*call.args, **call.kw)``). A wrapper around the whole method could only time all
of them together; here each such statement becomes::

    _rd_t0 = _rd_clock()
    try:
        call.func(*call.args, **call.kw)
    finally:
        _rd_done(call.func, _rd_t0)

or, with the compiled timer (``dashboard._accel.HandlerTimer.call``), into one call that times
and makes it, ``_rd_call(*(call.func, call.args, call.kw))`` (a ``CALL_FUNCTION_EX`` on the
same line still, where :mod:`dashboard.probes.timer_frames` looks for the running call), with
the original's file name, line numbers and module globals, so tracebacks, log messages
and the timeouts probe's reading of the running call (:mod:`dashboard.probes.timer_frames`:
the local ``call`` on the line that calls it) are as before. The source is first compiled
unedited and compared with the running code: any difference (another Twisted, a patched
method) and :func:`with_timed_calls` returns None, and the caller falls back.

The I/O dispatch (``_doReadOrWrite(self, selectable, ...)``, asyncio's ``_readOrWrite``)
runs once per read or write, so a wrapper around it (a call more, the protocol read twice)
cost a Klein hello server ~1% of its throughput. :func:`with_timed_body` recompiles it as::

    _rd_start(selectable)
    why = None
    try:
        <Twisted's body>
    finally:
        _rd_done(<the argument that tells the event's kind>, why)

``why`` is the dispatch's own local (set on every path that uses it): true when the reactor
disconnects the descriptor after the event.
"""

from __future__ import annotations

import ast
import copy
import dis
import types
from collections.abc import Callable
from typing import Any

from dashboard.probes.deferred_source import _function_def

CLOCK = "_rd_clock"
DONE = "_rd_done"
T0 = "_rd_t0"
CALL = "_rd_call"
START = "_rd_start"
WHY = "why"
#: every name the edits bring in (a method that uses one is left alone)
RESERVED = frozenset({CLOCK, DONE, T0, CALL, START})


def _is_star_call(stmt: ast.stmt) -> bool:
    """``f(*a, **kw)``: a statement that is one call with exactly ``*args, **kwargs``."""
    if not isinstance(stmt, ast.Expr) or not isinstance(stmt.value, ast.Call):
        return False
    call = stmt.value
    return (
        len(call.args) == 1
        and isinstance(call.args[0], ast.Starred)
        and len(call.keywords) == 1
        and call.keywords[0].arg is None
    )


def _timed(stmt: ast.Expr) -> ast.stmt:
    call = stmt.value
    assert isinstance(call, ast.Call)
    start = ast.Assign(
        targets=[ast.Name(T0, ast.Store())], value=ast.Call(ast.Name(CLOCK, ast.Load()), [], [])
    )
    done = ast.Expr(
        ast.Call(
            ast.Name(DONE, ast.Load()),
            [copy.deepcopy(call.func), ast.Name(T0, ast.Load())],
            [],
        )
    )
    for node in (start, done):
        ast.copy_location(node, stmt)
        for child in ast.walk(node):
            ast.copy_location(child, stmt)
    block = ast.Try(body=[stmt], handlers=[], orelse=[], finalbody=[done])
    ast.copy_location(block, stmt)
    # two statements in one: wrapped in an `if True:` so a body keeps its length
    wrapper = ast.If(ast.Constant(True), [start, block], [])
    return ast.copy_location(wrapper, stmt)


def _timed_by_call(stmt: ast.Expr) -> ast.stmt:
    """``f(*a, **kw)`` as ``_rd_call(*(f, a, kw))``: one call, no Python frame."""
    call = stmt.value
    assert isinstance(call, ast.Call)
    star = call.args[0]
    assert isinstance(star, ast.Starred)
    packed = ast.Tuple([call.func, star.value, call.keywords[0].value], ast.Load())
    made = ast.Call(ast.Name(CALL, ast.Load()), [ast.Starred(packed, ast.Load())], [])
    new = ast.Expr(made)
    for node in ast.walk(new):
        if not hasattr(node, "lineno"):
            ast.copy_location(node, stmt)
    return ast.copy_location(new, stmt)


class _TimeCalls(ast.NodeTransformer):
    def __init__(self, by_call: bool) -> None:
        self.found = 0
        self.by_call = by_call

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        if _is_star_call(node):
            self.found += 1
            return _timed_by_call(node) if self.by_call else _timed(node)
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return node  # never inside a nested scope


def _shape(code: types.CodeType) -> list[tuple[str, object, object]]:
    """``code``'s instructions and positions, up to what compiling the same source elsewhere
    changes: method loads (3.11), jump offsets, and nested code objects' names (compared by
    their own shape instead)."""
    shape: list[tuple[str, object, object]] = []
    for ins in dis.get_instructions(code):
        op = "LOAD_ATTR" if ins.opname == "LOAD_METHOD" else ins.opname
        if ins.opcode in dis.hasjrel or ins.opcode in dis.hasjabs:
            arg: object = None
        elif isinstance(ins.argval, types.CodeType):
            arg = tuple(_shape(ins.argval))
        else:
            arg = ins.argval
        shape.append((op, arg, ins.positions))
    return shape


def _compile(
    method: types.FunctionType, func: ast.FunctionDef, closure: dict[str, Any]
) -> types.FunctionType:
    """``func`` compiled as ``method`` is (its file, globals, qualified name, defaults), with
    ``closure``'s names as free variables."""
    maker = ast.FunctionDef(
        name="_rd_make",
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(name) for name in closure],
            kwonlyargs=[],
            kw_defaults=[],
            defaults=[],
        ),
        body=[func, ast.Return(ast.Name(func.name, ast.Load()))],
        decorator_list=[],
    )
    module = ast.fix_missing_locations(
        ast.Module(body=[*_imported_names(method, func), maker], type_ignores=[])
    )
    made: dict[str, Any] = {}
    exec(compile(module, method.__code__.co_filename, "exec"), method.__globals__, made)
    new: types.FunctionType = made["_rd_make"](*closure.values())
    new.__code__ = new.__code__.replace(co_qualname=method.__code__.co_qualname)
    new.__qualname__ = method.__qualname__
    new.__doc__ = method.__doc__
    new.__defaults__ = method.__defaults__
    return new


def _imported_names(method: types.FunctionType, func: ast.FunctionDef) -> list[ast.stmt]:
    """``if False: import name`` for each module the function names from its globals.
    Python 3.13 calls ``module.f()`` without the method-call form when ``module`` was imported
    at the top of the file that compiles it; the recompiled function's file is only itself,
    so it is told which names its module imported (the block never runs)."""
    used = {node.id for node in ast.walk(func) if isinstance(node, ast.Name)}
    imported = sorted(
        name for name in used if isinstance(method.__globals__.get(name), types.ModuleType)
    )
    if not imported:
        return []
    imports: list[ast.stmt] = [ast.Import([ast.alias(name)]) for name in imported]
    return [ast.If(ast.Constant(False), imports, [])]


def with_timed_calls(
    method: Callable[..., None],
    clock: Callable[[], float],
    done: Callable[[Any, float], None],
    *,
    expected: int = 2,
    timed_call: Callable[[Any, Any, Any], None] | None = None,
) -> types.FunctionType | None:
    """``method`` (``ReactorBase.runUntilCurrent``) recompiled so that each of its
    ``f(*args, **kwargs)`` statements (``expected`` of them) is timed with ``clock`` and
    reported as ``done(f, started)``; or, given ``timed_call``, made as
    ``timed_call(f, args, kwargs)``, which times it itself. None when that cannot be done
    alike: no source, a source that does not compile to the running code, nested functions
    other than lambdas, names the edit would shadow, or not exactly ``expected`` such calls."""
    if not isinstance(method, types.FunctionType):
        return None
    closure = {CLOCK: clock, DONE: done, CALL: timed_call}
    try:
        func = _same_source(method, closure)
        if func is None:
            return None
        edit = _TimeCalls(by_call=timed_call is not None)
        edited = edit.visit(func)
        if edit.found != expected or not isinstance(edited, ast.FunctionDef):
            return None
        return _compile(method, edited, closure)
    except Exception:
        return None


def with_timed_body(
    method: Callable[..., Any],
    start: Callable[[Any], None],
    done: Callable[[Any, Any], None],
    kind_arg: str,
) -> types.FunctionType | None:
    """``method`` (a reactor's I/O dispatch, ``(self, selectable, ...)``) recompiled so that
    its body runs between ``start(selectable)`` and, however it ends, ``done(<kind_arg>,
    why)``. None when that cannot be done alike: as :func:`with_timed_calls`, or no
    ``kind_arg`` parameter, or a body that never sets ``why``."""
    if not isinstance(method, types.FunctionType):
        return None
    try:
        func = _same_source(method, {START: start, DONE: done})
        if func is None:
            return None
        params = [arg.arg for arg in func.args.args]
        stored = {
            n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
        if len(params) < 3 or kind_arg not in params[2:] or WHY not in stored:
            return None
        if WHY in params or func.args.vararg or func.args.kwarg:
            return None
        body = list(func.body)
        head: list[ast.stmt] = []
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            head.append(body.pop(0))  # the docstring stays the docstring
        if not body:
            return None
        first = body[0]
        begin = ast.Expr(
            ast.Call(ast.Name(START, ast.Load()), [ast.Name(params[1], ast.Load())], [])
        )
        unset = ast.Assign(targets=[ast.Name(WHY, ast.Store())], value=ast.Constant(None))
        end = ast.Expr(
            ast.Call(
                ast.Name(DONE, ast.Load()),
                [ast.Name(kind_arg, ast.Load()), ast.Name(WHY, ast.Load())],
                [],
            )
        )
        block = ast.Try(body=body, handlers=[], orelse=[], finalbody=[end])
        for node in (begin, unset, end, block):
            for child in ast.walk(node):
                if child not in body and not hasattr(child, "lineno"):
                    ast.copy_location(child, first)
            ast.copy_location(node, first)
        func.body = [*head, begin, unset, block]
        return _compile(method, func, {START: start, DONE: done})
    except Exception:
        return None


def _same_source(method: types.FunctionType, closure: dict[str, Any]) -> ast.FunctionDef | None:
    """``method``'s definition, ready to edit (no defaults, annotations or decorators), when
    compiling it unedited gives the running code; else None."""
    if method.__closure__:
        return None
    func = _function_def(method)
    if func.decorator_list or getattr(func, "type_params", None):
        return None
    names = {n.id for n in ast.walk(func) if isinstance(n, ast.Name)}
    if names & (RESERVED | {func.name, "super", "__class__"}):
        return None
    for node in ast.walk(func):
        if node is not func and isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        ):
            return None
    func.args.defaults = []
    func.args.kw_defaults = [None] * len(func.args.kwonlyargs)
    for arg in [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]:
        arg.annotation = None
    func.returns = None
    unedited = _compile(method, copy.deepcopy(func), closure)
    if _shape(unedited.__code__) != _shape(method.__code__):
        return None
    return func

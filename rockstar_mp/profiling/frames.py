"""Stacks: capture them cheaply (code objects and line numbers), name them later, tell what a thread waits on.

A captured stack is a tuple of ``(code, line)`` pairs, leaf first. The samplers' hot loops key stacks
by ``capture_key`` (code ids and instruction offsets: no hashing of code objects, no line tables) and
``resolve`` them once per distinct stack. ``FrameTable`` turns stacks into the raw profile's frame
table, naming each function ``module.qualname`` (pprof wants a package prefix). ``wait_kind`` reads the
call a frame is in (from its bytecode) and says what kind of wait it is: ``lock`` (acquire, wait, join,
``with lock:``, queue get/put), ``io`` (select, recv, send, read, ...), ``sleep`` (time.sleep), or
``None`` (running Python code, or a call we cannot classify). A frame blocked in a call stops at the
call instruction (3.11-3.13's ``CALL``/``CALL_KW``), or, once 3.11 has specialised it, at ``PRECALL``
(whose specialised forms make the call): both are mapped to the called name.
"""
from __future__ import annotations

import bisect
import dis
import os
import sys
import types

from . import native

MAX_DEPTH = 64

LOCK_CALLS = frozenset({"acquire", "wait", "wait_for", "join", "__enter__", "get", "put", "result",
                        "_wait_for_tstate_lock"})
IO_CALLS = frozenset({"select", "poll", "epoll", "accept", "_accept", "recv", "recv_into", "recvfrom",
                      "recvmsg", "send", "sendall", "sendto", "sendmsg", "sendfile", "read", "readinto",
                      "readline", "readlines", "write", "writelines", "flush", "connect", "connect_ex",
                      "getaddrinfo", "gethostbyname", "waitpid", "communicate", "fetchone", "fetchall",
                      "execute", "urlopen", "request", "getresponse", "do_handshake", "wait_fds"})
SLEEP_CALLS = frozenset({"sleep"})


def capture(frame: types.FrameType | None, depth: int = MAX_DEPTH) -> tuple:
    """``((code, line), ...)`` leaf first, at most ``depth`` frames."""
    out = []
    while frame is not None and depth > 0:
        out.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
        depth -= 1
    return tuple(out)


def capture_key(frame: types.FrameType | None, depth: int = MAX_DEPTH) -> tuple:
    """A cheap key of the stack for the samplers' hot loops: ``(id(code), lasti, ...)`` leaf first.
    Neither a code object's hash (it hashes the bytecode and constants, ~0.5 us each) nor a line
    number (a line-table walk) is computed: ``resolve`` does both once per distinct key, from the
    code objects ``capture_codes`` took when the key was first seen (they stay alive, so the ids in
    an equal key later are theirs)."""
    out: list = []
    append = out.append
    while frame is not None and depth > 0:
        append(id(frame.f_code))
        append(frame.f_lasti)
        frame = frame.f_back
        depth -= 1
    return tuple(out)


def capture_codes(frame: types.FrameType | None, depth: int = MAX_DEPTH) -> tuple:
    """The code objects of the stack ``capture_key`` keyed, leaf first."""
    out = []
    while frame is not None and depth > 0:
        out.append(frame.f_code)
        frame = frame.f_back
        depth -= 1
    return tuple(out)


def resolve(key: tuple, codes: tuple) -> tuple:
    """``((code, line), ...)`` (``capture``'s form) of a ``capture_key`` key and its codes."""
    return tuple((code, line_of(code, key[2 * i + 1])) for i, code in enumerate(codes))


_LINES: dict[types.CodeType, tuple[list[int], list]] = {}


def line_of(code: types.CodeType, lasti: int) -> int:
    """The source line of the instruction at byte offset ``lasti`` of ``code``."""
    table = _LINES.get(code)
    if table is None:
        starts, lines = [], []
        for start, _end, line in code.co_lines():
            starts.append(start)
            lines.append(line)
        if len(_LINES) > 50_000:
            _LINES.clear()
        table = _LINES[code] = (starts, lines)
    i = bisect.bisect_right(table[0], lasti) - 1
    line = table[1][i] if i >= 0 else None
    return line if line is not None else code.co_firstlineno


# -- naming ---------------------------------------------------------------------------------------
_MODULES: dict[str, str] = {}
_MODULES_SEEN = 0
# Profiles of several kinds name their frames at the same moment, each in its thread: without it, one
# thread skipped the scan another had started and cached every file under its base name.
_MODULES_LOCK = native.allocate_lock()


def module_name(filename: str) -> str:
    """The module a source file was imported as (``examples.app``), else its base name."""
    global _MODULES_SEEN
    name = _MODULES.get(filename)
    if name is not None:
        return name
    with _MODULES_LOCK:
        if len(sys.modules) != _MODULES_SEEN:
            for mod_name, mod in list(sys.modules.items()):
                path = getattr(mod, "__file__", None)
                if isinstance(path, str) and mod_name != "__main__":
                    _MODULES.setdefault(path, mod_name)
            _MODULES_SEEN = len(sys.modules)
        name = _MODULES.get(filename)
        if name is not None:
            return name
    base = os.path.basename(filename)
    name = base[:-3] if base.endswith(".py") else (base or "python")
    if name.startswith("<"):
        name = "python"
    _MODULES[filename] = name
    return name


def function_name(code: types.CodeType) -> str:
    return f"{module_name(code.co_filename)}.{getattr(code, 'co_qualname', code.co_name)}"


class FrameTable:
    """Interns frames into the raw profile's ``frames`` list."""

    def __init__(self, frames: list | None = None) -> None:
        self.frames = frames if frames is not None else []
        self._index: dict = {}

    def frame(self, code: types.CodeType, line: int | None) -> int:
        key = (code, line)
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.frames)
            self.frames.append([function_name(code), code.co_filename, int(line or 0),
                                int(code.co_firstlineno)])
        return i

    def named(self, name: str, filename: str = "", line: int = 0) -> int:
        key = (name, filename, line)
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.frames)
            self.frames.append([name, filename, int(line), int(line)])
        return i

    def stack(self, captured: tuple) -> list[int]:
        return [self.frame(code, line) for code, line in captured]


def text_frames(captured: tuple) -> list[list]:
    """``[[function, filename, line], ...]`` leaf first (for the text and JSON renderings)."""
    return [[function_name(code), code.co_filename, int(line or 0)] for code, line in captured]


# -- what a frame waits on ---------------------------------------------------------------------------
_CALLS: dict[int, tuple[types.CodeType, dict]] = {}  # id(code) -> (code, its call sites): no code hash


_NAME_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD", "LOAD_GLOBAL", "LOAD_NAME", "LOAD_FAST", "LOAD_DEREF",
                       "LOAD_CLASSDEREF", "LOAD_SUPER_ATTR"})


_SKIPPED_BEFORE_CALLABLE = frozenset({"PUSH_NULL", "COPY_FREE_VARS"})  # 3.13 pushes NULL after the callable
_CALL_OPS = frozenset({"CALL", "CALL_KW", "CALL_METHOD", "CALL_FUNCTION", "CALL_FUNCTION_KW"})


def _callee(instructions: list, i: int, argc: int) -> str | None:
    """The name the callable of the call whose ``argc`` stack items end before ``instructions[i]`` was
    loaded by: walk back over the instructions that pushed them (by stack effect), then over a
    ``PUSH_NULL`` (3.13 pushes it after the callable, 3.11-3.12 before)."""
    pushed = 0
    while i > 0:
        i -= 1
        ins = instructions[i]
        if pushed >= argc:
            if ins.opname in _SKIPPED_BEFORE_CALLABLE:
                continue
            return ins.argval if ins.opname in _NAME_OPS and isinstance(ins.argval, str) else None
        try:
            pushed += dis.stack_effect(ins.opcode, ins.arg if ins.opcode >= dis.HAVE_ARGUMENT else None,
                                       jump=False)
        except ValueError:
            return None
        if ins.opname.startswith(("JUMP", "POP_JUMP", "RETURN")):
            return None  # control flow inside the arguments: give up
    return None


def _call_setup(instructions: list, i: int) -> tuple[int, int]:
    """``(index of the call's first instruction, stack items its arguments take)`` for the call
    instruction at ``i``. 3.11 prefixes ``CALL`` with ``PRECALL`` (which holds the count) and maybe
    ``KW_NAMES``; 3.13's ``CALL_KW`` has the keyword names tuple on the stack, above the arguments."""
    ins = instructions[i]
    first, argc = i, ins.arg or 0
    if i > 0 and instructions[i - 1].opname == "PRECALL":
        first, argc = i - 1, instructions[i - 1].arg or 0
    if first > 0 and instructions[first - 1].opname == "KW_NAMES":
        first -= 1
    if ins.opname == "CALL_KW":
        argc += 1
    return first, argc


def _call_sites(code: types.CodeType) -> dict:
    """``{offset: called name}`` for every call in ``code``: at the call instruction, and at 3.11's
    ``PRECALL`` as well, where a warm frame stays while a builtin it calls blocks (a specialised
    ``PRECALL`` makes the call itself)."""
    entry = _CALLS.get(id(code))
    if entry is not None and entry[0] is code:
        return entry[1]
    found: dict[int, str | None] = {}
    try:
        instructions = list(dis.get_instructions(code))
        for i, ins in enumerate(instructions):
            if ins.opname in ("BEFORE_WITH", "SETUP_WITH", "BEFORE_ASYNC_WITH"):
                found[ins.offset] = "__enter__"
            elif ins.opname == "CALL_FUNCTION_EX":
                found[ins.offset] = None
            elif ins.opname in _CALL_OPS:
                first, argc = _call_setup(instructions, i)
                name = _callee(instructions, first, argc)
                found[ins.offset] = name
                if instructions[i - 1].opname == "PRECALL":
                    found[instructions[i - 1].offset] = name
    except Exception:  # pragma: no cover - exotic code objects
        pass
    if len(_CALLS) > 50_000:
        _CALLS.clear()
    _CALLS[id(code)] = (code, found)
    return found


def pending_call(frame: types.FrameType) -> str | None:
    """The name of the call ``frame`` is in, if it is in a call (best effort: the attribute or global
    loaded last before the call instruction it stopped at)."""
    return _call_sites(frame.f_code).get(frame.f_lasti)


def wait_kind(frame: types.FrameType | None) -> str | None:
    """``lock``, ``io``, ``sleep``, or None (running, or not a wait we recognise)."""
    if frame is None:
        return None
    name = pending_call(frame)
    if name in SLEEP_CALLS:
        return "sleep"
    if name in LOCK_CALLS:
        return "lock"
    if name in IO_CALLS:
        return "io"
    return None

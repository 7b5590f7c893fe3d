"""Stacks: capture them cheaply (code objects and line numbers), name them later, tell what a thread waits on.

A captured stack is a tuple of ``(code, line)`` pairs, leaf first. ``FrameTable`` turns stacks into the
raw profile's frame table, naming each function ``module.qualname`` (pprof wants a package prefix).
``wait_kind`` reads the call a frame is in (from its bytecode) and says what kind of wait it is:
``lock`` (acquire, wait, join, ``with lock:``, queue get/put), ``io`` (select, recv, send, read, ...),
``sleep`` (time.sleep), or ``None`` (running Python code, or a call we cannot classify).
"""
from __future__ import annotations

import dis
import os
import sys
import types

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


# -- naming ---------------------------------------------------------------------------------------
_MODULES: dict[str, str] = {}
_MODULES_SEEN = 0


def module_name(filename: str) -> str:
    """The module a source file was imported as (``examples.app``), else its base name."""
    global _MODULES_SEEN
    name = _MODULES.get(filename)
    if name is not None:
        return name
    if len(sys.modules) != _MODULES_SEEN:
        _MODULES_SEEN = len(sys.modules)
        for mod_name, mod in list(sys.modules.items()):
            path = getattr(mod, "__file__", None)
            if isinstance(path, str) and mod_name != "__main__":
                _MODULES.setdefault(path, mod_name)
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
_CALLS: dict[types.CodeType, dict] = {}


_NAME_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD", "LOAD_GLOBAL", "LOAD_NAME", "LOAD_FAST", "LOAD_DEREF",
                       "LOAD_CLASSDEREF", "LOAD_SUPER_ATTR"})


def _callee(instructions: list, i: int, argc: int) -> str | None:
    """The name the callable of the call whose arguments end before ``instructions[i]`` was loaded
    by: walk back over the instructions that pushed the ``argc`` arguments (by stack effect)."""
    pushed = 0
    while i > 0:
        i -= 1
        ins = instructions[i]
        if pushed >= argc:
            return ins.argval if ins.opname in _NAME_OPS and isinstance(ins.argval, str) else None
        try:
            pushed += dis.stack_effect(ins.opcode, ins.arg if ins.opcode >= dis.HAVE_ARGUMENT else None,
                                       jump=False)
        except ValueError:
            return None
        if ins.opname.startswith(("JUMP", "POP_JUMP", "RETURN")):
            return None  # control flow inside the arguments: give up
    return None


def _call_sites(code: types.CodeType) -> dict:
    """``{offset: called name}`` for every call in ``code``."""
    sites = _CALLS.get(code)
    if sites is None:
        found: dict[int, str | None] = {}
        try:
            instructions = list(dis.get_instructions(code))
            for i, ins in enumerate(instructions):
                if ins.opname in ("BEFORE_WITH", "SETUP_WITH", "BEFORE_ASYNC_WITH"):
                    found[ins.offset] = "__enter__"
                elif ins.opname == "CALL" or ins.opname.startswith("CALL_FUNCTION") or \
                        ins.opname == "CALL_METHOD":
                    j = i
                    if i > 0 and instructions[i - 1].opname == "PRECALL":  # 3.11
                        j = i - 1
                    if i > 1 and instructions[j - 1].opname == "KW_NAMES":
                        j -= 1
                    argc = instructions[j].arg if instructions[j].opname == "PRECALL" else ins.arg
                    if ins.opname == "CALL_FUNCTION_EX":
                        found[ins.offset] = None
                    else:
                        found[ins.offset] = _callee(instructions, j, argc or 0)
        except Exception:  # pragma: no cover - exotic code objects
            pass
        if len(_CALLS) > 50_000:
            _CALLS.clear()
        sites = _CALLS[code] = found
    return sites


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

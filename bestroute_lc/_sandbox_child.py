"""The untrusted side of the sandbox, and the value codec both sides share.

This file has two uses:

* The trusted parent (:mod:`bestroute_lc.sandbox`) imports it for :func:`decode_value`
  and the limits of the wire format.
* Its *source text* is what the sandboxed interpreter runs (``python -I -c <source>``),
  so the child needs nothing from this package on its path. Only the standard library
  is used here, and nothing runs at import time unless ``__name__ == "__main__"``.

Why values and not verdicts: everything inside the child's interpreter is under the
candidate's control once its code has run (it can patch ``builtins``, ``json``, find
this harness through frames, write to any file descriptor). So the child only *reports*
what an expression evaluated to, as a tagged, size-capped encoding of plain builtin
values; the parent, which never runs candidate code, decodes that into fresh builtins and
compares them with the expected values (which it never sends to the child). The worst a
cheating candidate can do is report values of its choice, which is no more than it could
do honestly by hard-coding answers to the examples it was shown.

Wire format: one JSON line per record, prefixed by a per-run nonce so that text the
code prints cannot be mistaken for a record. Tagged values are lists:
``["none"]``, ``["bool", b]``, ``["int", "digits"]``, ``["float", "repr"]``,
``["complex", "re", "im"]``, ``["str", s]``, ``["bytes", "hex"]``,
``["list"|"tuple"|"set"|"frozenset"|"iter", [items]]``, ``["dict", [[k, v], ...]]``,
``["range", start, stop, step]``, ``["repr", "text", "type name"]`` (a value of no
known type: compared by its text only), ``["sub", "type name", "repr text", value]``
(an instance of a subclass of a builtin: the plain value read through the builtin's
own methods, so an overridden ``__eq__`` has no say, plus its repr for doctest-style
comparison).
"""

from __future__ import annotations

#: Largest record (one line) either side accepts.
MAX_RECORD_BYTES = 1 << 20
#: Deepest nesting of a tagged value.
MAX_DEPTH = 48
#: Most items (all containers together) in one tagged value.
MAX_ITEMS = 200_000
#: Longest int (decimal digits), string or repr text carried in one value.
MAX_TEXT = 200_000

_CONTAINER_TAGS = ("list", "tuple", "set", "frozenset", "iter")


class ValueTooLarge(ValueError):
    """A value over the wire format's limits."""


class Opaque:
    """A decoded value of a type the codec does not carry: equal only to itself.

    Its ``repr`` is the text the child reported (used for doctest-style comparison).
    """

    __slots__ = ("text", "type_name")

    def __init__(self, text: str, type_name: str) -> None:
        self.text, self.type_name = text, type_name

    def __repr__(self) -> str:
        return self.text


def _spend(budget: list | None, depth: int) -> list:
    """One more item at ``depth``: the (shared, mutable) item budget, or ValueTooLarge."""
    budget = budget if budget is not None else [MAX_ITEMS]
    if depth > MAX_DEPTH:
        raise ValueTooLarge("value nested too deeply")
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueTooLarge("value has too many items")
    return budget


def decode_value(tagged, _depth: int = 0, _budget: list | None = None):
    """Turn a tagged value back into fresh builtin objects (strict: ``ValueError`` on
    anything malformed or over the limits). Runs in trusted processes only."""
    budget = _spend(_budget, _depth)
    if type(tagged) is not list or not tagged or type(tagged[0]) is not str:
        raise ValueError("malformed tagged value")
    tag, rest = tagged[0], tagged[1:]

    def text_at(index: int) -> str:
        item = rest[index]
        if type(item) is not str or len(item) > MAX_TEXT:
            raise ValueError(f"malformed {tag} value")
        return item

    if tag == "none" and not rest:
        return None
    if tag == "bool" and len(rest) == 1 and type(rest[0]) is bool:
        return rest[0]
    if tag == "int" and len(rest) == 1:
        digits = text_at(0)
        if not digits.lstrip("-").isdigit():
            raise ValueError("malformed int value")
        return int(digits)
    if tag == "float" and len(rest) == 1:
        return float(text_at(0))
    if tag == "complex" and len(rest) == 2:
        return complex(float(text_at(0)), float(text_at(1)))
    if tag == "str" and len(rest) == 1:
        return text_at(0)
    if tag == "bytes" and len(rest) == 1:
        return bytes.fromhex(text_at(0))
    if tag in _CONTAINER_TAGS and len(rest) == 1 and type(rest[0]) is list:
        items = [decode_value(item, _depth + 1, budget) for item in rest[0]]
        if tag == "list":
            return items
        if tag == "tuple":
            return tuple(items)
        if tag == "set":
            return set(items)
        if tag == "frozenset":
            return frozenset(items)
        return iter(items)
    if tag == "dict" and len(rest) == 1 and type(rest[0]) is list:
        result = {}
        for pair in rest[0]:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed dict value")
            result[decode_value(pair[0], _depth + 1, budget)] = decode_value(pair[1], _depth + 1, budget)
        return result
    if tag == "range" and len(rest) == 3 and all(type(x) is int for x in rest):
        return range(*rest)
    if tag == "repr" and len(rest) == 2:
        return Opaque(text_at(0), text_at(1))
    if tag == "sub" and len(rest) == 3:
        text_at(0), text_at(1)
        return decode_value(rest[2], _depth + 1, budget)
    raise ValueError(f"malformed tagged value with tag {tag!r}")


def reported_repr(tagged) -> str | None:
    """The child's repr text of a ``repr``/``sub`` value (for doctest-style comparison)."""
    if type(tagged) is list and len(tagged) == 3 and tagged[0] == "repr" and type(tagged[1]) is str:
        return tagged[1]
    if type(tagged) is list and len(tagged) == 4 and tagged[0] == "sub" and type(tagged[2]) is str:
        return tagged[2]
    return None


def _make_encoder():
    """Build the child's encoder with references to builtins taken before untrusted code
    runs (it may rebind ``builtins.type``, ``repr``...). Returns ``encode(value)``."""
    _type, _repr, _len, _isinstance, _str, _hasattr = type, repr, len, isinstance, str, hasattr
    _int, _float, _list, _tuple, _dict, _set, _frozenset = int, float, list, tuple, dict, set, frozenset
    _bool, _complex, _bytes, _range = bool, complex, bytes, range
    _int_repr, _float_repr, _str_str = int.__repr__, float.__repr__, str.__str__
    _list_iter, _tuple_iter, _dict_items = list.__iter__, tuple.__iter__, dict.items
    _set_iter, _frozenset_iter, _bytes_hex = set.__iter__, frozenset.__iter__, bytes.hex
    _builtin_scalars = (bool, int, float, complex, str, bytes, type(None))

    def safe_repr(value) -> str:
        try:
            text = _repr(value)
            if _type(text) is not _str:
                text = _str.__str__(text) if _isinstance(text, _str) else "<unrepresentable>"
        except BaseException:  # noqa: BLE001 - the value's own __repr__ is untrusted
            text = "<unrepresentable>"
        return text[:4096]

    spend = _spend

    def encode(value, depth=0, budget=None):
        budget = spend(budget, depth)
        kind = _type(value)
        if value is None:
            return ["none"]
        if kind is _bool:
            return ["bool", value is True]
        if kind is _int:
            digits = _int_repr(value)
            if _len(digits) > MAX_TEXT:
                raise ValueTooLarge("int too large")
            return ["int", digits]
        if kind is _float:
            return ["float", _float_repr(value)]
        if kind is _complex:
            return ["complex", _float_repr(value.real), _float_repr(value.imag)]
        if kind is _str:
            if _len(value) > MAX_TEXT:
                raise ValueTooLarge("string too long")
            return ["str", value]
        if kind is _bytes:
            if _len(value) > MAX_TEXT:
                raise ValueTooLarge("bytes too long")
            return ["bytes", _bytes_hex(value)]
        if kind is _list:
            return ["list", [encode(v, depth + 1, budget) for v in _list_iter(value)]]
        if kind is _tuple:
            return ["tuple", [encode(v, depth + 1, budget) for v in _tuple_iter(value)]]
        if kind is _set:
            return ["set", [encode(v, depth + 1, budget) for v in _set_iter(value)]]
        if kind is _frozenset:
            return ["frozenset", [encode(v, depth + 1, budget) for v in _frozenset_iter(value)]]
        if kind is _dict:
            return ["dict", [[encode(k, depth + 1, budget), encode(v, depth + 1, budget)] for k, v in _dict_items(value)]]
        if kind is _range:
            return ["range", value.start, value.stop, value.step]
        # A subclass of a builtin: read the plain value through the builtin's own methods.
        for base, as_plain in (
            (_bool, None),
            (_int, lambda v: _int(_int_repr(v))),
            (_float, lambda v: _float(_float_repr(v))),
            (_str, _str_str),
            (_list, lambda v: _list(_list_iter(v))),
            (_tuple, lambda v: _tuple(_tuple_iter(v))),
            (_dict, lambda v: _dict(_dict_items(v))),
            (_set, lambda v: _set(_set_iter(v))),
            (_frozenset, lambda v: _frozenset(_frozenset_iter(v))),
        ):
            if as_plain is not None and _isinstance(value, base):
                return ["sub", kind.__name__[:200], safe_repr(value), encode(as_plain(value), depth + 1, budget)]
        # numpy scalars and arrays: their plain Python equivalent.
        module = getattr(kind, "__module__", "") or ""
        if module.split(".")[0] == "numpy" and _hasattr(value, "tolist"):
            plain = value.tolist()
            if _type(plain) in _builtin_scalars or _type(plain) in (list, tuple, dict):
                return ["sub", kind.__name__[:200], safe_repr(value), encode(plain, depth + 1, budget)]
        # Lazy iterables a function may return (map, filter, generators...): materialised.
        if _hasattr(kind, "__next__") and _hasattr(kind, "__iter__"):
            items = []
            for item in value:
                items.append(encode(item, depth + 1, budget))
            return ["iter", items]
        return ["repr", safe_repr(value), kind.__name__[:200]]

    return encode


def _child_main() -> None:  # pragma: no cover - runs inside the sandbox, tested through it
    import builtins
    import io
    import json
    import os
    import sys

    stdin = sys.stdin.buffer
    job = json.loads(stdin.readline().decode("utf-8"))
    nonce = job["nonce"]

    # 1. Resource limits, hard = soft (CPU: +1 s so SIGXCPU comes before SIGKILL). In the
    #    isolation layer this process is an unprivileged uid: it cannot raise them again.
    try:
        import resource
    except ImportError:
        resource = None
    if resource is not None:
        for name, value in job["rlimits"]:
            which = getattr(resource, name, None)
            if which is None:
                continue
            try:
                _soft, hard = resource.getrlimit(which)
                soft_value = value if hard == resource.RLIM_INFINITY else min(value, hard)
                hard_value = soft_value + 1 if name == "RLIMIT_CPU" else soft_value
                if hard != resource.RLIM_INFINITY:
                    hard_value = min(hard_value, hard)
                resource.setrlimit(which, (soft_value, hard_value))
            except (ValueError, OSError):
                pass  # a limit the platform does not support
    workdir = job.get("workdir")
    if workdir:
        os.chdir(workdir)

    # 2. Friendly refusals for the common cases (the real boundary is the isolation
    #    layer: no network namespace to reach, no processes beyond RLIMIT_NPROC).
    import _socket
    import socket

    def _no_network(*_args, **_kwargs):
        raise OSError("network access is disabled in this sandbox")

    class _NoNetworkSocket(socket.socket):
        def __init__(self, *_args, **_kwargs):
            _no_network()

    socket.socket = _NoNetworkSocket
    socket.SocketType = _NoNetworkSocket
    _socket.socket = _NoNetworkSocket
    for _name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname",
                  "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "socketpair", "fromfd"):
        for module in (socket, _socket):
            if hasattr(module, _name):
                setattr(module, _name, _no_network)
    refused_events = ("socket.", "subprocess.Popen", "os.system", "os.exec", "os.spawn",
                      "os.posix_spawn", "os.fork", "os.forkpty", "pty.spawn")

    def _audit(event, _args):
        if event.startswith(refused_events):
            raise OSError("refused in this sandbox: " + event)

    sys.addaudithook(_audit)

    # 3. Records go to a private duplicate of fd 1; the code's own output is captured.
    result_fd = os.dup(1)
    dumps, encode_bytes, write = json.dumps, str.encode, os.write

    def emit(record) -> None:
        line = encode_bytes(nonce + " " + dumps(record) + "\n", "utf-8")
        if len(line) > MAX_RECORD_BYTES:
            line = encode_bytes(nonce + " " + dumps({**{k: v for k, v in record.items() if k in ("check", "id")},
                                                      "error": "result too large"}) + "\n", "utf-8")
        write(result_fd, line)

    class CappedWriter(io.TextIOBase):
        limit = 8192

        def __init__(self):
            self.parts, self.size = [], 0

        def writable(self):
            return True

        def write(self, text):
            text = str(text)
            if self.size < self.limit:
                self.parts.append(text[: self.limit - self.size])
                self.size += len(text)
            return len(text)

        def getvalue(self):
            return "".join(self.parts)

    sys.stdin = io.StringIO("")

    class CheckTimeout(BaseException):
        """BaseException so that the code's own ``except Exception`` cannot swallow it."""

    import signal

    timer_s = job["check_timeout_s"]
    use_timer = bool(timer_s) and hasattr(signal, "setitimer")
    if use_timer:
        def _on_timer(_signum, _frame):
            raise CheckTimeout()

        signal.signal(signal.SIGALRM, _on_timer)

    def start_timer():
        if use_timer:
            signal.setitimer(signal.ITIMER_REAL, timer_s)

    def stop_timer():
        if use_timer:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def describe(exc) -> str:
        if isinstance(exc, CheckTimeout):
            return "timeout"
        try:
            return (type(exc).__name__ + ": " + str(exc))[:300]
        except BaseException:  # noqa: BLE001 - a hostile __str__
            return "error"

    encode = _make_encoder()
    exception_names = {name for name, obj in vars(builtins).items()
                       if isinstance(obj, type) and issubclass(obj, BaseException)}

    def exception_record(exc) -> dict:
        name = type(exc).__name__
        return {"error": describe(exc), "exc_type": name if name in exception_names else "Exception"}

    def run_code(code: str, namespace: dict, filename: str):
        try:
            start_timer()
            exec(compile(code, filename, "exec"), namespace)
            return None
        except BaseException as exc:  # SystemExit and timeouts included
            return describe(exc)
        finally:
            stop_timer()

    def run_program(chunks, namespace) -> str | None:
        for chunk in chunks:
            sys.stdout, sys.stderr = CappedWriter(), CappedWriter()
            try:
                error = run_code(chunk["code"], namespace, chunk.get("filename", "<candidate>"))
            except CheckTimeout:
                error = "timeout"
            if error is not None and chunk["required"]:
                return error
        return None

    mode = job["mode"]
    namespace = {"__name__": "__sandboxed__", "__builtins__": builtins}

    if mode == "checks":
        # Evaluate each visible example; report the value, never a verdict.
        program_error = run_program(job["program"], namespace)
        sys.stderr = sys.__stderr__
        emit({"program_error": program_error})

        def run_check(check) -> dict:
            printed = CappedWriter()
            sys.stdout = printed
            try:
                start_timer()
                scope = namespace
                if check.get("setup"):
                    scope = dict(namespace)
                    exec(compile(check["setup"], "<example setup>", "exec"), scope)
                actual = eval(compile(check["expression"], "<example>", "eval"), scope)
                stop_timer()
                return {"value": encode(actual), "printed": printed.getvalue()}
            except BaseException as exc:
                return {"error": describe(exc), "printed": printed.getvalue()}
            finally:
                stop_timer()

        for index, check in enumerate(job["checks"]):
            record = {"error": "program failed"}
            if program_error is None:
                try:
                    record = run_check(check)
                except CheckTimeout:  # fired between the check's end and stop_timer()
                    record = {"error": "timeout"}
            sys.stdout = CappedWriter()
            emit({"check": index, **record})
        emit({"done": True})

    elif mode == "serve":
        # The candidate's side of a hidden test: load the program, then answer calls
        # (plain values in, plain values out) until stdin closes.
        program_error = run_program(job["program"], namespace)
        sys.stderr = sys.__stderr__
        emit({"ready": True, "program_error": program_error})
        while True:
            line = stdin.readline(MAX_RECORD_BYTES + 1)
            if not line:
                break
            request = json.loads(line.decode("utf-8"))
            reply = {"id": request["id"]}
            sys.stdout = CappedWriter()
            try:
                function = namespace[request["function"]]
                args = decode_value(request["args"])
                kwargs = decode_value(request["kwargs"])
                start_timer()
                reply["value"] = encode(function(*args, **kwargs))
                stop_timer()
            except BaseException as exc:
                stop_timer()
                reply.update(exception_record(exc))
            emit(reply)

    elif mode == "tests":
        # Trusted test code (the dataset's hidden tests) calling the candidate through
        # proxies: only decoded plain values ever reach it.
        call_ids = iter(range(1 << 62))

        class CandidateCallTimeout(Exception):
            pass

        def make_proxy(function_name):
            def proxy(*args, **kwargs):
                call_id = next(call_ids)
                emit({"call": {"id": call_id, "function": function_name,
                               "args": encode(list(args)), "kwargs": encode(dict(kwargs))}})
                line = stdin.readline(MAX_RECORD_BYTES + 1)
                if not line:
                    raise CandidateCallTimeout("the candidate did not answer")
                reply = json.loads(line.decode("utf-8"))
                if "value" in reply:
                    return decode_value(reply["value"])
                exc_type = getattr(builtins, reply.get("exc_type") or "", None)
                if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
                    exc_type = Exception
                raise exc_type(reply.get("error") or "candidate error")
            proxy.__name__ = function_name
            return proxy

        for function_name in job["entry_names"]:
            namespace[function_name] = make_proxy(function_name)
        error = run_program(job["program"], namespace)
        if error is None:
            for function_name in job["entry_names"]:  # the prompt's stub must not shadow them
                namespace[function_name] = make_proxy(function_name)
            namespace["candidate"] = namespace[job["entry_names"][0]]
            error = run_program([{"code": job["test_code"], "required": True, "filename": "<test>"}], namespace)
        sys.stdout = CappedWriter()
        emit({"verdict": "passed" if error is None else "failed", "error": error})
    # Skip atexit handlers and anything the code left behind.
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    _child_main()

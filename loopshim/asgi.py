"""Serve a Flask app from an ASGI server (uvicorn, hypercorn, granian), each request in
a greenlet on the server's own event loop.

::

    from flask import Flask
    from loopshim.asgi import to_asgi

    app = Flask(__name__)
    asgi_app = to_asgi(app)        # uvicorn module:asgi_app / hypercorn module:asgi_app

How a request flows (the default, ``mode="greenlet"``): the server calls the ASGI app in
a task of its loop; Flask's synchronous machinery — routing, sessions, the response —
runs in a greenlet of that task (the greenlet bridge of ``loopshim._core``). When Flask
calls an async view or hook, its ``async_to_sync`` hands the coroutine over to the task,
which awaits it on the server's loop, in the request's context, while the loop serves
every other request. Sync views and hooks run in a worker thread (``sync="thread"``, the
default) or inline (``sync="inline"``); ``mode="thread"`` runs the whole WSGI call in a
worker thread, and async calls still come back to the request's task on the loop.

.. versionadded:: 0.1
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import functools
import queue
import sys
import threading
import types
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    MutableMapping,
)
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast

try:
    import anyio
    import anyio.from_thread
    import anyio.lowlevel
    from werkzeug.exceptions import ClientDisconnected
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    from ._errors import MissingExtra

    raise MissingExtra(
        f'loopshim.asgi needs {exc.name}, which is not installed: pip install "loopshim[asgi]"',
        name=exc.name,
    ) from exc

from ._core import (
    Canceller,
    CancelReason,
    Job,
    JobSet,
    Library,
    LoopRunner,
    LoopState,
    background_job,
    bridge_available,
    bridge_owner,
    call_handling,
    changed,
    check_async_callable,
    close_own_work,
    copy_back,
    describe_callable,
    hand_over,
    handled_exception,
    logger,
    new_job,
    run_sync_in_task,
    running_library,
)
from ._core import SyncCall as _SyncCall
from ._errors import ArgumentError, MissingExtra, OptionError, ReentrantCallError, UsageError
from ._options import did_you_mean, non_negative_seconds, positive_seconds_or_none

if TYPE_CHECKING:
    import flask
    from typing_extensions import Self

__all__ = ["ServerRunner", "to_asgi"]

P = ParamSpec("P")
T = TypeVar("T")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

MODES: Final = ("greenlet", "thread")
SYNC_MODES: Final = ("thread", "inline")
#: Worker threads per server loop for sync code, as anyio's (and so Starlette's) default.
DEFAULT_THREADS: Final = 40
DEFAULT_SHUTDOWN_TIMEOUT: Final = 5.0
#: How much of a request body is read ahead so that a disconnect can be watched for
#: while an async view runs; a body still unread beyond it is left to the app.
PREFETCH_LIMIT: Final = 64 * 1024
#: A request's async call that stays suspended this long (one to two ticks of this)
#: gets a task watching for its client's disconnect.
WATCH_DELAY: Final = 0.05
#: Block size of ``send_file`` responses (the ``wsgi.file_wrapper``).
FILE_BLOCK: Final = 64 * 1024

#: In a worker thread running a request's sync code: that request.
_local = threading.local()


class _Handle:
    """What ``Job.cancel`` calls to cancel a background task on the server's loop."""

    __slots__ = ("cancel",)

    def __init__(self, cancel: Callable[[], object]) -> None:
        self.cancel = cancel


class _Workers:
    """The worker threads of a server loop for sync code: at most *size*, started as
    work arrives, daemon threads (a server that runs no lifespan never waits for
    them), ended at lifespan shutdown."""

    __slots__ = ("idle", "lock", "pending", "queue", "size", "threads")

    def __init__(self, size: int) -> None:
        self.size = size
        self.queue: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads = 0
        self.idle = 0
        self.pending = 0

    def submit(self, work: Callable[[], object]) -> None:
        self.queue.put(work)
        with self.lock:
            self.pending += 1
            if self.pending > self.idle and self.threads < self.size:
                self.threads += 1
                start = True
            else:
                start = False
        if start:
            thread = threading.Thread(
                target=self._serve, name=f"loopshim-asgi-{self.threads}", daemon=True
            )
            thread.start()

    def _serve(self) -> None:
        get, lock = self.queue.get, self.lock
        while True:
            with lock:
                self.idle += 1
            work = get()
            with lock:
                self.idle -= 1
                self.pending -= 1
            if work is None:
                return
            work()
            work = None

    def close(self) -> None:
        """End the threads once the work queued before is done (never blocks)."""
        with self.lock:
            threads, self.threads = self.threads, 0
        for _ in range(threads):
            self.queue.put(None)


class _Loop:
    """What a served app keeps for one running server loop: its ``loop_local`` values,
    its background tasks, its worker threads. Made at lifespan startup
    (or at the first request, if the server runs no lifespan), closed at shutdown."""

    __slots__ = (
        "closing",
        "jobs",
        "key",
        "library",
        "served",
        "state",
        "suspended",
        "tick",
        "ticking",
        "token",
        "workers",
    )

    def __init__(self, served: _Served, library: Library, key: object) -> None:
        self.served = served
        self.library = library
        self.key = key
        self.token = anyio.lowlevel.current_token()
        self.workers = _Workers(served.threads)
        self.state = LoopState(library)
        self.state.attach(key)
        self.jobs = JobSet()
        self.closing = False
        #: Requests whose async call is suspended, to watch for a disconnect if it
        #: still is a tick later: the tick at which each was noted.
        self.suspended: dict[_Request, int] = {}
        self.tick = 0
        self.ticking = False

    def watch_later(self, request: _Request) -> None:
        """*request*'s async call has suspended: watch for its client's disconnect if
        it is still running after a full tick (:data:`WATCH_DELAY`), so that most calls
        finish without a watcher of their own. One ticker task per loop, while needed."""
        self.suspended.setdefault(request, self.tick)
        if not self.ticking:
            self.ticking = True
            self.library.start_task(
                self._ticker, context=contextvars.Context(), name="loopshim-asgi-ticker"
            )

    async def _ticker(self) -> None:
        never = self.library.new_event()
        try:
            while self.suspended:
                await self.library.within(WATCH_DELAY, never.wait)
                self.tick += 1
                for request, since in list(self.suspended.items()):
                    if since < self.tick - 1:
                        del self.suspended[request]
                        if request.running and not request.finished:
                            request.start_watching()
        finally:
            self.ticking = False

    def start(self, job: Job[Any]) -> None:
        """Start a background task (on the loop's thread)."""
        if self.closing:
            job.refuse()
            return
        self.jobs.add(job)
        cancel = self.library.start_task(
            functools.partial(self._run, job),
            context=job.context,
            name=f"loopshim-asgi:{job.label}",
        )
        job.handle = _Handle(cancel)

    async def _run(self, job: Job[Any]) -> None:
        try:
            await self.library.call_in_task(job)
        finally:
            self.jobs.discard(job)

    async def aclose(self, grace: float) -> None:
        """Drain the background tasks for *grace* seconds, cancel the rest, close the
        ``loop_local`` values (at lifespan shutdown, on the loop)."""
        self.closing = True
        try:
            await close_own_work(self.library, "ASGI server's", self.state, self.jobs, grace)
        finally:
            self.workers.close()
            self.served.forget(self)

    async def to_thread(self, work: Callable[[], T]) -> T:
        """``work()`` in a worker thread; the calling task waits (a cancellation waits
        for the thread too, then goes on)."""
        wake, wait = self.library.waiter()
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append(work())
            except BaseException as exc:
                outcome.append(_Failed(exc))
            finally:
                wake()

        self.workers.submit(run)
        await wait(_ignore)
        (result,) = outcome
        if type(result) is _Failed:
            error = result.error
            del result, outcome
            raise error
        return result  # type: ignore[no-any-return]


class _Failed:
    """What a worker thread's work raised."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _ignore() -> None:
    pass


class _Request:
    """One HTTP request being served: the ASGI side (receive, send, disconnects) of the
    WSGI call that runs in the request's greenlet or in a worker thread."""

    __slots__ = (
        "buffer",
        "cancellers",
        "content_length",
        "disconnected",
        "finished",
        "headers",
        "loop",
        "more_body",
        "no_body",
        "prefetched",
        "receive",
        "running",
        "scope",
        "send",
        "served",
        "started",
        "status",
        "stop_watching",
    )

    def __init__(self, served: _Served, loop: _Loop, scope: Scope, receive: Receive, send: Send):
        self.served = served
        self.loop = loop
        self.scope = scope
        self.receive = receive
        self.send = send
        #: What has been received of the body and not read yet (``wsgi.input``, an
        #: ``_Input``, refers to the request: the request must not refer to it, or each
        #: request would leave a reference cycle for the garbage collector).
        self.buffer = bytearray()
        self.more_body = True
        self.disconnected = False
        self.finished = False
        #: Stops the disconnect watcher, once it runs.
        self.stop_watching: Callable[[], object] | None = None
        #: What cancels the async calls running now, if the client disconnects.
        self.cancellers: set[Canceller] = set()
        #: An HTTP/1 request without Content-Length or Transfer-Encoding: no body.
        self.no_body = False
        self.prefetched = False
        #: How many async calls of the request are running now.
        self.running = 0
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.started = False

    # --- from sync code: await something on the loop ------------------------------

    def wait_for(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """From the request's sync code, in its greenlet or in a worker thread: have
        ``fn(*args)`` awaited on the loop, and return its result."""
        if self.in_greenlet():
            return hand_over(fn(*args))
        return anyio.from_thread.run(fn, *args, token=self.loop.token)

    def in_greenlet(self) -> bool:
        """Whether the request's sync code runs here in its greenlet (not in a worker
        thread, which marks itself in ``_local``)."""
        return getattr(_local, "request", None) is not self

    # --- the request body ------------------------------------------------------------

    async def next_chunk(self) -> bytes | None:
        """The next piece of the request body; None once it is all read."""
        if not self.more_body:
            return None
        message = await self.receive()
        kind = message["type"]
        if kind == "http.request":
            self.more_body = more = bool(message.get("more_body", False))
            if not more and self.started:
                # Read while the response streams: a disconnect can be watched for now.
                self.start_watching()
            return bytes(message.get("body", b""))
        self.more_body = False
        if kind == "http.disconnect":
            self.disconnected = True
            raise ClientDisconnected("the client disconnected while sending the request body")
        return None

    # --- disconnects -------------------------------------------------------------------

    async def prefetch(self) -> None:
        """Before an async call, read ahead up to :data:`PREFETCH_LIMIT` of a body the
        app has not read (the app can still read it), so that a watcher may take over
        ``receive`` to see a disconnect."""
        self.prefetched = True
        while self.more_body and len(self.buffer) < PREFETCH_LIMIT:
            chunk = await self.next_chunk()
            if chunk:
                self.buffer += chunk

    def start_watching(self) -> None:
        """Start a task that waits on ``receive`` for the client's disconnect, once the
        body is all read (or known to be empty): a body the app has yet to read is
        never taken from it."""
        if self.stop_watching is not None or self.finished:
            return
        if self.more_body:
            if not self.no_body:
                return  # a body the app has yet to read: not watched
            self.more_body = False  # the watcher reads the empty body's message
        self.stop_watching = self.loop.library.start_task(
            self._watch, context=contextvars.Context(), name="loopshim-asgi-disconnect"
        )

    async def _watch(self) -> None:
        message = await self.receive()
        if message["type"] == "http.request":
            while message.get("more_body", False):  # an empty body, maybe in pieces
                message = await self.receive()
            message = await self.receive()
        if message["type"] != "http.disconnect":
            return  # the body again, which a server should never send: stop watching
        if not self.finished:
            self.disconnected = True
            for canceller in list(self.cancellers):
                canceller.cancel()

    # --- async calls -------------------------------------------------------------------

    async def call(self, job: Job[Any]) -> None:
        """Run *job* (an async view or hook) in the current task with the job's
        semantics; cancelled with the library's own cancellation if the client
        disconnects meanwhile, the caller then getting ``ClientDisconnected``. The
        disconnect watcher starts only once a call has been suspended for a tick or two
        (:data:`WATCH_DELAY`): a call that finishes sooner costs nothing more."""
        library = self.loop.library
        if self.more_body and not self.no_body and not self.prefetched:
            await self.prefetch()
        with library.canceller() as canceller:
            self.cancellers.add(canceller)
            self.running += 1
            try:
                if self.stop_watching is None:
                    await _on_suspension(library.call_in_task(job), self.suspended)
                else:
                    await library.call_in_task(job)
            finally:
                self.running -= 1
                self.cancellers.discard(canceller)
        if self.disconnected and job.error is not None and not isinstance(job.error, Exception):
            disconnected = ClientDisconnected(
                f"the client disconnected while {job.label} ran; it was cancelled"
            )
            disconnected.__context__ = job.error
            job.error = disconnected

    async def in_thread(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handling: BaseException | None = None,
    ) -> T:
        """Call sync ``fn(*args, **kwargs)`` in a worker thread, in a copy of the
        request's context (what it sets is copied back), with *handling* — the exception
        the caller was handling — as ``sys.exc_info()`` there too."""
        context = contextvars.copy_context()
        origin = contextvars.copy_context()
        result: T = await self.loop.to_thread(
            functools.partial(
                _in_worker, self, context, handling, functools.partial(fn, *args, **kwargs)
            )
        )
        if changed(context, origin):
            copy_back(context)
        return result

    # --- the response -----------------------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self.started:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status = int(status.split(" ", 1)[0])
        encoded = []
        length = None
        for name, value in headers:
            if name.lower() == "content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
            encoded.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        self.headers = encoded
        self.content_length = length
        return self.write

    def write(self, data: bytes) -> None:
        """WSGI's legacy ``write`` callable."""
        if data:
            self.send_body(bytes(data), more=True)

    def start_message(self) -> Message:
        if self.status is None:
            raise UsageError("the WSGI application returned before calling start_response()")
        self.started = True
        return {"type": "http.response.start", "status": self.status, "headers": self.headers}

    def send_body(self, data: bytes, *, more: bool) -> bool:
        """From sync code: send a piece of the body (and the start, first). False once
        the client is gone."""
        if self.disconnected:
            return False
        body = {"type": "http.response.body", "body": data, "more_body": more}
        start = None if self.started else self.start_message()
        return self.wait_for(self._send, start, body)

    async def _send(self, start: Message | None, body: Message) -> bool:
        if self.stop_watching is None and body["more_body"]:
            # A streamed response: watched for a disconnect once the body is read, which
            # a body of up to PREFETCH_LIMIT is now; a larger one when the app has read it.
            if self.more_body and not self.no_body:
                await self.prefetch()
            self.start_watching()
        try:
            if start is not None:
                await self.send(start)
            await self.send(body)
        except OSError:
            self.disconnected = True
        return not self.disconnected

    def stream(self, result: Iterable[bytes]) -> None:
        """Send *result* chunk by chunk, as it is produced, then close it (sync code).
        It is closed here, where it was iterated: a ``stream_with_context`` generator
        pushes Flask's contexts when it starts and pops them when it ends, which must
        happen in the same context (a client gone mid-stream leaves it suspended)."""
        try:
            for chunk in result:
                if chunk and not self.send_body(bytes(chunk), more=True):
                    return
            self.send_body(b"", more=False)
        finally:
            _close(result)

    def respond(self) -> list[bytes] | None:
        """Call the WSGI app (sync code, in the request's greenlet or a worker thread).
        A response of known length is returned, to be sent by the task; a streamed one
        is sent from here, chunk by chunk."""
        served = self.served
        result = served.wsgi_app(_environ(self), self.start_response)
        if type(result) is not _FileWrapper and self.content_length is not None:
            try:
                return [bytes(chunk) for chunk in result]
            finally:
                _close(result)
        if served.sync_in_thread and self.in_greenlet():
            hand_over(self.in_thread(self.stream, (result,), {}))
        else:
            self.stream(result)
        return None

    async def send_response(self, chunks: list[bytes]) -> None:
        """Send a response of known length (in the task)."""
        try:
            if not self.started:
                await self.send(self.start_message())
            last = len(chunks) - 1
            for i, chunk in enumerate(chunks):
                await self.send(
                    {"type": "http.response.body", "body": chunk, "more_body": i < last}
                )
            if not chunks:
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self.disconnected = True

    def suspended(self) -> None:
        """An async call of the request has suspended for the first time."""
        self.loop.watch_later(self)

    def end(self) -> None:
        self.finished = True
        self.loop.suspended.pop(self, None)
        stop, self.stop_watching = self.stop_watching, None
        if stop is not None:
            stop()


def _close(result: Iterable[bytes]) -> None:
    """Close a WSGI response iterable, as PEP 3333 asks."""
    close = getattr(result, "close", None)
    if close is not None:
        close()


@types.coroutine
def _on_suspension(
    coro: Coroutine[Any, Any, T], suspended: Callable[[], object]
) -> Generator[Any, Any, T]:
    """Await *coro*; the first time it suspends (yields to the loop), call
    ``suspended()``."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    suspended()
    try:
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                raise
            except BaseException as exc:
                yielded = coro.throw(exc)
            else:
                yielded = coro.send(sent)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        if sys.exc_info()[0] is GeneratorExit:
            coro.close()


def _in_worker(
    request: _Request,
    context: contextvars.Context,
    handling: BaseException | None,
    fn: Callable[[], T],
) -> T:
    """A request's sync code, in a worker thread."""
    _local.request = request
    try:
        if handling is None:
            return context.run(fn)
        return context.run(call_handling, handling, fn)
    finally:
        _local.request = None


class _Input:
    """``wsgi.input``: the request body, read from the ASGI ``receive`` as the app reads
    it (so the server applies back-pressure to the client), never buffered whole."""

    __slots__ = ("buffer", "request")

    def __init__(self, request: _Request) -> None:
        self.request = request
        self.buffer = request.buffer

    def _fill(self) -> bool:
        """Read one more piece into the buffer; False at the end of the body."""
        request = self.request
        if not request.more_body:
            return False
        chunk = request.wait_for(request.next_chunk)
        if chunk:
            self.buffer += chunk
        return chunk is not None

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self.buffer))
        while len(self.buffer) < size and self._fill():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                end += 1
                break
            if size is not None and 0 <= size <= len(self.buffer):
                end = size
                break
            if not self._fill():
                end = len(self.buffer)
                break
        if size is not None and 0 <= size < end:
            end = size
        return self._take(end)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class _FileWrapper:
    """``wsgi.file_wrapper``: ``send_file`` responses, read in blocks of
    :data:`FILE_BLOCK`, in a worker thread with ``sync="thread"``."""

    __slots__ = ("block", "file")

    def __init__(self, file: Any, block_size: int = FILE_BLOCK) -> None:
        self.file = file
        self.block = max(block_size, FILE_BLOCK)

    def __iter__(self) -> Iterator[bytes]:
        read = self.file.read
        while True:
            data = read(self.block)
            if not data:
                return
            yield data

    def close(self) -> None:
        close = getattr(self.file, "close", None)
        if close is not None:
            close()


def _environ(request: _Request) -> dict[str, Any]:
    """The WSGI environ of an ASGI HTTP scope (PEP 3333)."""
    scope = request.scope
    root = scope.get("root_path", "")
    path = scope["path"]
    if root and path.startswith(root):
        path = path[len(root) :]
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root.encode().decode("latin-1"),
        "PATH_INFO": path.encode().decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]) if server[1] is not None else "80",
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": _Input(request),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": _FileWrapper,
        "asgi.scope": scope,
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = "HTTP_" + name
        value = raw_value.decode("latin-1")
        if name in environ:
            value = environ[name] + ("; " if name == "HTTP_COOKIE" else ",") + value
        environ[name] = value
    # HTTP/1 without Content-Length or Transfer-Encoding: the body is empty (RFC 9112).
    request.no_body = environ["SERVER_PROTOCOL"] in ("HTTP/1.1", "HTTP/1.0") and (
        environ.get("CONTENT_LENGTH", "0") == "0" and "HTTP_TRANSFER_ENCODING" not in environ
    )
    return environ


class _Served:
    """The served app: its options, and how its async and sync calls reach the loop."""

    def __init__(
        self,
        wsgi_app: WSGIApp,
        mode: str,
        sync: str,
        threads: int,
        timeout: float | None,
        shutdown_timeout: float,
        fallback: Callable[..., Any] | None,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.mode = mode
        self.sync_in_thread = sync == "thread"
        self.threads = threads
        self.timeout = timeout
        self.shutdown_timeout = shutdown_timeout
        #: ``call(fn, *args, **kwargs)`` for async calls outside a served request.
        self.fallback = fallback
        self._loops: dict[object, _Loop] = {}
        self._last: _Loop | None = None
        self._lock = threading.Lock()

    # --- loops --------------------------------------------------------------------------

    def current_loop(self) -> _Loop:
        """The record of the loop running this task, made on first use."""
        library = running_library()
        if library is None:
            raise UsageError("the ASGI application must be called by an ASGI server's event loop")
        key = library.current_loop_key()
        last = self._last
        if last is not None and last.key is key:
            return last
        loop = self._loops.get(key)
        if loop is None:
            with self._lock:
                loop = self._loops[key] = _Loop(self, library, key)
        self._last = loop
        return loop

    def forget(self, loop: _Loop) -> None:
        with self._lock:
            if self._loops.get(loop.key) is loop:
                del self._loops[loop.key]
            if self._last is loop:
                self._last = None

    def any_loop(self) -> _Loop | None:
        """A loop serving this app (for calls from threads the server did not start)."""
        last = self._last
        if last is not None and not last.closing:
            return last
        with self._lock:
            return next((loop for loop in self._loops.values() if not loop.closing), None)

    # --- calls from sync code -------------------------------------------------------------

    def job(
        self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any, owner: object
    ) -> Job[Any]:
        return new_job(fn, args, kwargs, self.timeout, None, owner)

    def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        """What the app's ``async_to_sync`` callables call: in a served request (its
        greenlet, a coroutine of it, or a worker thread running its sync code), the
        request's task awaits ``fn(*args, **kwargs)`` on the server's loop; elsewhere
        (the test client, a CLI command) the app's own runner runs it."""
        owner = bridge_owner()
        # In a bridge greenlet, hand_over steps the coroutine right there: sync code it
        # calls is in that greenlet too, so the job needs no bridge of its own (owner
        # None). A bridge started here would also be wrong: a greenlet keeps the recursion
        # depth of the place it was first switched to, and pooled bridge greenlets first
        # started inside others would each start deeper, until RecursionError.
        if type(owner) is _Request and owner.served is self:
            job = self.job(fn, args, kwargs, None)
            hand_over(owner.call(job))
            return job.outcome()
        if type(owner) is _Loop and owner.served is self:  # a background task's sync code
            job = self.job(fn, args, kwargs, None)
            hand_over(owner.library.call_in_task(job))
            return job.outcome()
        request = getattr(_local, "request", None)
        if request is not None and request.served is self:
            # From a worker thread: a task of its own on the loop, bridged so that sync
            # code the coroutine calls can hand calls over to it in turn.
            job = self.job(fn, args, kwargs, request)
            anyio.from_thread.run(request.call, job, token=request.loop.token)
            return job.outcome()
        if self.fallback is None:
            raise UsageError(
                f"{describe_callable(fn)} was called outside a request served by the ASGI "
                "server, and this app has no runner of its own for that"
            )
        return self.fallback(fn, *args, **kwargs)

    def sync_on_loop(self) -> bool:
        """Whether a sync function called now should go to a worker thread: sync code
        runs in threads and this is a served request's code on the loop."""
        if not self.sync_in_thread:
            return False
        owner = bridge_owner()
        return type(owner) is _Request and owner.served is self

    def call_sync(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """A sync view or hook: on the loop (the request's greenlet), in a worker
        thread; anywhere else, called here."""
        owner = bridge_owner()
        if type(owner) is _Request and owner.served is self:
            return hand_over(owner.in_thread(fn, args, kwargs, handled_exception()))
        return fn(*args, **kwargs)

    def async_to_sync(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        """The app's ``async_to_sync``."""
        check_async_callable(fn, "async_to_sync")
        return _SyncCall(self.call, fn)

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)
        elif kind == "websocket":
            # A WSGI app has no websockets: refuse the handshake (the server answers 403).
            await receive()
            await send({"type": "websocket.close", "code": 1000})
        else:
            raise UsageError(f"loopshim's ASGI bridge serves HTTP only, not {kind!r}")

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _Request(self, self.current_loop(), scope, receive, send)
        try:
            if self.mode == "greenlet":
                chunks = await run_sync_in_task(request.respond, request)
            else:
                chunks = await request.loop.to_thread(
                    functools.partial(
                        _in_worker, request, contextvars.copy_context(), None, request.respond
                    )
                )
            if chunks is not None and not request.disconnected:
                # One yield to the loop before the response goes out, so that a request
                # whose view never waits takes two loop iterations, not one. uvloop
                # (libuv) accepts one new connection per loop iteration, and an iteration
                # runs a step of every busy request: in one step, each iteration ran the
                # whole work of every busy request, and 100 connections opened at once
                # under load were accepted over ~800 ms instead of ~340 ms (Quart: ~330);
                # their first requests waited that long, which wrk's latency correction
                # counts many times over (p99 2.5-5x Quart's, the same median). The yield
                # costs no measurable CPU per request (benchmarks/asgi.py, trivial).
                await anyio.lowlevel.checkpoint()
                await request.send_response(chunks)
        except ClientDisconnected:
            if not request.disconnected:
                raise
        finally:
            request.end()

    async def lifespan(self, receive: Receive, send: Send) -> None:
        loop: _Loop | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    loop = self.current_loop()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if loop is not None:
                        await loop.aclose(self.shutdown_timeout)
                except Exception as exc:
                    logger.exception("closing the ASGI server's loop state failed")
                    await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


class ServerRunner:
    """The runner of an app served by :func:`to_asgi`: its loop is the ASGI server's.

    ``LoopShim.runner(app)`` returns it once the app is served. ``spawn`` starts a
    background task on the server's loop (drained for ``shutdown_timeout`` seconds at
    lifespan shutdown, then cancelled); ``run`` runs a coroutine there — in the request's
    own task when called from a served request, else (from another thread) as a task of
    the server's loop, blocking the caller. With no server loop running (the test
    client, a CLI command), both use the app's own runner, ``LoopShim``'s.

    ``name`` is the server's async library (``"asyncio"`` for uvloop too, ``"trio"``),
    or ``"asgi"`` before the server starts; ``scope`` is ``"server"``. ``close()``
    raises :class:`~loopshim.UsageError`: the server closes its loop.

    .. versionadded:: 0.1
    """

    scope = "server"

    def __init__(self, served: _Served, fallback: Callable[[], LoopRunner]) -> None:
        self._served = served
        #: The app's own runner (it follows ``app.loop_backend``).
        self._fallback = fallback

    @property
    def name(self) -> str:
        """The server loop's async library, or ``"asgi"`` before it runs.

        .. versionadded:: 0.1
        """
        loop = self._served.any_loop()
        return loop.library.name if loop is not None else "asgi"

    def _owner_loop(self) -> _Loop | None:
        """The server loop running in this thread, if any."""
        library = running_library()
        if library is None:
            return None
        key = library.current_loop_key()
        for loop in list(self._served._loops.values()):
            if loop.key is key:
                return loop
        return None

    def run(self, async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``async_fn(*args, **kwargs)`` on the server's loop and return its result.

        .. versionadded:: 0.1
        """
        check_async_callable(async_fn, "run")
        served = self._served
        owner = bridge_owner()
        request = getattr(_local, "request", None)
        in_request = type(owner) in (_Request, _Loop) or request is not None
        if in_request and getattr(owner or request, "served", None) is served:
            return served.call(async_fn, *args, **kwargs)  # type: ignore[no-any-return]
        if self._owner_loop() is not None:
            raise ReentrantCallError(
                "ServerRunner.run() was called from code running on the ASGI server's own "
                "loop outside a served request (a task of its own calling sync code): "
                "waiting here would stall the loop the call needs. In async code, await the "
                "function directly"
            )
        # From any other thread — one running another loop included (a notebook, an
        # async app) — the call blocks it until done, as a process-scope runner's does.
        loop = served.any_loop()
        if loop is None:
            return self._fallback().run(async_fn, *args, **kwargs)
        job = served.job(async_fn, args, kwargs, loop)
        anyio.from_thread.run(loop.library.call_in_task, job, token=loop.token)
        return job.outcome()  # type: ignore[no-any-return]

    async def run_async(
        self, async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``async_fn(*args, **kwargs)``: on the server's loop, simply awaited.

        .. versionadded:: 0.1
        """
        check_async_callable(async_fn, "run_async")
        if self._owner_loop() is None:
            raise UsageError(
                "ServerRunner.run_async() awaits on the ASGI server's own loop only; from "
                "another loop use a process-scope runner's run_async()"
            )
        return await async_fn(*args, **kwargs)

    def wrap(self, async_fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
        """A synchronous function that calls :meth:`run` on *async_fn*.

        .. versionadded:: 0.1
        """
        check_async_callable(async_fn, "wrap")

        @functools.wraps(async_fn)
        def run_sync(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.run(async_fn, *args, **kwargs)

        return run_sync

    def spawn(
        self, async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Start ``async_fn(*args, **kwargs)`` as a background task on the server's loop,
        in an empty context, and return at once. Drained at lifespan shutdown.

        .. versionadded:: 0.1
        """
        check_async_callable(async_fn, "spawn")
        served = self._served
        loop = self._owner_loop()
        request = getattr(_local, "request", None)
        if loop is None and request is not None and request.served is served:
            loop = request.loop
            start_from_thread = True
        else:
            start_from_thread = loop is None
            loop = loop or served.any_loop()
        if loop is None:
            return self._fallback().spawn(async_fn, *args, **kwargs)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        job = background_job(async_fn, args, kwargs, future, loop)
        if start_from_thread:
            anyio.from_thread.run_sync(loop.start, job, token=loop.token)
        else:
            loop.start(job)

        def on_done(fut: concurrent.futures.Future[T]) -> None:
            if fut.cancelled() and not job.done and job.handle is not None:
                if loop.library.current_loop_key() is loop.key:
                    job.cancel(CancelReason.CANCELLED)
                else:
                    with contextlib.suppress(anyio.RunFinishedError, RuntimeError):
                        anyio.from_thread.run_sync(
                            job.cancel, CancelReason.CANCELLED, token=loop.token
                        )

        future.add_done_callback(on_done)
        return future

    def close(self, timeout: float | None = None) -> None:
        """Refused: the server's loop is the server's to close; background tasks are
        drained at lifespan shutdown.

        .. versionadded:: 0.1
        """
        raise UsageError(
            "the runner of an app served by an ASGI server uses the server's loop, which the "
            "server closes: background tasks are drained at lifespan shutdown"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __repr__(self) -> str:
        return f"<loopshim.asgi.ServerRunner {self.name}>"


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value in choices:
        return value
    hint = did_you_mean(value, list(choices)) if isinstance(value, str) else ""
    raise OptionError(
        f"to_asgi({name}=...) must be one of {', '.join(map(repr, choices))}; got {value!r}.{hint}"
    )


def to_asgi(
    app: flask.Flask | WSGIApp,
    *,
    mode: str | None = None,
    sync: str = "thread",
    threads: int = DEFAULT_THREADS,
    timeout: float | None = None,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """Return an ASGI application serving *app* — a Flask app, or any WSGI callable.

    - ``mode="greenlet"`` (the default for a Flask app): each request runs in a greenlet
      on the server's loop. Flask's machinery (routing, session open and save, the
      response) runs there; async views and hooks are awaited by the request's task, in
      its context, with ``sys.exc_info()``, the ``timeout`` and cancellation as the
      runners give them. Needs the ``greenlet`` package.
    - ``mode="thread"`` (the only one for a plain WSGI app, as a2wsgi does): the whole
      WSGI call runs in a worker thread; async calls still come back to the request's
      task on the server's loop.
    - ``sync="thread"`` (default): in greenlet mode, sync views and hooks (whatever Flask
      passes to ``ensure_sync``), and streamed response bodies, run in a worker thread
      with the request's context; ``sync="inline"`` runs them in the greenlet, on the
      loop, for apps whose sync code never blocks.
    - ``threads``: worker threads per server loop (default 40).
    - ``timeout``: a limit in seconds for each async call (default none), raising
      :class:`TimeoutError` as the runners do.
    - ``shutdown_timeout``: at lifespan shutdown, how long background tasks started
      with ``LoopShim.runner(app).spawn(...)`` may run before they are cancelled.

    For a Flask app, :class:`loopshim.flask.LoopShim` is set up if it is not already;
    outside a served request (the test client, a CLI command) async calls keep using
    the app's runner. ``LoopShim.runner(app)`` becomes a :class:`ServerRunner`.
    Bad options raise :class:`~loopshim.OptionError` here.

    .. versionadded:: 0.1
    """
    flask_app = _flask_app(app)
    if not callable(app):
        raise ArgumentError(
            f"to_asgi() takes a Flask app or a WSGI callable, got {app!r} ({type(app).__name__})"
        )
    if mode is None:
        mode = "greenlet" if flask_app is not None else "thread"
    mode = _check_choice("mode", mode, MODES)
    sync = _check_choice("sync", sync, SYNC_MODES)
    if flask_app is None and mode == "greenlet":
        raise OptionError(
            f"to_asgi(mode='greenlet') needs a Flask app: it runs the app's async calls in "
            f"the request's task through Flask's async_to_sync, and {describe_callable(app)} "
            "is a plain WSGI callable, whose sync code would block the server's loop; use "
            "mode='thread' (the default for it)"
        )
    if mode == "thread" and sync != "thread":
        raise OptionError(
            "to_asgi(sync=...) applies to mode='greenlet'; with mode='thread' all of the "
            "app's sync code runs in a worker thread"
        )
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise OptionError(f"to_asgi(threads=...) must be an int of 1 or more; got {threads!r}")
    timeout = positive_seconds_or_none("timeout", timeout)
    shutdown_timeout = non_negative_seconds("shutdown_timeout", shutdown_timeout)
    if mode == "greenlet" and not bridge_available():
        raise MissingExtra(
            "to_asgi(mode='greenlet') runs each request in a greenlet, and the greenlet "
            'package is not installed: pip install "loopshim[asgi]"',
            name="greenlet",
        )
    if flask_app is None:
        served = _Served(app, mode, sync, threads, timeout, shutdown_timeout, None)
        return served
    from . import flask as loopshim_flask

    served = loopshim_flask._serve_asgi(
        flask_app,
        lambda wsgi_app, fallback: _Served(
            wsgi_app, mode, sync, threads, timeout, shutdown_timeout, fallback
        ),
        ServerRunner,
    )
    return _Application(served, flask_app)


class _Application:
    """The ASGI application of a served Flask app: it keeps the app alive (the app
    itself refers to the served state only, never back)."""

    __slots__ = ("_served", "app")

    def __init__(self, served: _Served, app: flask.Flask) -> None:
        self._served = served
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._served(scope, receive, send)

    def __repr__(self) -> str:
        return f"<loopshim ASGI application of {self.app!r} ({self._served.mode} mode)>"


def _flask_app(app: object) -> flask.Flask | None:
    flask_module = sys.modules.get("flask")
    if flask_module is not None and isinstance(app, flask_module.Flask):
        return cast("flask.Flask", app)
    return None

"""Flask integration through Flask's test client: every async path Flask has, on every
backend and scope."""

from __future__ import annotations

import contextvars
import functools
import inspect
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from conftest import BackendCase

import loopshim

flask = pytest.importorskip("flask")
from flask import (  # noqa: E402
    Blueprint,
    Flask,
    Response,
    copy_current_request_context,
    current_app,
    g,
    render_template_string,
    request,
    session,
    stream_with_context,
)
from flask.signals import request_started  # noqa: E402
from flask.views import MethodView, View  # noqa: E402

from loopshim.flask import LoopShim  # noqa: E402

events: list[str] = []
handed_over: list[str] = []
workers: list[threading.Thread] = []


class Teapot(Exception):
    pass


class BlueprintError(Exception):
    pass


def build_app(
    loop_backend: BackendCase, loop_scope: str, *, reentrant: bool | None = None
) -> Flask:
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SECRET_KEY="test",
        LOOPSHIM_BACKEND=loop_backend.name,
        LOOPSHIM_SCOPE=loop_scope,
        LOOPSHIM_OPTIONS=dict(loop_backend.options),
        LOOPSHIM_REENTRANT=reentrant,
    )
    LoopShim(app)

    @app.before_request
    async def before() -> None:
        await anyio.sleep(0)
        g.before = "app-before"

    @app.after_request
    async def after(response: Response) -> Response:
        await anyio.sleep(0)
        response.headers["X-After"] = "app-after"
        return response

    @app.teardown_request
    async def teardown_request(exc: BaseException | None) -> None:
        await anyio.sleep(0)
        events.append("teardown_request")

    @app.teardown_appcontext
    async def teardown_appcontext(exc: BaseException | None) -> None:
        await anyio.sleep(0)
        events.append("teardown_appcontext")

    @app.errorhandler(Teapot)
    async def teapot(error: Teapot) -> tuple[str, int]:
        await anyio.sleep(0)
        handled = sys.exc_info()[1]
        return f"handled {error} exc_info={handled is error}", 418

    @app.context_processor
    async def inject() -> dict[str, str]:
        await anyio.sleep(0)
        return {"injected": "from-async-processor"}

    @app.route("/view/<int:n>")
    async def view(n: int) -> dict[str, Any]:
        await anyio.sleep(0)
        session["visits"] = session.get("visits", 0) + 1
        return {
            "n": n * 2,
            "arg": request.args.get("q"),
            "g": g.before,
            "app": current_app.name,
            "visits": session["visits"],
        }

    @app.route("/post", methods=["POST"])
    async def post() -> str:
        await anyio.sleep(0)
        return request.get_data(as_text=True).upper()

    @app.route("/teapot")
    async def raise_teapot() -> str:
        await anyio.sleep(0)
        raise Teapot("short and stout")

    @app.route("/template")
    def sync_template() -> str:
        return render_template_string("{{ injected }}")

    @app.route("/template-from-async")
    async def async_template() -> str:
        return render_template_string("{{ injected }}")

    @app.route("/copy-context")
    async def copy_context() -> str:
        @copy_current_request_context
        async def in_request() -> None:
            await anyio.sleep(0)
            handed_over.append(request.args["who"])

        # Flask's pattern: hand the work to a thread and answer at once.
        worker = threading.Thread(target=in_request)
        worker.start()
        workers.append(worker)
        return "started"

    @app.route("/stream")
    async def stream() -> Response:
        await anyio.sleep(0)

        def generate() -> Iterator[str]:
            yield "hello "
            yield request.args["name"]

        return Response(stream_with_context(generate()))

    blueprint = Blueprint("bp", __name__, url_prefix="/bp")

    @blueprint.before_request
    async def bp_before() -> None:
        await anyio.sleep(0)
        g.bp_before = "bp-before"

    @blueprint.after_request
    async def bp_after(response: Response) -> Response:
        await anyio.sleep(0)
        response.headers["X-BP-After"] = "bp-after"
        return response

    @blueprint.errorhandler(BlueprintError)
    async def bp_error(error: BlueprintError) -> tuple[str, int]:
        return f"bp handled {error} exc_info={sys.exc_info()[1] is error}", 409

    @blueprint.route("/view")
    async def bp_view() -> str:
        await anyio.sleep(0)
        return f"{g.before}+{g.bp_before}"

    @blueprint.route("/fail")
    async def bp_fail() -> str:
        raise BlueprintError("conflict")

    app.register_blueprint(blueprint)

    class Hello(View):
        methods = ("GET",)

        async def dispatch_request(self) -> str:
            await anyio.sleep(0)
            return "hello from View"

    class Item(MethodView):
        async def get(self, item: str) -> str:
            await anyio.sleep(0)
            return f"get {item}"

        async def post(self, item: str) -> str:
            await anyio.sleep(0)
            return f"post {item} {request.get_data(as_text=True)}"

    app.add_url_rule("/hello", view_func=Hello.as_view("hello"))
    app.add_url_rule("/item/<item>", view_func=Item.as_view("item"))
    return app


@pytest.fixture
def app(loop_backend: BackendCase, loop_scope: str) -> Iterator[Flask]:
    app = build_app(loop_backend, loop_scope)
    events.clear()
    yield app
    LoopShim.runner(app).close()


def test_async_views_see_request_g_session_and_current_app(app: Flask) -> None:
    client = app.test_client()
    first = client.get("/view/21?q=x")
    assert first.status_code == 200
    assert first.json == {"n": 42, "arg": "x", "g": "app-before", "app": app.name, "visits": 1}
    assert first.headers["X-After"] == "app-after"
    assert client.get("/view/1").json["visits"] == 2  # the session cookie round-tripped
    assert client.post("/post", data="shout").text == "SHOUT"


def test_teardown_hooks_run(app: Flask) -> None:
    app.test_client().get("/view/1")
    assert events == ["teardown_request", "teardown_appcontext"]


def test_blueprint_views_hooks_and_error_handlers(app: Flask) -> None:
    client = app.test_client()
    response = client.get("/bp/view")
    assert response.text == "app-before+bp-before"
    assert response.headers["X-BP-After"] == "bp-after"
    assert response.headers["X-After"] == "app-after"
    failed = client.get("/bp/fail")
    assert (failed.status_code, failed.text) == (409, "bp handled conflict exc_info=True")


def test_async_error_handler_sees_exc_info(app: Flask) -> None:
    response = app.test_client().get("/teapot")
    assert (response.status_code, response.text) == (418, "handled short and stout exc_info=True")


def test_class_based_views(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/hello").text == "hello from View"
    assert client.get("/item/cup").text == "get cup"
    assert client.post("/item/cup", data="tea").text == "post cup tea"


def test_async_context_processor(app: Flask) -> None:
    assert app.test_client().get("/template").text == "from-async-processor"


@pytest.mark.timeout(20)
def test_async_context_processor_from_async_view(app: Flask) -> None:
    # Rendering runs sync code inside the view's coroutine; the async processor runs in
    # the view's own task through the greenlet bridge (LOOPSHIM_REENTRANT's default).
    assert app.test_client().get("/template-from-async").text == "from-async-processor"


@pytest.mark.timeout(20)
def test_without_reentrant_calls_an_async_processor_from_an_async_view_fails_clearly(
    loop_backend: BackendCase, loop_scope: str
) -> None:
    app = build_app(loop_backend, loop_scope, reentrant=False)
    with pytest.raises(loopshim.ReentrantCallError, match="LOOPSHIM_REENTRANT = True"):
        app.test_client().get("/template-from-async")


def test_copy_current_request_context(app: Flask) -> None:
    handed_over.clear()
    workers.clear()
    assert app.test_client().get("/copy-context?who=ada").text == "started"
    # The thread also pops the copied context, which runs the async teardown hooks.
    workers[0].join(10)
    assert handed_over == ["ada"]
    assert events.count("teardown_request") == 2  # the request's, and the copy's


def test_stream_with_context_from_async_view(app: Flask) -> None:
    assert app.test_client().get("/stream?name=world").text == "hello world"


def test_async_signal_receiver(app: Flask) -> None:
    seen: list[str] = []

    async def receiver(sender: Flask, **extra: Any) -> None:
        await anyio.sleep(0)
        seen.append(request.path)

    request_started.connect(receiver, app)
    try:
        app.test_client().get("/view/1")
    finally:
        request_started.disconnect(receiver, app)
    assert seen == ["/view/1"]


def test_asyncio_primitives_work_on_asyncio_and_fail_clearly_on_trio(
    loop_backend: BackendCase, loop_scope: str
) -> None:
    import asyncio

    app = Flask(__name__)
    app.config.update(TESTING=True, LOOPSHIM_BACKEND=loop_backend.name, LOOPSHIM_SCOPE=loop_scope)
    LoopShim(app)

    @app.route("/")
    async def uses_asyncio() -> str:
        await asyncio.sleep(0.001)
        return "ok"

    try:
        if loop_backend.name == "trio":
            started = time.monotonic()
            with pytest.raises(RuntimeError, match="no running event loop"):
                app.test_client().get("/")
            assert time.monotonic() - started < 10
        else:
            assert app.test_client().get("/").text == "ok"
    finally:
        LoopShim.runner(app).close()


def test_loop_backend_attribute(loop_backend: BackendCase, loop_scope: str) -> None:
    app = Flask(__name__)
    LoopShim(app)
    assert app.loop_backend == loopshim.get_runner().name  # type: ignore[attr-defined]

    @app.route("/")
    async def which() -> str:
        import sniffio

        return sniffio.current_async_library()

    assert app.test_client().get("/").text == "asyncio"
    app.loop_backend = loop_backend.name  # type: ignore[attr-defined]
    assert app.loop_backend == loop_backend.name  # type: ignore[attr-defined]
    expected = "trio" if loop_backend.name == "trio" else "asyncio"
    assert app.test_client().get("/").text == expected
    with pytest.raises(loopshim.BackendNotFound, match="available"):
        app.loop_backend = "tornado"  # type: ignore[attr-defined]
    assert app.loop_backend == loop_backend.name  # type: ignore[attr-defined]


def test_loop_backend_accepts_a_runner(loop_runner: loopshim.LoopRunner) -> None:
    app = Flask(__name__)
    LoopShim(app)

    @app.route("/")
    async def home() -> str:
        return str(threading.get_ident())

    app.loop_backend = loop_runner  # type: ignore[attr-defined]
    assert LoopShim.runner(app) is loop_runner
    assert app.loop_backend == loop_runner.name  # type: ignore[attr-defined]
    served_by = int(app.test_client().get("/").text)
    assert served_by == loop_runner.run(_thread_id)
    with pytest.raises(TypeError, match=r"takes a backend name .* or a LoopRunner; got 42"):
        app.loop_backend = 42  # type: ignore[attr-defined]
    assert LoopShim.runner(app) is loop_runner
    assert app.config["LOOPSHIM_BACKEND"] == loop_runner.name


def test_switching_the_backend_updates_the_config() -> None:
    pytest.importorskip("trio")
    app = Flask(__name__)
    LoopShim(app)
    app.loop_backend = "trio"  # type: ignore[attr-defined]
    assert app.config["LOOPSHIM_BACKEND"] == "trio"


def test_an_option_of_another_backend_names_loopshim_options() -> None:
    pytest.importorskip("trio")
    app = Flask(__name__)
    app.config.update(LOOPSHIM_BACKEND="trio", LOOPSHIM_OPTIONS={"driver": "public"})
    LoopShim(app)
    with pytest.raises(loopshim.OptionError, match=r"unknown option 'driver'.*LOOPSHIM_OPTIONS"):
        app.loop_backend = "asyncio"  # type: ignore[attr-defined]
    assert app.loop_backend == "trio"  # type: ignore[attr-defined]


def test_unhashable_options_explain_what_an_app_can_do() -> None:
    class UnhashableFactory:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> Any:
            import asyncio

            return asyncio.new_event_loop()

    app = Flask(__name__)
    app.config["LOOPSHIM_OPTIONS"] = {"loop_factory": UnhashableFactory()}
    with pytest.raises(loopshim.OptionError, match=r"must be hashable.*app\.loop_backend = runner"):
        LoopShim(app)


async def _thread_id() -> int:
    return threading.get_ident()


def test_switching_to_an_uninstalled_backend_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask(__name__)
    # Options no other test uses, so no runner for them is cached yet.
    app.config["LOOPSHIM_OPTIONS"] = {"timeout": 123.0}
    LoopShim(app)
    monkeypatch.setitem(sys.modules, "trio", None)
    with pytest.raises(loopshim.BackendUnavailable, match=r'pip install "loopshim\[trio\]"'):
        app.loop_backend = "trio"  # type: ignore[attr-defined]


def test_loop_backend_without_the_extension_says_how() -> None:
    bare = Flask(__name__)
    LoopShim(Flask(__name__))  # installs the attribute on the Flask class
    with pytest.raises(AttributeError, match=r"LoopShim\(app\)"):
        _ = bare.loop_backend  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("config", "error", "pattern"),
    [
        ({"LOOPSHIM_BACKEND": "tiro"}, loopshim.BackendNotFound, "Did you mean 'trio'"),
        ({"LOOPSHIM_SCOPE": "request"}, loopshim.OptionError, "unknown scope 'request'"),
        ({"LOOPSHIM_OPTIONS": {"timout": 1}}, loopshim.OptionError, "Did you mean 'timeout'"),
        ({"LOOPSHIM_OPTIONS": "timeout=1"}, loopshim.OptionError, "must be a dict"),
    ],
)
def test_bad_configuration_fails_at_init(config: dict[str, Any], error: type, pattern: str) -> None:
    app = Flask(__name__)
    app.config.update(config)
    with pytest.raises(error, match=pattern):
        LoopShim().init_app(app)


def test_init_app_twice_is_an_error() -> None:
    app = Flask(__name__)
    LoopShim(app)
    with pytest.raises(RuntimeError, match="already set up"):
        LoopShim(app)


# -- extension authors -------------------------------------------------------------


def audited(func: Callable[..., Any]) -> Callable[..., Any]:
    """What an extension writes: a decorator that works on sync and async views alike."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        events.append(f"audit {request.path}")
        return loopshim.ensure_sync(func)(*args, **kwargs)

    return wrapper


def test_extension_decorator_on_async_and_sync_views(app: Flask) -> None:
    @app.route("/audited-async")
    @audited
    async def audited_async() -> str:
        import sniffio

        await anyio.sleep(0)
        return sniffio.current_async_library()

    @app.route("/audited-sync")
    @audited
    def audited_sync() -> str:
        return "sync"

    client = app.test_client()
    expected = "trio" if LoopShim.runner(app).name == "trio" else "asyncio"
    assert client.get("/audited-async").text == expected
    assert client.get("/audited-sync").text == "sync"
    assert "audit /audited-async" in events
    assert "audit /audited-sync" in events


def test_ensure_sync_outside_flask() -> None:
    def sync() -> int:
        return 1

    async def coro() -> int:
        return 2

    assert loopshim.ensure_sync(sync) is sync
    assert loopshim.ensure_sync(coro)() == 2


def test_documented_override_path_with_own_ensure_sync(loop_backend: BackendCase) -> None:
    class TrioFlask(Flask):
        def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
            import inspect

            if inspect.iscoroutinefunction(func):
                return loopshim.get_runner(loop_backend.name, **loop_backend.options).wrap(func)
            return func

    app = TrioFlask(__name__)

    @app.route("/")
    async def index() -> str:
        import sniffio

        await anyio.sleep(0)
        return sniffio.current_async_library()

    expected = "trio" if loop_backend.name == "trio" else "asyncio"
    assert app.test_client().get("/").text == expected


async def documented(x: int, *, y: int = 2) -> int:
    """Adds x and y."""
    await anyio.sleep(0)
    return x + y


documented.extra = "an attribute"  # type: ignore[attr-defined]


def test_what_flask_gets_for_an_async_function_behaves_like_it(app: Flask) -> None:
    import asyncio
    import inspect

    sync = app.ensure_sync(documented)
    assert sync(1, y=3) == 4
    assert (sync.__name__, sync.__qualname__) == ("documented", "documented")
    assert sync.__doc__ == "Adds x and y."
    assert sync.__module__ == __name__
    assert sync.__wrapped__ is documented
    assert sync.extra == "an attribute"
    assert inspect.signature(sync) == inspect.signature(documented)
    assert not inspect.iscoroutinefunction(sync)
    assert not asyncio.iscoroutinefunction(sync)
    assert "documented" in repr(sync)
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = sync.missing


if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12+

    def test_what_flask_gets_never_claims_to_be_a_coroutine_function(app: Flask) -> None:
        async def marked() -> int:
            return 1

        inspect.markcoroutinefunction(marked)
        sync = app.ensure_sync(marked)
        assert sync() == 1
        assert not inspect.iscoroutinefunction(sync)

    def test_a_sync_function_marked_as_a_coroutine_function_runs_on_the_runner(
        app: Flask,
    ) -> None:
        def returns_coroutine() -> Any:
            return documented(1)

        inspect.markcoroutinefunction(returns_coroutine)
        sync = app.ensure_sync(returns_coroutine)
        assert sync is not returns_coroutine
        assert sync() == 3


def test_every_kind_of_async_callable_runs_on_the_runner(app: Flask) -> None:
    class Handler:
        async def __call__(self, x: int) -> int:
            return x + 1

        async def method(self, x: int) -> int:
            return x + 2

    def plain(x: int) -> int:
        return x

    handler = Handler()
    assert app.ensure_sync(functools.partial(documented, 1))(y=1) == 2
    assert app.ensure_sync(handler.method)(1) == 3
    assert app.async_to_sync(handler)(1) == 2  # Flask's ensure_sync passes objects through
    assert app.ensure_sync(plain) is plain
    with pytest.raises(TypeError, match="plain is a regular callable"):
        app.async_to_sync(plain)


def test_an_apps_own_ensure_sync_is_kept(loop_backend: BackendCase) -> None:
    class OwnFlask(Flask):
        def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
            events.append("own ensure_sync")
            return super().ensure_sync(func)

    app = OwnFlask(__name__)
    app.config.update(
        LOOPSHIM_BACKEND=loop_backend.name, LOOPSHIM_OPTIONS=dict(loop_backend.options)
    )
    LoopShim(app)

    @app.route("/")
    async def index() -> str:
        import sniffio

        return sniffio.current_async_library()

    events.clear()
    expected = "trio" if loop_backend.name == "trio" else "asyncio"
    try:
        assert app.test_client().get("/").text == expected
        assert events == ["own ensure_sync"]
    finally:
        LoopShim.runner(app).close()


def test_import_without_flask_gives_install_hint() -> None:
    code = (
        "import sys; sys.modules['flask'] = None\n"
        "try:\n    import loopshim.flask\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "loopshim[flask]"' in out.stdout


# -- what persists between requests --------------------------------------------------


user_id: contextvars.ContextVar[str] = contextvars.ContextVar("user_id", default="anonymous")


def test_context_variables_do_not_leak_between_requests_on_one_thread(app: Flask) -> None:
    @app.route("/login/<name>")
    async def login(name: str) -> str:
        before = user_id.get()
        user_id.set(name)
        g.user = name
        return before

    @app.route("/whoami")
    def whoami() -> str:
        return f"{user_id.get()} {getattr(g, 'user', 'no-g')}"

    client = app.test_client()  # every request runs in this one thread
    assert client.get("/login/alice").text == "anonymous"
    assert client.get("/login/bob").text == "anonymous"
    assert client.get("/whoami").text == "anonymous no-g"
    assert user_id.get() == "anonymous"


def test_streamed_responses_work_with_the_test_client_as_a_context_manager(app: Flask) -> None:
    # Flask's test client re-enters, in the test's own context, the contexts a request
    # left behind; loopshim must not run the request in a context of its own.
    @app.route("/sync-stream")
    def sync_stream() -> Response:
        def gen() -> Iterator[str]:
            yield "sync "
            yield request.path

        return Response(stream_with_context(gen()))

    @app.route("/async-stream")
    async def async_stream() -> Response:
        await anyio.sleep(0)

        def gen() -> Iterator[str]:
            yield "async "
            yield request.path

        return Response(stream_with_context(gen()))

    for path, body in [
        ("/sync-stream", "sync /sync-stream"),
        ("/async-stream", "async /async-stream"),
    ]:
        with app.test_client() as client:
            assert client.get(path).text == body
        assert not flask.has_request_context()
        assert not flask.has_app_context()


def test_values_copied_back_while_streaming_are_reset_at_close(app: Flask) -> None:
    runner = LoopShim.runner(app)

    async def login(name: str) -> None:
        user_id.set(name)

    @app.route("/stream/<name>")
    def stream_login(name: str) -> Response:
        def gen() -> Iterator[str]:
            runner.run(login, name)
            yield user_id.get()

        return Response(gen())

    client = app.test_client()
    response = client.get("/stream/carol")
    assert response.text == "carol"
    response.close()
    assert user_id.get() == "anonymous"


def test_a_file_response_reaches_the_server_as_its_file_wrapper(app: Flask, tmp_path: Any) -> None:
    from werkzeug.test import EnvironBuilder
    from werkzeug.wsgi import FileWrapper

    (tmp_path / "report.txt").write_text("all good")

    @app.route("/report")
    def report() -> Any:
        return flask.send_file(tmp_path / "report.txt")

    environ = EnvironBuilder(path="/report").get_environ()
    environ["wsgi.file_wrapper"] = FileWrapper  # what gunicorn checks to use sendfile()
    result = app(environ, lambda status, headers, exc_info=None: None)
    try:
        assert isinstance(result, FileWrapper)
        assert b"".join(result) == b"all good"
    finally:
        result.close()


@pytest.mark.parametrize("requests", [0, 1])
def test_an_app_is_freed_as_soon_as_its_last_reference_goes(
    loop_backend: BackendCase, loop_scope: str, requests: int
) -> None:
    import gc
    import weakref

    async def hello() -> str:
        await anyio.sleep(0)
        return "hello"

    gc.disable()  # no reference cycle may keep it: pallets/flask#3761
    try:
        app = Flask(__name__)
        app.config.update(
            LOOPSHIM_BACKEND=loop_backend.name,
            LOOPSHIM_SCOPE=loop_scope,
            LOOPSHIM_OPTIONS=loop_backend.options,
        )
        LoopShim(app)
        runner = LoopShim.runner(app)  # the runner does not refer to the app
        app.add_url_rule("/", view_func=hello)
        for _ in range(requests):
            assert app.test_client().get("/").text == "hello"
        ref = weakref.ref(app)
        del app
        fresh_trio_runs = loop_backend.name == "trio" and (
            loop_scope == "call" or loop_backend.options.get("driver") == "public"
        )
        if requests and fresh_trio_runs:
            # A finished trio.run leaves its runner and tasks in reference cycles (trio's
            # own), and its main task's context holds the request until they are
            # collected.
            gc.collect()
        assert ref() is None
        runner.close()
    finally:
        gc.enable()


def test_loop_backend_is_an_ordinary_attribute_for_apps_without_loopshim() -> None:
    plain = Flask(__name__)
    LoopShim(Flask(__name__))  # sets the descriptor up on Flask itself
    with pytest.raises(AttributeError):
        plain.loop_backend  # noqa: B018
    plain.loop_backend = "anything"  # type: ignore[attr-defined]
    assert plain.loop_backend == "anything"  # type: ignore[attr-defined]
    del plain.loop_backend  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        plain.loop_backend  # noqa: B018


# -- background tasks ---------------------------------------------------------------


@pytest.fixture
def process_app(loop_backend: BackendCase) -> Iterator[Flask]:
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SECRET_KEY="test",
        LOOPSHIM_BACKEND=loop_backend.name,
        LOOPSHIM_SCOPE="process",
        LOOPSHIM_OPTIONS={**loop_backend.options, "shutdown_timeout": 0.5},
    )
    LoopShim(app)
    yield app
    LoopShim.runner(app).close()


def test_background_task_outlives_the_response(process_app: Flask) -> None:
    from loopshim.flask import copy_current_request_context as copy_context

    done = threading.Event()
    seen: dict[str, Any] = {}

    async def send_receipt(order: int) -> None:
        await anyio.sleep(0.2)
        seen["order"] = order
        seen["has_request"] = flask.has_request_context()
        done.set()

    async def notify() -> None:
        await anyio.sleep(0)
        seen["path"] = request.path
        seen["user"] = session["user"]

    @process_app.post("/orders/<int:order>")
    async def create_order(order: int) -> tuple[str, int]:
        session["user"] = "ada"
        LoopShim.runner().spawn(send_receipt, order)
        LoopShim.runner().spawn(copy_context(notify))
        return "accepted", 202

    started = time.monotonic()
    response = process_app.test_client().post("/orders/7")
    assert response.status_code == 202
    assert time.monotonic() - started < 0.2  # answered before the task finished
    assert not done.is_set()
    assert done.wait(10)
    assert seen["order"] == 7
    assert seen["has_request"] is False  # not handed over: no request context
    deadline = time.monotonic() + 10
    while "path" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (seen["path"], seen["user"]) == ("/orders/7", "ada")  # handed over explicitly


def test_unfinished_background_tasks_drain_then_cancel_at_shutdown(process_app: Flask) -> None:
    outcome: dict[str, str] = {}

    async def short() -> None:
        await anyio.sleep(0.1)
        outcome["short"] = "finished"

    async def endless() -> None:
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            outcome["endless"] = "cancelled"
            raise

    @process_app.post("/work")
    async def work() -> str:
        LoopShim.runner().spawn(short)
        LoopShim.runner().spawn(endless)
        return "ok"

    assert process_app.test_client().post("/work").text == "ok"
    started = time.monotonic()
    LoopShim.runner(process_app).close()
    assert time.monotonic() - started < 5
    assert outcome == {"short": "finished", "endless": "cancelled"}


def test_copy_current_request_context_outside_a_request() -> None:
    from loopshim.flask import copy_current_request_context as copy_context

    async def f() -> None:
        pass

    with pytest.raises(RuntimeError, match="needs a request context"):
        copy_context(f)

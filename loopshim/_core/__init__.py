"""loopshim's core: the machinery every backend shares. This is the one import surface
of the package's private core, for the integrations (``flask``, ``wsgi``, the pytest
plugin, the CLI) and for the backends; nothing outside ``_core`` imports its modules
directly."""

from __future__ import annotations

from ._activity import LoopActivity
from ._backend import (
    CANCEL_GRACE,
    CLEANUP_GRACE,
    SHUTDOWN_OVERHEAD,
    AsyncEvent,
    Backend,
    Canceller,
    DrivenLoop,
    Library,
    LoopThread,
    libraries,
    library,
    machinery_of,
    register_library,
    running_library,
)
from ._bridge import available as bridge_available
from ._bridge import bridge_owner, bridged, hand_over, run_sync_in_task
from ._checks import (
    check_async_callable,
    close_in_loop_error,
    foreign_loop_error,
    is_async_callable,
    is_plain_async_def,
    own_loop_error,
)
from ._gevent import native_selector, refuse_backend, refuse_scope, threading_patched
from ._job import (
    CancelReason,
    CopyBackLog,
    Job,
    add_note,
    background_job,
    call_handling,
    changed,
    copied_back,
    copy_back,
    describe_callable,
    handled_exception,
    job_of,
    log_cancelled_at_close,
)
from ._log import logger
from ._loop_local import LoopLocal, LoopState, loop_local
from ._protocol import LoopRunner
from ._registry import (
    BUILTIN_BACKENDS,
    DEFAULT_BACKEND,
    ENV_VAR,
    available_backends,
    backend_origin,
    default_backend,
    get_runner,
    known_backends,
    load_backend,
    register_backend,
    run,
)
from ._runner import Runner
from ._scopes import new_job
from ._shutdown import JobSet, close_own_work
from ._sync_call import SyncCall, direct_call, sync_caller_maker

__all__ = [
    "BUILTIN_BACKENDS",
    "CANCEL_GRACE",
    "CLEANUP_GRACE",
    "DEFAULT_BACKEND",
    "ENV_VAR",
    "SHUTDOWN_OVERHEAD",
    "AsyncEvent",
    "Backend",
    "CancelReason",
    "Canceller",
    "CopyBackLog",
    "DrivenLoop",
    "Job",
    "JobSet",
    "Library",
    "LoopActivity",
    "LoopLocal",
    "LoopRunner",
    "LoopState",
    "LoopThread",
    "Runner",
    "SyncCall",
    "add_note",
    "available_backends",
    "backend_origin",
    "background_job",
    "bridge_available",
    "bridge_owner",
    "bridged",
    "call_handling",
    "changed",
    "check_async_callable",
    "close_in_loop_error",
    "close_own_work",
    "copied_back",
    "copy_back",
    "default_backend",
    "describe_callable",
    "direct_call",
    "foreign_loop_error",
    "get_runner",
    "hand_over",
    "handled_exception",
    "is_async_callable",
    "is_plain_async_def",
    "job_of",
    "known_backends",
    "libraries",
    "library",
    "load_backend",
    "log_cancelled_at_close",
    "logger",
    "loop_local",
    "machinery_of",
    "native_selector",
    "new_job",
    "own_loop_error",
    "refuse_backend",
    "refuse_scope",
    "register_backend",
    "register_library",
    "run",
    "run_sync_in_task",
    "running_library",
    "sync_caller_maker",
    "threading_patched",
]

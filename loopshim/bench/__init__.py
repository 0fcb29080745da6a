"""The benchmark behind ``loopshim bench``: loopshim's backends x scopes side by side with
the peers a user would otherwise pick, on the same workloads, interleaved in one run.

Only :mod:`loopshim.cli` imports this package. Its modules, one job each:

``_contenders``  what is compared: a contender, and loopshim's runners as contenders
``_peers``       the peers: Flask's default (the baseline), the ``run`` functions, anyio's
                 portal, and the hand-written recipes that are the scopes' floors
``_async_peers`` the peers of calls from async code: greenback, nest_asyncio, awaiting
                 directly, and the recipes that await a call on another loop by hand
``_hosts``       the event loops kept by hand: per caller thread, in a thread of their
                 own, and the hosts that run a coroutine in the caller thread
``_isolated``    a contender run in a process of its own (nest_asyncio)
``_workloads``   what one call does
``_timing``      timing one batch of calls, wherever it runs
``_results``     the data of a run: settings, cells, the result
``_plan``        which cells a run measures, and the install line for those it cannot
``_measure``     the interleaved measurement, its time budget and its estimate
``_targets``     loopshim's performance targets, as ratios to what the same run measured
``_format``      how durations and comparisons with the baseline are written
``_table``       the text report
``_json``        the ``--json`` document
``_plot``        the ``--plot`` picture (matplotlib)
``_progress``    the progress line on a terminal
``_command``     the subcommand's options and what it does with them
``_internals``   the one module that imports loopshim's private modules
"""

from __future__ import annotations

from ._command import add_bench_command

__all__ = ["add_bench_command"]

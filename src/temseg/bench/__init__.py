"""``temseg bench``: pipeline throughput and latency, from bare engine to the daemon.

::

    report = run_bench(size=512, frames=20, backend="auto", device="auto", threads=0)
    print(format_report(report))        # table, ratios, targets
    json.dumps(report.to_dict())        # every figure

Stages: (a) the bare engine on preloaded, normalised, padded arrays; (b)
TIFF decode; (c) a naive notebook loop (tifffile + PyTorch eager, one frame
at a time); (d) the daemon end to end through ZeroMQ, as a burst and paced.
"""

from temseg.bench.daemon_stage import BenchError
from temseg.bench.run import BenchReport, Target, evaluate, format_report, run_bench
from temseg.bench.stats import StageResult

__all__ = [
    "BenchError",
    "BenchReport",
    "StageResult",
    "Target",
    "evaluate",
    "format_report",
    "run_bench",
]

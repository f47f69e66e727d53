"""How long does the command line take to answer before it does any work? ``--help``, ``fit-free --help``,
``scorers`` and a bad-option error, for the current code and for an older source tree (``--before-src``,
e.g. ``git archive <commit> src | tar -x -C /tmp/before``), each run ``--repeats`` times in a fresh process
(median and min, and the first run: a command's ``--help`` is rendered once per code version, then served from
a cache). ``--before-module``: the older tree's entry point (``lightning_prune.cli`` before ``entry`` existed).

Writes ``benchmarks/results/cli_startup.csv`` and ``.md``. Re-run:

    python benchmarks/bench_cli_startup.py --before-src /tmp/before/src --before-label 302a6da
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_io import markdown_table, write_csv, write_report

SRC = Path(__file__).resolve().parents[1] / "src"
COMMANDS = {
    "--help": ["--help"],
    "fit-free --help": ["fit-free", "--help"],
    "scorers": ["scorers"],
    "error: unknown option": ["fit-free", "--no_such_option", "1"],
}


def time_command(src: Path, module: str, args: list[str]) -> tuple[float, int]:
    """Wall time and output lines of ``python -c 'from <module> import main; main()' args`` (``src`` on the path)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    code = f"import sys; from {module} import main; main(sys.argv[1:])"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    return time.perf_counter() - start, len((done.stdout + done.stderr).splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-src", type=Path, required=True, help="src/ folder of the older tree")
    parser.add_argument("--before-label", default="before", help="what the older tree is (a commit)")
    parser.add_argument("--before-module", default="lightning_prune.entry", help="the older tree's entry module")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    versions = {args.before_label: (args.before_src, args.before_module), "now": (SRC, "lightning_prune.entry")}
    rows = []
    for name, command in COMMANDS.items():
        times: dict[str, list[float]] = {label: [] for label in versions}
        lines: dict[str, int] = {}
        for _ in range(args.repeats):  # versions alternate run by run, so changing machine load hits both alike
            for label, (src, module) in versions.items():
                seconds, lines[label] = time_command(src, module, command)
                times[label].append(seconds)
        for label in versions:
            rows.append(
                {
                    "command": name,
                    "version": label,
                    "median_s": round(statistics.median(times[label]), 2),
                    "min_s": round(min(times[label]), 2),
                    "first_s": round(times[label][0], 2),
                    "output_lines": lines[label],
                }
            )
            print(rows[-1], flush=True)
    write_csv("cli_startup", rows)
    load = os.getloadavg()
    table = [
        [
            r["command"],
            r["version"],
            f"{r['median_s']:.2f}",
            f"{r['min_s']:.2f}",
            f"{r['first_s']:.2f}",
            str(r["output_lines"]),
        ]
        for r in rows
    ]
    write_report(
        "cli_startup",
        [
            "# CLI start-up: seconds until the command line answers",
            "",
            f"`python benchmarks/bench_cli_startup.py --before-src ... --repeats {args.repeats}`; each command "
            f"in a fresh process, {args.repeats} runs, OMP_NUM_THREADS=1, this project's 2-core CPU machine "
            f"(load average {load[0]:.1f} at the end: other jobs shared the cores).",
            "",
            "A command's `--help` is rendered by the LightningCLI once per code version and then served from a cache",
            "(`$XDG_CACHE_HOME/lightning-prune/help`): the first run is the cold one, the median the warm one.",
            "",
            *markdown_table(["command", "version", "median s", "min s", "first run s", "output lines"], table),
        ],
    )


if __name__ == "__main__":
    main()

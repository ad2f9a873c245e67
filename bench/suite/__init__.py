"""The bench's sections, one module each, and what they share; bench/bench.py runs them.

common     constants, budgets, statistics, /proc and process helpers
harness    what drives an extension: instant sink, feeder, environments, event bodies, exec wrappers
context    one run's state (binaries, temp dir, results, kinesalite) and the simulator run
machine    the machine and binaries the figures were taken on (always first)
startup, size, timeline, rss, cpu, callgrind, profile, flush, drain, throughput: the sections
"""

import os
import sys

# The Lambda simulator and the emulators live with the tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "tests"))

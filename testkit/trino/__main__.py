"""``python -m testkit.trino``: fetch and unpack Trino 476 with its Hive connector once (``make trino``), and
find a Java 24+ for it; without Maven or such a Java it says so and exits 0 (the Trino tests then skip,
saying why)."""

import os
import sys
import time

from testkit.trino import TrinoUnavailable, fetch, find_java

t0 = time.time()
try:
    server = fetch()
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(server) for f in fs)
    print(f"trino: {server} ({size / 1e6:.0f} MB unpacked, {time.time() - t0:.0f} s); Java: {find_java()}")
except TrinoUnavailable as e:
    print(f"trino: not ready: {e}", file=sys.stderr)

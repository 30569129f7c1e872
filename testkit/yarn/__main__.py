"""``python -m testkit.yarn``: fetch Hadoop's test-cluster jars once (``make yarn-jars``), before test lines
that may start YARN side by side; without Maven it says so and exits 0 (those tests then skip, saying why)."""

import sys

from testkit.yarn import YarnUnavailable, fetch_jars

try:
    print(f"yarn-jars: {fetch_jars()}")
except YarnUnavailable as e:
    print(f"yarn-jars: not fetched: {e}", file=sys.stderr)

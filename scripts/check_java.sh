#!/usr/bin/env bash
# Spark 4 needs Java 17 or newer. Say exactly what to install when it is missing.
set -u
java_bin="java"
[ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ] && java_bin="$JAVA_HOME/bin/java"
how="install a Java 17+ runtime, then rerun:
  Debian/Ubuntu:  sudo apt-get install -y openjdk-17-jre-headless
  Amazon Linux:   sudo yum install -y java-17-amazon-corretto-headless
  macOS:          brew install openjdk@17   (and put its bin/ on PATH or set JAVA_HOME)"
if ! command -v "$java_bin" >/dev/null 2>&1; then
  echo "shardinfer: Java not found (Spark 4 needs Java 17 or newer); $how" >&2
  exit 1
fi
version=$("$java_bin" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
major=${version%%.*}
[ "$major" = "1" ] && major=$(echo "$version" | cut -d. -f2)
case "$major" in ''|*[!0-9]*) echo "shardinfer: cannot read the Java version from '$java_bin -version'; $how" >&2; exit 1;; esac
if [ "$major" -lt 17 ]; then
  echo "shardinfer: Java $version found at $(command -v "$java_bin"), but Spark 4 needs 17 or newer; $how" >&2
  exit 1
fi

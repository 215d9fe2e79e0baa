#!/usr/bin/env bash
# Stops with a clear message when Java 17+ (needed by PySpark) is missing.
set -u
fail() {
  echo "curamix: $1" >&2
  echo "  PySpark needs a Java 17+ runtime. On Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
  echo "  (or set JAVA_HOME to a JDK 17+ install)." >&2
  exit 1
}
java_bin=java
if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then java_bin="$JAVA_HOME/bin/java"; fi
command -v "$java_bin" >/dev/null 2>&1 || fail "no 'java' found on PATH."
ver=$("$java_bin" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9.]*\).*/\1/p' | head -n1)
[ -n "$ver" ] || fail "could not read the Java version from '$java_bin -version'."
major=${ver%%.*}
[ "$major" = "1" ] && major=$(echo "$ver" | cut -d. -f2)
[ "$major" -ge 17 ] 2>/dev/null || fail "Java $ver found, but 17 or newer is needed."

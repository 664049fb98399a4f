#!/usr/bin/env bash
# scripts/engines.sh prism|flink|spark|all   fetch or build what a Beam engine needs, print where
#
# Prints one path per engine on stdout (everything else goes to stderr), cached under
# .engines/ (git-ignored; ENGINES_DIR to move it), so a second call prints it at once:
#   prism  .engines/prism-<beam>/prism                 go install of Beam's Prism at the
#                                                      installed apache-beam's version
#   flink  .engines/flink-<flink>-job-server-<beam>/job-server.jar   for --flink_job_server_jar
#   spark  .engines/spark-3-job-server-<beam>/job-server.jar         for --spark_job_server_jar
# A job-server jar is Beam's own shaded jar at the installed version when Maven serves it;
# otherwise it is assembled from the runner's Maven artifacts at BEAM_JAVA_VERSION (default
# 2.62.0) and their dependencies under lib/, with a jar that only holds a manifest (main class
# and class path), so `java -jar` and Beam's FlinkRunner/SparkRunner start it the same way.
# SOURCE.txt beside each jar says which.
# Exit codes: 0 done, 1 the fetch or build failed (log on stderr), 3 go/java/mvn is missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENGINES_DIR=${ENGINES_DIR:-$ROOT/.engines}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
FLINK_VERSION=${FLINK_VERSION:-1.19}
SPARK_VERSION=${SPARK_VERSION:-3.5.0}
BEAM_JAVA_VERSION=${BEAM_JAVA_VERSION:-2.62.0}

say() { echo "engines: $*" >&2; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { say "$tool not found on PATH"; exit 3; }
  done
}

beam_version() {
  if [ -n "${BEAM_VERSION:-}" ]; then echo "$BEAM_VERSION"; return; fi
  "$PYTHON" -c 'import importlib.metadata as m; print(m.version("apache-beam"))'
}

# run_logged LOG CMD...: runs CMD with its output in LOG; on failure shows LOG's tail.
run_logged() {
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then
    say "failed: $*"
    grep -E 'ERROR|error|fatal' "$log" | head -5 >&2 || true
    tail -5 "$log" >&2
    return 1
  fi
}

prism() {
  need go
  local version dir
  version=$(beam_version)
  dir=$ENGINES_DIR/prism-$version
  if [ ! -x "$dir/prism" ]; then
    say "building Prism v$version with go install (first time: minutes) ..."
    mkdir -p "$dir"
    rm -rf "$dir/tmp"
    GOBIN=$dir/tmp run_logged "$dir/build.log" \
      go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$version"
    mv "$dir/tmp/prism" "$dir/prism"
    rmdir "$dir/tmp"
    echo "go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$version" >"$dir/SOURCE.txt"
  fi
  echo "$dir/prism"
}

# manifest_jar DIR MAIN_CLASS: DIR/job-server.jar holding only a manifest over DIR/lib/*.jar
# (manifest lines are at most 72 bytes: longer ones go on in lines that start with a space).
manifest_jar() {
  local dir=$1 main=$2
  (cd "$dir" && {
    echo "Main-Class: $main"
    # Spark and Flink on Java 17 reflect into these packages (java -jar honours Add-Opens).
    echo "Add-Opens: java.base/java.lang java.base/java.lang.invoke java.base/java.lang.reflect" \
      "java.base/java.io java.base/java.net java.base/java.nio java.base/java.util" \
      "java.base/java.util.concurrent java.base/java.util.concurrent.atomic" \
      "java.base/sun.nio.ch java.base/sun.nio.cs java.base/sun.security.action" \
      "java.base/sun.util.calendar"
    echo "Class-Path: $(find lib -name '*.jar' | sort | tr '\n' ' ')"
  } | awk '{ line = $0; print substr(line, 1, 70); line = substr(line, 71)
             while (length(line) > 0) { print " " substr(line, 1, 69); line = substr(line, 70) } }' \
    >manifest.mf && jar cfm job-server.jar.tmp manifest.mf && rm manifest.mf)
}

# job_server NAME ARTIFACT MAIN RUNNER_ARTIFACT EXTRA_DEPS_XML
job_server() {
  need java mvn jar
  local name=$1 artifact=$2 main=$3 runner=$4 extra=$5 version dir
  version=$(beam_version)
  dir=$ENGINES_DIR/$name-job-server-$version
  if [ ! -f "$dir/job-server.jar" ]; then
    mkdir -p "$dir"
    say "fetching org.apache.beam:$artifact:$version with Maven ..."
    if mvn -B dependency:copy "-Dartifact=org.apache.beam:$artifact:$version" \
        "-DoutputDirectory=$dir" "-Dmdep.stripVersion=true" >"$dir/fetch.log" 2>&1; then
      mv "$dir/$artifact.jar" "$dir/job-server.jar.tmp"
      echo "org.apache.beam:$artifact:$version (Beam's shaded job server)" >"$dir/SOURCE.txt"
    else
      say "Maven did not serve it (see $dir/fetch.log); assembling it from org.apache.beam:$runner:$BEAM_JAVA_VERSION ..."
      rm -rf "$dir/lib"
      cat >"$dir/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.engines</groupId><artifactId>$name-job-server</artifactId>
  <version>$BEAM_JAVA_VERSION</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.beam</groupId><artifactId>$runner</artifactId>
      <version>$BEAM_JAVA_VERSION</version></dependency>
$extra
  </dependencies>
</project>
EOF
      run_logged "$dir/build.log" mvn -B -f "$dir/pom.xml" dependency:copy-dependencies \
        "-DoutputDirectory=$dir/lib" -DincludeScope=runtime
      manifest_jar "$dir" "$main"
      echo "org.apache.beam:$runner:$BEAM_JAVA_VERSION and its dependencies (lib/), main" \
        "class $main; the shaded $artifact:$version was not served" >"$dir/SOURCE.txt"
    fi
    mv "$dir/job-server.jar.tmp" "$dir/job-server.jar"
  fi
  echo "$dir/job-server.jar"
}

flink() {
  job_server "flink-$FLINK_VERSION" "beam-runners-flink-$FLINK_VERSION-job-server" \
    org.apache.beam.runners.flink.FlinkJobServerDriver "beam-runners-flink-$FLINK_VERSION" \
    "    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId>
      <version>1.7.36</version></dependency>"
}

spark() {
  # Beam's Spark runner declares Spark "provided": the job server brings its own.
  local deps="" module
  for module in spark-core_2.12 spark-streaming_2.12; do
    deps+="    <dependency><groupId>org.apache.spark</groupId><artifactId>$module</artifactId>
      <version>$SPARK_VERSION</version></dependency>
"
  done
  job_server spark-3 beam-runners-spark-3-job-server \
    org.apache.beam.runners.spark.SparkJobServerDriver beam-runners-spark-3 "$deps"
}

locked() {
  mkdir -p "$ENGINES_DIR"
  # One fetch per engine at a time (tests in parallel, a user in another shell).
  exec 9>"$ENGINES_DIR/.$1.lock"
  flock 9
  "$1"
}

case "${1:-}" in
  prism|flink|spark) locked "$1" ;;
  all) locked prism; locked flink; locked spark ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Build Apache OpenWhisk's controller, scheduler and invoker from a checkout, with Maven.
#
#   OPENWHISK_CHECKOUT=/path/to/openwhisk tools/openwhisk/build.sh [--with-controller-patch] [--force]
#
# The checkout should be at the commit controller_patch/ pins (PINNED below); another commit is
# built too, with a warning. Nothing is written into the checkout: the four modules' sources are
# copied into the build folder and built there (--with-controller-patch applies
# controller_patch/'s patch to that copy; one Scala 2.13 fix is applied to every copy, see below).
#
# Output (OW_BUILD_DIR, default <repo>/.cache/openwhisk/build), one folder per variant,
# plain/ or patched/:
#   <service>.classpath   the service's runtime classpath, one line, ':'-separated
#   <service>.main        its main class
#   bin/<service>         a launcher: exec java $JAVA_OPTS -cp ... MAIN "$@"
#   build.log             Maven's output
#   inputs.sha256         what the build was made from; an unchanged one skips the build
# Services: controller, scheduler, invoker.
#
# Maven's repository: OW_M2_REPO (default <repo>/.cache/m2, shared with controller_patch/scala).
# Maven runs with `nice -n 19`, one thread (-T 1) and MAVEN_OPTS (default -Xmx1g -Xss4m); the
# Scala compiler forks its own JVM (-Xmx2g, tools/openwhisk/pom.xml).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PINNED=1fae641a2b30bccb7ddc69d2d215866d899a8510
PATCH="$REPO/controller_patch/openwhisk-gpu-routing.patch"
MODULES=(common/scala core/scheduler core/invoker core/controller)

variant=plain
force=0
for arg in "$@"; do
  case "$arg" in
    --with-controller-patch) variant=patched ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

die() { echo "build.sh: $*" >&2; exit 1; }

# --- what is needed, and what is missing -------------------------------------------------------
if [ -z "${OPENWHISK_CHECKOUT:-}" ]; then
  die "OPENWHISK_CHECKOUT is not set.
  It must name a checkout of apache/openwhisk at $PINNED, e.g.
    git clone https://github.com/apache/openwhisk /path/to/openwhisk
    git -C /path/to/openwhisk checkout $PINNED
    OPENWHISK_CHECKOUT=/path/to/openwhisk $0"
fi
CHECKOUT="$(cd "$OPENWHISK_CHECKOUT" 2>/dev/null && pwd)" || die "OPENWHISK_CHECKOUT=$OPENWHISK_CHECKOUT is not a directory"
missing=()
for m in "${MODULES[@]}"; do
  [ -d "$CHECKOUT/$m/src/main/scala" ] || missing+=("$m/src/main/scala")
done
[ -f "$CHECKOUT/core/scheduler/src/main/protobuf/activation.proto" ] || missing+=("core/scheduler/src/main/protobuf/activation.proto")
if [ ${#missing[@]} -gt 0 ]; then
  die "OPENWHISK_CHECKOUT=$CHECKOUT is not an OpenWhisk checkout: missing ${missing[*]}"
fi
head=$(git -C "$CHECKOUT" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$head" != "$PINNED" ]; then
  echo "build.sh: warning: $CHECKOUT is at $head, tools/openwhisk/ pins $PINNED; building it anyway" >&2
fi
command -v java >/dev/null || die "java is missing (a JDK 11 or newer; Debian: apt-get install openjdk-17-jdk-headless)"
command -v mvn >/dev/null || die "mvn is missing (Debian: apt-get install maven; ./dev setup installs it)"
command -v git >/dev/null || die "git is missing"

OUT="${OW_BUILD_DIR:-$REPO/.cache/openwhisk/build}/$variant"
M2="${OW_M2_REPO:-$REPO/.cache/m2}"
mkdir -p "$OUT" "$M2"

# --- the sources: a copy of the four modules' src/main, prepared for this build ---------------
# Nothing is written into the checkout. The copy (a few MB, made on every run; the build is
# skipped below when it is unchanged) gets:
#  * with --with-controller-patch, controller_patch/'s patch (its src/main files; the patch's
#    ScalaTest cases are not built here);
#  * one edit for Scala 2.13.5+: ten class-level `@throws[IllegalArgumentException]` lines in
#    common/scala (WhiskAction.scala:129 ...), which scalac has rejected since 2.13.5
#    (scala/scala#9465; they never had an effect on a class), are blanked, so line numbers stay.
SRC="$OUT/src"
rm -rf "$SRC"
for m in "${MODULES[@]}"; do
  mkdir -p "$SRC/$m/src"
  cp -a "$CHECKOUT/$m/src/main" "$SRC/$m/src/main"
done
if [ "$variant" = patched ]; then
  [ -f "$PATCH" ] || die "$PATCH is missing"
  # git apply in a repository of its own: the copy sits inside this project's work tree
  git -C "$SRC" init -q
  if ! git -C "$SRC" apply --include='common/scala/src/main/*' --include='core/*/src/main/*' "$PATCH" 2>"$OUT/patch.err"; then
    cat "$OUT/patch.err" >&2
    die "controller_patch/openwhisk-gpu-routing.patch does not apply to $CHECKOUT (at $head; the patch is made against $PINNED)"
  fi
  rm -rf "$SRC/.git"
  echo "build.sh: applied controller_patch/openwhisk-gpu-routing.patch (its src/main files) to the copy"
fi
python3 - "$SRC" <<'PY'
import pathlib, re, sys
throws = re.compile(r"^@throws\[[A-Za-z.]+\]\s*$")
klass = re.compile(r"^(case class|class|abstract class|final class|sealed abstract class) ")
blanked = 0
for path in pathlib.Path(sys.argv[1], "common/scala/src/main/scala").rglob("*.scala"):
    lines = path.read_text(encoding="utf-8").split("\n")
    changed = False
    for i in range(len(lines) - 1):
        if throws.match(lines[i]) and klass.match(lines[i + 1]):
            lines[i] = ""
            changed = True
            blanked += 1
    if changed:
        path.write_text("\n".join(lines), encoding="utf-8")
print(f"build.sh: blanked {blanked} class-level @throws lines (Scala 2.13.5+ rejects them)")
PY

# --- skip when nothing changed -----------------------------------------------------------------
inputs() {
  echo "variant $variant"
  echo "java $(java -version 2>&1 | head -1)"
  (cd "$SRC" && find "${MODULES[@]/%//src/main}" -type f -print0 | sort -z | xargs -0 sha256sum)
  (cd "$HERE" && find . -path ./node_modules -prune -o -type f \( -name pom.xml -o -name '*.scala' -o -name '*.java' \) -print0 \
     | sort -z | xargs -0 sha256sum)
  sha256sum "$0" | sed "s#$0#build.sh#"
}
sum=$(inputs | sha256sum | cut -d' ' -f1)
services=(controller scheduler invoker)
if [ $force = 0 ] && [ -f "$OUT/inputs.sha256" ] && [ "$(cat "$OUT/inputs.sha256")" = "$sum" ]; then
  ok=1
  for s in "${services[@]}"; do
    [ -f "$OUT/$s.classpath" ] || ok=0
    for e in $(tr ':' ' ' < "$OUT/$s.classpath" 2>/dev/null); do [ -e "$e" ] || ok=0; done
  done
  if [ $ok = 1 ]; then
    echo "build.sh: $variant build is up to date ($OUT)"
    exit 0
  fi
fi
rm -f "$OUT/inputs.sha256"

# --- Maven -------------------------------------------------------------------------------------
echo "build.sh: building the $variant variant from $SRC into $OUT (log: $OUT/build.log)"
start=$(date +%s)
export MAVEN_OPTS="${MAVEN_OPTS:--Xmx1g -Xss4m}"
if ! nice -n 19 mvn -B -T 1 -Dstyle.color=never -f "$HERE/pom.xml" \
     -Dmaven.repo.local="$M2" -Dow.src="$SRC" -Dow.build.dir="$OUT" \
     package >"$OUT/build.log" 2>&1; then
  grep -E '^\[ERROR\]' "$OUT/build.log" | head -40 >&2 || true
  die "Maven failed after $(( $(date +%s) - start )) s; the whole log is $OUT/build.log"
fi

# --- a classpath, a main class and a launcher per service --------------------------------------
jar() { ls "$OUT/$1"/openwhisk-"$1"-*.jar; }
declare -A MAIN=(
  [controller]=org.apache.openwhisk.core.controller.Controller
  [scheduler]=org.apache.openwhisk.core.scheduler.Scheduler
  [invoker]=org.apache.openwhisk.core.invoker.Invoker
)
for s in "${services[@]}"; do
  # the module's own jar first, then its dependencies as Maven resolved them (the reactor's
  # jars among them: common, scheduler, invoker and the stand-ins)
  { jar "$s"; tr ':' '\n' < "$OUT/$s/runtime.classpath"; } | grep -v '^$' | paste -sd: > "$OUT/$s.classpath"
  echo "${MAIN[$s]}" > "$OUT/$s.main"
  mkdir -p "$OUT/bin"
  cat > "$OUT/bin/$s" <<EOF
#!/bin/sh
# OpenWhisk's $s, built by tools/openwhisk/build.sh ($variant). Arguments go to its main class.
exec java \${JAVA_OPTS:-} -Djava.security.egd=file:/dev/./urandom -cp "\$(cat "$OUT/$s.classpath")" ${MAIN[$s]} "\$@"
EOF
  chmod +x "$OUT/bin/$s"
done
echo "$sum" > "$OUT/inputs.sha256"
echo "build.sh: built the $variant variant in $(( $(date +%s) - start )) s:"
for s in "${services[@]}"; do echo "  $OUT/bin/$s  (main ${MAIN[$s]}, classpath $OUT/$s.classpath)"; done

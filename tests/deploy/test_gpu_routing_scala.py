"""The controller patch's routing object, compiled by OpenWhisk's own Scala version, and its checks run.

controller_patch/scala/pom.xml compiles GpuRouting.scala (the patch's new file, byte for byte:
test_controller_patch.py), GpuRoutingJson.scala (the annotation reader, against spray-json from
Maven Central, so a missing implicit import fails here) and their two check programs with the
Scala version and compiler flags of apache/openwhisk's build (-Xfatal-warnings
-Ywarn-unused-import), then runs the check programs, which exit 1 on any failed case. Maven's
repository is .cache/m2: the first run downloads about 95 MB from Maven Central.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POM = REPO / "controller_patch" / "scala" / "pom.xml"
# apache/openwhisk settings.gradle at the pinned commit: the default (2.12) build's Scala and flags.
OPENWHISK_SCALA = "2.12.10"
OPENWHISK_FLAGS = ["-feature", "-unchecked", "-deprecation", "-Xfatal-warnings", "-Ywarn-unused-import"]
NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def test_the_build_uses_openwhisks_scala_version_and_flags() -> None:
    pom = ET.parse(POM).getroot()
    assert pom.findtext("m:properties/m:scala.version", namespaces=NS) == OPENWHISK_SCALA
    plugin = next(p for p in pom.iterfind("m:build/m:plugins/m:plugin", NS)
                  if p.findtext("m:artifactId", namespaces=NS) == "scala-maven-plugin")
    assert [a.text for a in plugin.iterfind("m:configuration/m:args/m:arg", NS)] == OPENWHISK_FLAGS


def test_routing_object_compiles_with_openwhisks_scala_and_its_checks_pass() -> None:
    mvn = shutil.which("mvn")
    assert mvn, "Maven (mvn) is missing: ./dev setup installs it (Debian package maven)"
    proc = subprocess.run(
        [mvn, "-B", "-Dstyle.color=never", "-f", str(POM),
         f"-Dmaven.repo.local={REPO / '.cache' / 'm2'}", "clean", "verify"],
        capture_output=True, text=True, timeout=900, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert re.search(r"^GpuRoutingCheck: all \d+ checks passed \(\d+ routing table rows\)$", out, re.M), out[-3000:]
    assert re.search(r"^GpuRoutingJsonCheck: all \d+ checks passed$", out, re.M), out[-3000:]

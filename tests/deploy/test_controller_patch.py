"""controller_patch/: the manifest overlay merge, the controller patch's shape, the apply script.

CI cannot reach OpenWhisk's sources, so the patch is checked for what can be checked without
them: it is a well-formed git diff whose hunk counts add up, it touches exactly the files its
header names (the load balancer, its config, its metrics markers and its test) and adds the
routing object, whose two files are byte for byte the sources CI compiles
(``controller_patch/scala``, test_gpu_routing_scala.py), and every call in the patched files
that needs an implicit has its import. That it applies to the pinned commit was checked with the
upstream checkout (the note has the command and output); ``OPENWHISK_CHECKOUT`` set to a
checkout at the pinned commit runs that check here too, and the import check then reads the
whole patched files.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
PATCH_DIR = REPO / "controller_patch"
PATCH = PATCH_DIR / "openwhisk-gpu-routing.patch"
SCALA_DIR = PATCH_DIR / "scala"
LOAD_BALANCER = "core/controller/src/main/scala/org/apache/openwhisk/core/loadBalancer"
SAMPLE = REPO / "tests" / "fixtures" / "messages" / "runtimes-manifest-gpu-example.json"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, PATCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module


merge_manifest = _load("merge_manifest")
apply_patch = _load("apply_patch")


# --------------------------------------------------------------------------- manifest overlay


def base_manifest() -> dict:
    """The shared sample manifest without the GPU kind: what a stock deployment has."""
    manifest = json.loads(SAMPLE.read_text())
    manifest["runtimes"]["python"] = [
        e for e in manifest["runtimes"]["python"] if not e["kind"].endswith("-gpu")
    ]
    return manifest


def overlay() -> dict:
    return json.loads((PATCH_DIR / "runtimes-gpu-overlay.json").read_text())


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PATCH_DIR / "merge_manifest.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_overlay_adds_the_gpu_kind_without_stem_cells_and_keeps_the_rest() -> None:
    base = base_manifest()
    result = merge_manifest.merge(base, overlay())

    assert result.added == ["python:3-gpu"] and result.replaced == []
    python = result.manifest["runtimes"]["python"]
    assert [e["kind"] for e in python] == ["python:3.11", "python:3-gpu"]
    gpu = python[1]
    assert gpu["image"] == {"prefix": "owgpu", "name": "action-python-v3-gpu", "tag": "latest"}
    assert gpu["default"] is False and "stemCells" not in gpu
    # Everything else is untouched, the CPU stem cells included, and the input is not mutated.
    assert result.manifest["runtimes"]["nodejs"] == base["runtimes"]["nodejs"]
    assert result.manifest["blackboxes"] == base["blackboxes"]
    assert base == base_manifest()


def test_merge_is_idempotent_and_replaces_an_outdated_gpu_kind() -> None:
    once = merge_manifest.merge(base_manifest(), overlay()).manifest
    twice = merge_manifest.merge(once, overlay())
    assert not twice.changed and twice.manifest == once

    outdated = copy.deepcopy(once)
    outdated["runtimes"]["python"][1]["image"]["tag"] = "0.0.1"
    fixed = merge_manifest.merge(outdated, overlay())
    assert fixed.replaced == ["python:3-gpu"] and fixed.manifest == once


def test_cli_in_place_check_and_stdout(tmp_path: Path) -> None:
    path = tmp_path / "runtimes.json"
    path.write_text(json.dumps(base_manifest()))

    assert run_cli(str(path), "--check").returncode == 1
    merged = run_cli(str(path), "--in-place")
    assert merged.returncode == 0, merged.stderr
    assert "added ['python:3-gpu']" in merged.stderr
    text = path.read_text()
    assert run_cli(str(path), "--check").returncode == 0
    again = run_cli(str(path), "--in-place")
    assert again.returncode == 0 and path.read_text() == text
    stdout = run_cli(str(path))
    assert json.loads(stdout.stdout) == json.loads(text)


def test_the_shared_sample_with_its_gpu_kind_is_already_up_to_date_apart_from_the_image() -> None:
    result = merge_manifest.merge(json.loads(SAMPLE.read_text()), overlay())
    # The sample names another registry image for python:3-gpu: the overlay's replaces it.
    assert result.replaced == ["python:3-gpu"] and result.added == []


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b, o: o["runtimes"]["python"][0].update(
            stemCells=[{"initialCount": 1, "memory": "256 MB"}]),
         "kind 'python:3-gpu' has stemCells"),
        (lambda b, o: o["runtimes"]["python"][0].update(default=True),
         "family 'python' has 2 kinds and 2 defaults"),
        (lambda b, o: b["runtimes"]["python"][0].pop("default"),
         "family 'python' has 2 kinds and 0 defaults"),
        (lambda b, o: (b["runtimes"]["python"].append(copy.deepcopy(o["runtimes"]["python"][0])),
                       o["runtimes"].update(gpu=o["runtimes"].pop("python"))),
         "kind 'python:3-gpu' is in family 'gpu' but the base has it in 'python'"),
        (lambda b, o: b["runtimes"]["nodejs"].append(copy.deepcopy(b["runtimes"]["nodejs"][0])),
         "kind 'nodejs:20' appears twice"),
        (lambda b, o: o["runtimes"]["python"][0].pop("image"), "runtime has no 'image'"),
        (lambda b, o: b["runtimes"]["nodejs"][0]["stemCells"][0].update(initialCount=0),
         "'initialCount' must be an integer > 0"),
        (lambda b, o: b["runtimes"]["nodejs"][0]["stemCells"][0].update(memory="lots"),
         "'memory' must be a size"),
        (lambda b, o: b["runtimes"].update(python=[]), "family 'python' must be a non-empty list"),
        (lambda b, o: b.pop("runtimes"), "'runtimes' must be an object of families"),
    ],
)
def test_bad_input_fails_clearly(mutate, message: str) -> None:
    base, extra = base_manifest(), overlay()
    mutate(base, extra)
    with pytest.raises(merge_manifest.ManifestError, match=re.escape(message)):
        merge_manifest.merge(base, extra)


def test_cli_reports_bad_files_with_exit_status_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    proc = run_cli(str(broken))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"merge_manifest: error: base {broken}: not JSON")
    missing = run_cli(str(tmp_path / "absent.json"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_warns_when_the_health_action_kind_is_missing() -> None:
    base = base_manifest()
    del base["runtimes"]["nodejs"]
    result = merge_manifest.merge(base, overlay())
    assert any("nodejs:default" in w for w in result.warnings)


# --------------------------------------------------------------------------- the patch


@dataclass
class FilePatch:
    old: str | None  # None: a new file
    new: str
    hunks: list[tuple[int, int, int, int]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_git_diff(text: str) -> tuple[str, list[FilePatch]]:
    """A strict reader of `git diff` output: raises AssertionError on anything malformed."""
    header, *sections = re.split(r"^(?=diff --git )", text, flags=re.M)
    assert sections, "no 'diff --git' section"
    files: list[FilePatch] = []
    for section in sections:
        lines = section.rstrip("\n").split("\n")
        m = re.match(r"^diff --git a/(\S+) b/(\S+)$", lines[0])
        assert m, lines[0]
        created = lines[1] == "new file mode 100644"
        if created:
            lines.pop(1)
        assert re.match(r"^index [0-9a-f]{7,}\.\.[0-9a-f]{7,}( \d{6})?$", lines[1]), lines[1]
        old = "/dev/null" if created else f"a/{m[1]}"
        assert lines[2] == f"--- {old}" and lines[3] == f"+++ b/{m[2]}", lines[2:4]
        patch = FilePatch(None if created else m[1], m[2])
        i = 4
        while i < len(lines):
            h = HUNK.match(lines[i])
            assert h, f"{patch.new}: expected a hunk header, got {lines[i]!r}"
            old_start, old_len = int(h[1]), int(h[2] or 1)
            new_start, new_len = int(h[3]), int(h[4] or 1)
            patch.hunks.append((old_start, old_len, new_start, new_len))
            i += 1
            seen_old = seen_new = 0
            while seen_old < old_len or seen_new < new_len:
                assert i < len(lines), f"{patch.new}: hunk runs past the end of the file section"
                line = lines[i]
                assert line[:1] in (" ", "+", "-"), f"{patch.new}: bad hunk line {line!r}"
                if line[0] != "+":
                    seen_old += 1
                if line[0] != "-":
                    seen_new += 1
                (patch.added if line[0] == "+" else patch.removed if line[0] == "-" else []).append(line[1:])
                i += 1
            assert (seen_old, seen_new) == (old_len, new_len), f"{patch.new}: hunk counts do not add up"
        files.append(patch)
    return header, files


def test_patch_is_a_well_formed_diff_touching_only_the_files_it_names() -> None:
    header, files = parse_git_diff(PATCH.read_text())
    named = re.search(r"^Files:\n((?:  \S+\n)+)", header, re.M)
    assert named, "the header lists the files it changes"
    assert [f.new for f in files] == named[1].split()
    # no renames or deletions; the only new files are the routing object's two
    assert all(f.old in (None, f.new) for f in files)
    assert {f.new for f in files if f.old is None} == {
        f"{LOAD_BALANCER}/GpuRouting.scala",
        f"{LOAD_BALANCER}/GpuRoutingJson.scala",
    }
    assert {f.new for f in files if f.old is not None} == {
        "common/scala/src/main/scala/org/apache/openwhisk/common/Logging.scala",
        "core/controller/src/main/resources/reference.conf",
        f"{LOAD_BALANCER}/InvokerSupervision.scala",
        f"{LOAD_BALANCER}/ShardingContainerPoolBalancer.scala",
        "tests/src/test/scala/org/apache/openwhisk/core/loadBalancer/test/ShardingContainerPoolBalancerTests.scala",
    }
    # Hunks are in order and do not overlap.
    for f in files:
        starts = [h[0] for h in f.hunks]
        assert starts == sorted(starts)
        assert all(a[0] + a[1] <= b[0] for a, b in zip(f.hunks, f.hunks[1:], strict=False))


def test_patch_header_names_the_commit_the_apply_script_pins() -> None:
    header, _ = parse_git_diff(PATCH.read_text())
    assert f"Pinned-To: apache/openwhisk {apply_patch.PINNED_COMMIT}" in header
    assert re.fullmatch(r"[0-9a-f]{40}", apply_patch.PINNED_COMMIT)


def test_the_patch_adds_the_routing_object_ci_compiles_byte_for_byte() -> None:
    """One source of truth: the patch's new files are controller_patch/scala/*.scala, unchanged."""
    _, files = parse_git_diff(PATCH.read_text())
    new_files = {Path(f.new).name: f for f in files if f.old is None}
    assert set(new_files) == {"GpuRouting.scala", "GpuRoutingJson.scala"}
    for name, f in new_files.items():
        assert f.hunks == [(0, 0, 1, len(f.added))]
        assert "\n".join(f.added) + "\n" == (SCALA_DIR / name).read_text(), (
            f"{name} in the patch differs from controller_patch/scala/{name}: regenerate the patch")


def test_patch_routes_gpu_work_through_the_routing_object() -> None:
    _, files = parse_git_diff(PATCH.read_text())
    by_name = {Path(f.new).name: f for f in files}
    balancer = "\n".join(by_name["ShardingContainerPoolBalancer.scala"].added)
    # The decision is the routing object's; the balancer feeds it what it has and reads one pool.
    assert "GpuRouting.requiresGpu(\n      action.exec.kind," in balancer
    assert "GpuRoutingJson.invokerResources(action.annotations.get(Annotations.InvokerResourcesAnnotationName))" in balancer
    assert "GpuRouting.pools(newInvokers, (i: InvokerHealth) => i.id.tags," in balancer
    assert "GpuRouting.poolFor(schedulingState.pools, needsGpu, isBlackboxInvocation)" in balancer
    assert "GpuRouting.start(hash, pool)" in balancer
    # The pools are published as one value; no pool list or step sizes of their own are left.
    assert "@volatile private var _pools: RoutingPools[InvokerHealth]" in balancer
    removed = "\n".join(by_name["ShardingContainerPoolBalancer.scala"].removed)
    assert "private var _managedStepSizes" in removed and "_managedStepSizes =" not in balancer
    # GPU work has its own overload counter and gauges.
    assert "LoggingMarkers.GPU_SYSTEM_OVERLOAD" in balancer
    for marker in ("INVOKER_TOTALMEM_GPU", "HEALTHY_INVOKER_GPU", "UNHEALTHY_INVOKER_GPU",
                   "UNRESPONSIVE_INVOKER_GPU", "OFFLINE_INVOKER_GPU", "GPU_SYSTEM_OVERLOAD"):
        assert f"  val {marker} =" in "\n".join(by_name["Logging.scala"].added)
        assert marker in balancer
    config = "\n".join(by_name["reference.conf"].added)
    assert 'tag = "gpu"' in config and 'kind-suffix = "-gpu"' in config
    assert "cpu-on-gpu-invokers = false" in config
    tests = "\n".join(by_name["ShardingContainerPoolBalancerTests.scala"].added)
    assert tests.count('it should "') == 8
    assert by_name["ShardingContainerPoolBalancerTests.scala"].removed == []


def test_patch_prefers_holders_only_behind_its_flag_and_through_the_capacity_check() -> None:
    """Model locality (invoker/gpu/locality.py): the rule is GpuRouting.firstHolder, run before the
    unchanged schedule, for GPU work only, with prefer-holders on; the capacity check is schedule's own."""
    _, files = parse_git_diff(PATCH.read_text())
    by_name = {Path(f.new).name: f for f in files}
    balancer = "\n".join(by_name["ShardingContainerPoolBalancer.scala"].added)
    assert "if (needsGpu && lbConfig.gpuRouting.preferHolders) {" in balancer
    # the digest is the invoker's: invocation namespace and the action's name with its version
    assert "GpuRouting.actionDigest(msg.user.namespace.name.asString, action.fullyQualifiedName(true).asString)" in balancer
    assert ".firstHolder(pool, homeInvoker, stepSize, (i: InvokerHealth) => i.id.tags, digest) { i =>" in balancer
    assert "ShardingContainerPoolBalancer.tryAcquire(" in balancer
    # the holder, if any, else the classic schedule (walk and random fallback), unchanged
    assert "holder.map(id => (id, false)).orElse {\n          ShardingContainerPoolBalancer.schedule(" in balancer
    # schedule's capacity check is the one the holder pass uses
    assert "if (tryAcquire(invoker, dispatched, maxConcurrent, fqn, slots)) {" in balancer
    assert ("invoker.status.isUsable && dispatched(invoker.id.toInt).tryAcquireConcurrent(fqn, maxConcurrent, slots)"
            in "\n".join(by_name["ShardingContainerPoolBalancer.scala"].removed))
    assert "prefer-holders = false" in "\n".join(by_name["reference.conf"].added)
    assert "  val GPU_HOLDER_CHOSEN =" in "\n".join(by_name["Logging.scala"].added)
    # InvokerPool passes changed tags on at once; nothing else in it changes
    supervision = by_name["InvokerSupervision.scala"]
    assert supervision.removed == []
    assert [line.strip() for line in supervision.added if not line.strip().startswith("//")] == [
        "monitor.foreach(_ ! CurrentInvokerPoolState(status))"]


def test_malformed_patches_are_rejected_by_the_reader() -> None:
    text = PATCH.read_text()
    with pytest.raises(AssertionError, match="hunk counts do not add up|bad hunk line|runs past the end"):
        parse_git_diff(re.sub(r"^(@@ -\d+,)(\d+)", lambda m: m[1] + str(int(m[2]) + 1), text,
                              count=1, flags=re.M))
    with pytest.raises(AssertionError, match="no 'diff --git' section"):
        parse_git_diff("just text\n")


# --------------------------------------------------------------------------- implicit imports


@dataclass(frozen=True)
class ImplicitRule:
    """A call that compiles only with an implicit in scope, and the imports that bring it."""

    needs: str
    call: re.Pattern[str]
    imports: tuple[re.Pattern[str], ...]


IMPLICIT_RULES = (
    ImplicitRule(
        "spray-json's readers/writers for standard types: import spray.json.DefaultJsonProtocol._",
        re.compile(r"\.(getAs|convertTo)\[|\bjsonFormat\d+\(|\.toJson\b|\.parseJson\b"),
        (re.compile(r"^\s*import spray\.json\.DefaultJsonProtocol\._\s*$"),
         re.compile(r"\b(extends|with)\s+DefaultJsonProtocol\b")),
    ),
    ImplicitRule(
        "spray-json's enrichment: import spray.json._",
        re.compile(r"\.toJson\b|\.parseJson\b"),
        (re.compile(r"^\s*import spray\.json\._\s*$"),
         re.compile(r"^\s*import spray\.json\.\{[^}]*\benrich(Any|String)\b")),
    ),
    ImplicitRule(
        "pureconfig's derived readers: import pureconfig.generic.auto._",
        re.compile(r"\bloadConfig(OrThrow)?\["),
        (re.compile(r"^\s*import pureconfig\.generic\.auto\._\s*$"),),
    ),
    ImplicitRule(
        "duration literals: import scala.concurrent.duration._",
        re.compile(r"\b\d+\.(nanos?|micros?|millis?|milliseconds?|seconds?|minutes?|hours?|days?)\b"),
        (re.compile(r"^\s*import scala\.concurrent\.duration\.(_|\{[^}]*\bDurationInt\b)"),),
    ),
)


def scala_code(lines: list[str]) -> list[str]:
    """The lines without comments and string literals, so that a doc comment naming a call is no call."""
    text = "\n".join(lines)
    text = re.sub(r'"(?:\\.|[^"\\\n])*"', '""', text)
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m[0].count("\n"), text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return text.split("\n")


def missing_implicit_imports(name: str, calls: list[str], in_scope: list[str]) -> list[str]:
    """Each rule whose call occurs in ``calls`` while no line of ``in_scope`` brings its implicit."""
    code, scope = scala_code(calls), scala_code(in_scope)
    problems = []
    for rule in IMPLICIT_RULES:
        hits = [line.strip() for line in code if rule.call.search(line)]
        if hits and not any(p.search(line) for p in rule.imports for line in scope):
            problems.append(f"{name}: `{hits[0]}` needs {rule.needs}")
    return problems


def patched_file_problems(patch_text: str, checkout: Path | None = None) -> list[str]:
    """Implicit-dependent calls the patch adds without their import.

    A new file is checked whole. In a changed file the added lines' calls need their import among
    the added lines or, with an OpenWhisk checkout, among the upstream file's lines too (without
    one, only the patch's own lines can be seen, so such an import must be in the patch).
    """
    _, files = parse_git_diff(patch_text)
    problems = []
    for f in files:
        if not f.new.endswith(".scala"):
            continue
        scope = list(f.added)
        if f.old is not None and checkout is not None:
            scope += (checkout / f.old).read_text().splitlines()
        problems += missing_implicit_imports(f.new, f.added, scope)
    return problems


def test_every_implicit_dependent_call_in_the_patch_has_its_import() -> None:
    checkout = os.environ.get("OPENWHISK_CHECKOUT")
    assert patched_file_problems(PATCH.read_text(), Path(checkout) if checkout else None) == []
    for source in sorted(SCALA_DIR.glob("*.scala")):
        lines = source.read_text().splitlines()
        assert missing_implicit_imports(source.name, lines, lines) == []


def test_the_import_check_catches_a_missing_import() -> None:
    """The error the first patch shipped with: getAs[Seq[String]] without DefaultJsonProtocol._."""
    def new_file(*lines: str) -> str:
        body = "".join(f"+{line}\n" for line in lines)
        return ("diff --git a/X.scala b/X.scala\nnew file mode 100644\nindex 0000000..1111111\n"
                f"--- /dev/null\n+++ b/X.scala\n@@ -0,0 +1,{len(lines)} @@\n{body}")

    call = "val r = action.annotations.getAs[Seq[String]](Annotations.InvokerResourcesAnnotationName)"
    assert patched_file_problems(new_file("import spray.json._", call)) == [
        f"X.scala: `{call}` needs spray-json's readers/writers for standard types: "
        "import spray.json.DefaultJsonProtocol._"]
    assert patched_file_problems(new_file("import spray.json.DefaultJsonProtocol._", call)) == []
    # a call named in a comment or a string is no call; toJson needs both imports
    assert patched_file_problems(new_file("// uses getAs[Seq[String]]", 'val s = "x.toJson"')) == []
    assert [p.split(" needs ")[1] for p in patched_file_problems(new_file("val j = 5.toJson"))] == [
        "spray-json's readers/writers for standard types: import spray.json.DefaultJsonProtocol._",
        "spray-json's enrichment: import spray.json._"]
    assert patched_file_problems(new_file("val t = 5.seconds")) != []
    assert patched_file_problems(new_file("import scala.concurrent.duration._", "val t = 5.seconds")) == []


# --------------------------------------------------------------------------- apply script


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True)


def test_apply_script_refuses_a_directory_that_is_not_openwhisk(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(PATCH_DIR / "apply_patch.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "is not an OpenWhisk checkout" in proc.stderr


def test_apply_script_changes_nothing_when_the_patch_does_not_apply(tmp_path: Path) -> None:
    # An OpenWhisk-shaped checkout whose balancer is not the pinned one.
    balancer = tmp_path / apply_patch.BALANCER
    balancer.parent.mkdir(parents=True)
    balancer.write_text("class ShardingContainerPoolBalancer\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "x")
    proc = subprocess.run([sys.executable, str(PATCH_DIR / "apply_patch.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "the patch does not apply" in proc.stderr and apply_patch.PINNED_COMMIT in proc.stderr
    assert balancer.read_text() == "class ShardingContainerPoolBalancer\n"


@pytest.mark.skipif(not os.environ.get("OPENWHISK_CHECKOUT"),
                    reason="OPENWHISK_CHECKOUT (an apache/openwhisk checkout at the pinned commit) not set")
def test_patch_applies_to_the_pinned_checkout() -> None:
    checkout = Path(os.environ["OPENWHISK_CHECKOUT"])
    assert apply_patch.head_commit(checkout) == apply_patch.PINNED_COMMIT
    assert "applies cleanly" in apply_patch.apply(checkout, check_only=True)

#!/usr/bin/env python3
"""Merge the GPU runtimes overlay into an OpenWhisk runtimes manifest (``runtimes.json``).

    python3 controller_patch/merge_manifest.py ansible/files/runtimes.json --in-place
    python3 controller_patch/merge_manifest.py BASE.json -o merged.json
    python3 controller_patch/merge_manifest.py BASE.json --check   # exit 1 if a merge would change BASE

Kinds from the overlay replace the kind of the same name in the base, or are appended to their
family: merging twice gives the same file. The result is checked against the rules the
controller, the invokers and the scheduler apply when they load ``RUNTIMES_MANIFEST``
(``ExecManifest.scala``), plus one of ours: a GPU kind (one ending in ``-gpu``) must have no
``stemCells``, because every invoker that reads the manifest prewarms the stem cells it lists,
so CPU invokers would start GPU images. Exit status: 0 merged (or unchanged), 1 ``--check``
found a difference, 2 invalid input (the message says which kind or field and why).

Standard library only: it runs on the Ansible controller host or a deployment box as is.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_OVERLAY = Path(__file__).resolve().parent / "runtimes-gpu-overlay.json"
GPU_SUFFIX = "-gpu"
# ExecManifest reads memory sizes as ByteSize strings such as "256 MB".
_MEMORY = re.compile(r"^\s*\d+\s*(B|KB|MB|GB|K|M|G)\s*$", re.IGNORECASE)


class ManifestError(ValueError):
    """The manifest (or overlay) is not one that OpenWhisk would load, or breaks the GPU rule."""


@dataclass
class MergeResult:
    manifest: dict[str, Any]
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced)


def _kind(entry: Any, where: str) -> str:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: a runtime must be a JSON object, got {type(entry).__name__}")
    kind = entry.get("kind")
    if not isinstance(kind, str) or not kind.strip():
        raise ManifestError(f"{where}: runtime without a 'kind' string")
    # ExecManifest compares kinds after trim().toLowerCase().
    return kind.strip().lower()


def _check_image(image: Any, where: str) -> None:
    if not isinstance(image, dict):
        raise ManifestError(f"{where}: 'image' must be an object {{name, prefix?, tag?, registry?}}")
    if not isinstance(image.get("name"), str) or not image["name"].strip():
        raise ManifestError(f"{where}: 'image' has no 'name'")
    for key in ("prefix", "tag", "registry"):
        if key in image and not isinstance(image[key], str):
            raise ManifestError(f"{where}: image '{key}' must be a string")


def _check_stem_cells(cells: Any, where: str) -> None:
    if not isinstance(cells, list):
        raise ManifestError(f"{where}: 'stemCells' must be a list")
    for i, cell in enumerate(cells):
        at = f"{where} stemCells[{i}]"
        if not isinstance(cell, dict):
            raise ManifestError(f"{at}: must be an object")
        count = cell.get("initialCount", cell.get("count"))
        if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            raise ManifestError(f"{at}: 'initialCount' must be an integer > 0")
        if not isinstance(cell.get("memory"), str) or not _MEMORY.match(cell["memory"]):
            raise ManifestError(f"{at}: 'memory' must be a size such as \"256 MB\"")


def _check_runtime(entry: dict[str, Any], where: str) -> None:
    if "image" not in entry:
        raise ManifestError(f"{where}: runtime has no 'image'")
    _check_image(entry["image"], where)
    for key in ("default", "deprecated", "requireMain", "sentinelledLogs"):
        if key in entry and not isinstance(entry[key], bool):
            raise ManifestError(f"{where}: '{key}' must be true or false")
    if "attached" in entry:
        attached = entry["attached"]
        if not isinstance(attached, dict) or not all(
            isinstance(attached.get(k), str) for k in ("attachmentName", "attachmentType")
        ):
            raise ManifestError(f"{where}: 'attached' needs attachmentName and attachmentType strings")
    if "stemCells" in entry:
        _check_stem_cells(entry["stemCells"], where)


def _families(manifest: Any, name: str) -> dict[str, list[Any]]:
    if not isinstance(manifest, dict):
        raise ManifestError(f"{name}: the manifest must be a JSON object with 'runtimes'")
    runtimes = manifest.get("runtimes")
    if not isinstance(runtimes, dict):
        raise ManifestError(f"{name}: 'runtimes' must be an object of families")
    for family, entries in runtimes.items():
        if not isinstance(entries, list) or not entries:
            raise ManifestError(f"{name}: family '{family}' must be a non-empty list of runtimes")
    return runtimes


def validate(manifest: Any, name: str = "manifest") -> list[str]:
    """Raise ManifestError unless OpenWhisk would load ``manifest``; return warnings."""
    runtimes = _families(manifest, name)
    seen: dict[str, str] = {}
    warnings: list[str] = []
    for family, entries in runtimes.items():
        defaults = []
        for i, entry in enumerate(entries):
            kind = _kind(entry, f"{name}: {family}[{i}]")
            where = f"{name}: kind '{kind}'"
            if kind in seen:
                raise ManifestError(f"{where} appears twice (families '{seen[kind]}' and '{family}')")
            seen[kind] = family
            _check_runtime(entry, where)
            if entry.get("default") is True:
                defaults.append(kind)
            if kind.endswith(GPU_SUFFIX) and entry.get("stemCells"):
                raise ManifestError(
                    f"{where} has stemCells: every invoker that reads this manifest would prewarm "
                    "the GPU image, CPU invokers included; remove them (the GPU invoker keeps its own "
                    "prewarm settings)"
                )
        if len(entries) > 1 and len(defaults) != 1:
            raise ManifestError(
                f"{name}: family '{family}' has {len(entries)} kinds and {len(defaults)} defaults; "
                "exactly one must be \"default\": true"
            )
        if len(defaults) > 1:
            raise ManifestError(f"{name}: family '{family}' has more than one default")
    blackboxes = manifest.get("blackboxes", [])
    if not isinstance(blackboxes, list):
        raise ManifestError(f"{name}: 'blackboxes' must be a list of images")
    for i, image in enumerate(blackboxes):
        _check_image(image, f"{name}: blackboxes[{i}]")
    nodejs = runtimes.get("nodejs", [])
    if not any(e.get("default") is True for e in nodejs) and len(nodejs) != 1:
        warnings.append(
            f"{name}: no nodejs:default kind; the controller's invoker health test action needs it"
        )
    return warnings


def merge(base: Any, overlay: Any) -> MergeResult:
    """Merge ``overlay`` into a copy of ``base``; both are validated, and so is the result."""
    validate(overlay, "overlay")
    warnings = validate(base, "base")
    merged = copy.deepcopy(base)
    runtimes = merged["runtimes"]
    family_of = {_kind(e, family): family for family, es in runtimes.items() for e in es}
    result = MergeResult(merged, warnings=warnings)
    for family, entries in overlay["runtimes"].items():
        target = runtimes.setdefault(family, [])
        for entry in entries:
            kind = _kind(entry, family)
            owner = family_of.get(kind)
            if owner is not None and owner != family:
                raise ManifestError(
                    f"overlay: kind '{kind}' is in family '{family}' but the base has it in '{owner}'"
                )
            index = next((i for i, e in enumerate(target) if _kind(e, family) == kind), None)
            if index is None:
                target.append(copy.deepcopy(entry))
                result.added.append(kind)
            elif target[index] != entry:
                target[index] = copy.deepcopy(entry)
                result.replaced.append(kind)
    known = [b for b in merged.setdefault("blackboxes", [])]
    for image in overlay.get("blackboxes", []):
        if image not in known:
            merged["blackboxes"].append(copy.deepcopy(image))
            result.added.append(f"blackbox {image['name']}")
    validate(merged, "merged manifest")
    return result


def load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{what} {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{what} {path}: not JSON ({e})") from None


def dumps(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2) + "\n"


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Merge the GPU runtimes overlay into an OpenWhisk runtimes manifest."
    )
    parser.add_argument("base", type=Path, help="the deployment's runtimes.json")
    parser.add_argument("--overlay", type=Path, default=DEFAULT_OVERLAY, help="default: %(default)s")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", type=Path, help="write the merged manifest here (default: stdout)")
    out.add_argument("--in-place", action="store_true", help="rewrite BASE (only if it changes)")
    out.add_argument("--check", action="store_true", help="exit 1 if merging would change BASE")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        result = merge(load_json(args.base, "base"), load_json(args.overlay, "overlay"))
    except ManifestError as e:
        print(f"merge_manifest: error: {e}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"merge_manifest: warning: {warning}", file=sys.stderr)
    summary = f"added {result.added or 'nothing'}, replaced {result.replaced or 'nothing'}"
    if args.check:
        print(f"merge_manifest: {'would change' if result.changed else 'up to date'}: {summary}",
              file=sys.stderr)
        return 1 if result.changed else 0
    text = dumps(result.manifest)
    if args.in_place:
        if result.changed:
            args.base.write_text(text, encoding="utf-8")
        print(f"merge_manifest: {args.base}: {summary}", file=sys.stderr)
    elif args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"merge_manifest: {args.output}: {summary}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

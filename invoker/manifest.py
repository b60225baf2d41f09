"""The runtimes manifest (``RUNTIMES_MANIFEST``; OpenWhisk's
``ExecManifest.scala`` and ``ansible/files/runtimes.json``): which kinds exist,
which image each runs, and which stem cells to prewarm."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invoker.messages import ByteSize, MessageError

DEFAULT_MANIFEST_PATH = Path(__file__).with_name("runtimes.json")


@dataclass(frozen=True)
class StemCell:
    """``count`` prewarmed containers of ``kind`` with ``memory_mb`` (for a GPU kind: on every GPU)."""

    kind: str
    memory_mb: int
    count: int


@dataclass(frozen=True)
class ImageName:
    name: str
    prefix: str | None = None
    tag: str | None = None
    registry: str | None = None

    def resolve(self, default_registry: str | None = None) -> str:
        parts = [p for p in (self.registry or default_registry, self.prefix) if p]
        ref = "/".join([*parts, self.name])
        return f"{ref}:{self.tag}" if self.tag else ref


@dataclass(frozen=True)
class RuntimeKind:
    kind: str
    family: str
    image: ImageName
    default: bool = False
    deprecated: bool = False
    attached: bool = False
    require_main: bool = False
    sentinelled_logs: bool = True
    stem_cells: tuple[StemCell, ...] = ()

    @property
    def is_gpu(self) -> bool:
        return self.kind.endswith("-gpu")


class RuntimesManifest:
    def __init__(self, kinds: list[RuntimeKind], blackboxes: list[ImageName]) -> None:
        self.kinds = {k.kind: k for k in kinds}
        self.blackboxes = blackboxes
        families: dict[str, list[RuntimeKind]] = {}
        for kind in kinds:
            families.setdefault(kind.family, []).append(kind)
        for family, members in families.items():
            defaults = [k for k in members if k.default]
            if len(members) > 1 and len(defaults) != 1:
                raise MessageError(f"runtime family {family!r} needs exactly one default kind")
        self._families = families

    @classmethod
    def from_json(cls, value: Any) -> RuntimesManifest:
        if not isinstance(value, dict) or not isinstance(value.get("runtimes"), dict):
            raise MessageError("a runtimes manifest is {'runtimes': {family: [...]}, 'blackboxes': [...]}")
        kinds = []
        for family, entries in value["runtimes"].items():
            for entry in entries:
                kind = entry["kind"].strip().lower()
                cells = tuple(
                    StemCell(
                        kind=kind,
                        memory_mb=ByteSize.parse(cell["memory"]).megabytes,
                        count=int(cell.get("initialCount", cell.get("count", 0))),
                    )
                    for cell in entry.get("stemCells", [])
                )
                kinds.append(
                    RuntimeKind(
                        kind=kind,
                        family=family,
                        image=ImageName(**_image_fields(entry["image"])),
                        default=bool(entry.get("default", False)),
                        deprecated=bool(entry.get("deprecated", False)),
                        attached="attached" in entry,
                        require_main=bool(entry.get("requireMain", False)),
                        sentinelled_logs=bool(entry.get("sentinelledLogs", True)),
                        stem_cells=cells,
                    )
                )
        blackboxes = [ImageName(**_image_fields(b)) for b in value.get("blackboxes", [])]
        return cls(kinds, blackboxes)

    @classmethod
    def load(cls, text: str | None = None, path: Path | None = None) -> RuntimesManifest:
        """From JSON text (the ``RUNTIMES_MANIFEST`` env var), a file, or the default."""
        if text is None:
            text = (path or DEFAULT_MANIFEST_PATH).read_text()
        return cls.from_json(json.loads(text))

    def resolve(self, kind: str) -> RuntimeKind | None:
        """An exact kind, or ``family:default``."""
        kind = kind.strip().lower()
        if kind in self.kinds:
            return self.kinds[kind]
        family, _, suffix = kind.partition(":")
        if suffix == "default" and family in self._families:
            members = self._families[family]
            return next((k for k in members if k.default), members[0] if len(members) == 1 else None)
        return None

    def stem_cells(self) -> tuple[StemCell, ...]:
        return tuple(cell for kind in self.kinds.values() for cell in kind.stem_cells)


def _image_fields(value: dict) -> dict:
    return {k: value.get(k) for k in ("name", "prefix", "tag", "registry") if value.get(k) is not None}

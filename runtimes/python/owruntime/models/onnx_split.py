"""Cut an ONNX graph into stages at topological cut points; cache the stages on disk.

A cut before node ``c`` (nodes in topological order) is taken only where few tensors cross it
(at most ``max_crossing`` activations, each with a known type); among those, cuts are chosen
so the stages carry about equal weight bytes, since the weights are what must be copied.
``Constant`` node outputs never count as crossing: each stage gets its own copy of the
constants it reads. An initializer read by two stages is stored in both (rare: tied weights).

The stage models, and ``split.json`` describing them, are written once to
``<cache_dir>/<digest>-s<stages>-x<max_crossing>/``; a later load of the same model (same
digest) reads the stages from there without parsing the full model again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
from onnx import helper

from .errors import ModelSplitError, UnknownModelFormatError

SPLIT_VERSION = 1


@dataclass(frozen=True)
class Stage:
    file: str  # relative to the split directory
    inputs: list[str]
    outputs: list[str]
    nbytes: int  # initializer bytes
    nodes: int


@dataclass(frozen=True)
class Split:
    directory: Path
    digest: str
    inputs: list[str]  # the model's inputs, in order
    outputs: list[str]
    stages: list[Stage]
    cuts: list[int]  # node index where each stage after the first starts

    def stage_path(self, k: int) -> Path:
        return self.directory / self.stages[k].file


def read_onnx(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise UnknownModelFormatError(f"{str(path)!r} is not a valid ONNX model: {e}") from e


def _subgraph_inputs(g: onnx.GraphProto) -> set[str]:
    """Outer-scope names a subgraph (If/Loop/Scan body) reads."""
    defined = {i.name for i in g.input} | {i.name for i in g.initializer}
    used: set[str] = set()
    for n in g.node:
        used |= {x for x in _node_inputs(n) if x not in defined}
        defined |= set(n.output)
    return used


def _node_inputs(n: onnx.NodeProto) -> list[str]:
    names = [x for x in n.input if x]
    for a in n.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else []) + list(a.graphs):
            names += sorted(_subgraph_inputs(g))
    return names


def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.raw_data:
        return len(t.raw_data)
    n = 1
    for d in t.dims:
        n *= d
    return n * max(1, onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)


def _static(nodes: list[onnx.NodeProto], inits: set[str]) -> dict[str, set[str]]:
    """Outputs computed from weights and constants alone -> the initializers they read.

    The exporter leaves such nodes (weight transposes, shape constants) at the top of the
    graph; they belong to the stage that reads them, never to a stage of their own.
    """
    static: dict[str, set[str]] = {}
    for n in nodes:
        ins = _node_inputs(n)
        if n.op_type == "Constant" or (ins and all(x in inits or x in static for x in ins)):
            srcs = set().union(*(static.get(x, {x} if x in inits else set()) for x in ins))
            for o in n.output:
                static[o] = srcs
    return static


def plan_cuts(model: onnx.ModelProto, stages: int, max_crossing: int) -> list[int]:
    """Node indices where stages 1.. start (fewer than ``stages - 1`` if the graph has few cuts)."""
    g = model.graph
    nodes = list(g.node)
    inits = {t.name: _tensor_bytes(t) for t in g.initializer}
    static = _static(nodes, set(inits))
    free = set(static)
    types = {v.name for v in list(g.input) + list(g.value_info) + list(g.output)
             if v.type.tensor_type.elem_type}
    produced: dict[str, int] = {i.name: -1 for i in g.input if i.name not in inits}
    last_use: dict[str, int] = {}
    first_bytes = [0] * len(nodes)
    seen_init: set[str] = set()
    for k, n in enumerate(nodes):
        if n.output and n.output[0] in static:
            continue
        for x in _node_inputs(n):
            for w in static.get(x, {x} if x in inits else set()):
                if w not in seen_init:
                    seen_init.add(w)
                    first_bytes[k] += inits[w]
            if x not in free and x not in inits:
                if x not in produced:
                    raise ModelSplitError(f"graph not in topological order at node {n.name or k}")
                last_use[x] = k
        for o in n.output:
            if o and o not in free:
                produced[o] = k
    for o in g.output:
        last_use[o.name] = len(nodes)
    # crossing[c]: activations alive across the cut before node c; typed: all have a type
    crossing = [0] * (len(nodes) + 2)
    untyped = [0] * (len(nodes) + 2)
    for name, p in produced.items():  # +1 over cuts p+1..end, as differences
        end = last_use.get(name, p)
        if end > p:
            crossing[p + 1] += 1
            crossing[end + 1] -= 1
            if name not in types:
                untyped[p + 1] += 1
                untyped[end + 1] -= 1
    for c in range(1, len(crossing)):
        crossing[c] += crossing[c - 1]
        untyped[c] += untyped[c - 1]
    total = sum(first_bytes)
    cum = [0]
    for b in first_bytes:
        cum.append(cum[-1] + b)
    valid = [c for c in range(1, len(nodes)) if crossing[c] <= max_crossing and not untyped[c]]
    cuts: list[int] = []
    for j in range(1, stages):
        target = total * j / stages
        best = min(
            (c for c in valid if not cuts or c > cuts[-1]),
            key=lambda c: (abs(cum[c] - target), crossing[c]),
            default=None,
        )
        if best is not None and cum[best] > (cum[cuts[-1]] if cuts else 0):
            cuts.append(best)
    return cuts


def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    g = model.graph
    return {v.name: v for v in list(g.value_info) + list(g.input) + list(g.output)}


def build_split(model: onnx.ModelProto, cuts: list[int], directory: Path, digest: str) -> Split:
    g = model.graph
    nodes = list(g.node)
    inits = {t.name: t for t in g.initializer}
    static = _static(nodes, set(inits))
    consts = {o: n for n in nodes for o in n.output if o in static}
    vinfo = _value_infos(model)
    position = {id(n): i for i, n in enumerate(nodes)}
    bounds = [0, *cuts, len(nodes)]
    graph_outputs = [o.name for o in g.output]
    later_use: list[set[str]] = []  # names read by stages after k, or model outputs
    acc = set(graph_outputs)
    for k in reversed(range(len(bounds) - 1)):
        later_use.append(set(acc))
        for n in nodes[bounds[k] : bounds[k + 1]]:
            acc |= set(_node_inputs(n))
    later_use.reverse()
    stages: list[Stage] = []
    for k in range(len(bounds) - 1):
        body = [n for n in nodes[bounds[k] : bounds[k + 1]]
                if not (n.output and n.output[0] in static)]
        made = {o for n in body for o in n.output}
        reads = [x for n in body for x in _node_inputs(n)]
        pre: list[onnx.NodeProto] = []  # the static nodes this stage reads, transitively
        todo = [x for x in reads if x in consts]
        while todo:
            n = consts[todo.pop()]
            if all(n is not m for m in pre):
                pre.append(n)
                todo += [x for x in _node_inputs(n) if x in consts]
        pre.sort(key=lambda n: position[id(n)])
        stage_inits = sorted({x for n in pre + body for x in _node_inputs(n) if x in inits})
        ins = list(dict.fromkeys(x for x in reads if x not in made and x not in inits
                                 and x not in consts))
        outs = [o for o in dict.fromkeys(o for n in body for o in n.output) if o in later_use[k]]
        stage_nodes = pre + body
        sg = helper.make_graph(
            stage_nodes,
            f"{g.name or 'model'}_stage{k}",
            [vinfo[x] for x in ins],
            [vinfo[x] for x in outs],
            initializer=[inits[x] for x in stage_inits],
        )
        sm = helper.make_model(sg, opset_imports=model.opset_import, ir_version=model.ir_version)
        sm.functions.extend(model.functions)
        file = f"stage-{k}.onnx"
        onnx.save(sm, str(directory / file))
        nbytes = sum(_tensor_bytes(inits[x]) for x in stage_inits)
        stages.append(Stage(file, ins, outs, nbytes, len(stage_nodes)))
    inputs = [i.name for i in g.input if i.name not in inits]
    return Split(directory, digest, inputs, graph_outputs, stages, cuts)


def load_or_split(
    path: Path, digest: str, cache_dir: Path, *, stages: int, max_crossing: int
) -> tuple[Split, bool]:
    """-> (split, reused): the cached split for this digest, else compute and store it."""
    directory = cache_dir / f"{digest}-s{stages}-x{max_crossing}"
    if (cached := _read_split(directory, digest)) is not None:
        return cached, True
    shutil.rmtree(directory, ignore_errors=True)  # a stale or broken entry
    model = read_onnx(path)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - cuts then need the types the exporter wrote
        pass
    cuts = plan_cuts(model, stages, max_crossing)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".split-", dir=cache_dir))
    try:
        split = build_split(model, cuts, tmp, digest)
        (tmp / "split.json").write_text(json.dumps({
            "version": SPLIT_VERSION, "digest": digest, "source": str(path),
            "inputs": split.inputs, "outputs": split.outputs, "cuts": cuts,
            "stages": [asdict(s) for s in split.stages],
        }, indent=1))
        try:
            os.replace(tmp, directory)  # atomic: a concurrent loader sees all or nothing
        except OSError:  # another process stored it first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if (cached := _read_split(directory, digest)) is not None:
                return cached, True
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Split(directory, digest, split.inputs, split.outputs, split.stages, cuts), False


def _read_split(directory: Path, digest: str) -> Split | None:
    try:
        d = json.loads((directory / "split.json").read_text())
        if d.get("version") != SPLIT_VERSION or d.get("digest") != digest:
            return None
        split = Split(directory, digest, d["inputs"], d["outputs"],
                      [Stage(**s) for s in d["stages"]], d["cuts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(split.stage_path(k).is_file() for k in range(len(split.stages))):
        return None
    return split

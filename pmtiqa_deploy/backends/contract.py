"""The graph's inputs and outputs against the spec: one check shared by every backend that
loads a model file (ONNX Runtime, TensorRT), so a model whose signature drifted from its
model.json fails at load time with a message naming the tensor, not at the first batch
with a shape error from deep inside a library."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pmtiqa_deploy.errors import SpecError
from pmtiqa_deploy.spec import ModelSpec

Dim = int | str | None  # a static size, or a symbolic/unknown one (None, a name, or -1)


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output as its library reports it, dtype as a NumPy name."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]


def is_dynamic(dim: Dim) -> bool:
    return dim is None or isinstance(dim, str) or dim < 0


def check_io(spec: ModelSpec, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo],
             where: str) -> None:
    """Raise SpecError unless the graph has exactly the spec's input and outputs, with the
    spec's dtypes, ranks and static sizes. `where` names the file in the message."""
    advice = "re-export the model so the file and model.json are written together"
    expected = spec.input
    if len(inputs) != 1:
        raise SpecError(f"{where} has {len(inputs)} inputs {[t.name for t in inputs]}; the spec "
                        f"describes one, {expected.name!r}: {advice}")
    graph_in = inputs[0]
    if graph_in.name != expected.name:
        raise SpecError(f"{where} takes input {graph_in.name!r} but the spec names it "
                        f"{expected.name!r}: {advice}")
    if graph_in.dtype != expected.dtype:
        raise SpecError(f"{where} input {graph_in.name!r} is {graph_in.dtype} but the spec says "
                        f"{expected.dtype}: {advice}")
    want = spec.input_shape(1)
    if len(graph_in.shape) != len(want):
        raise SpecError(f"{where} input {graph_in.name!r} has shape {list(graph_in.shape)}; the "
                        f"spec's layout {expected.layout} needs rank {len(want)}: {advice}")
    for axis, (size, need) in enumerate(zip(graph_in.shape[1:], want[1:]), start=1):
        if not is_dynamic(size) and size != need:
            raise SpecError(f"{where} input {graph_in.name!r} has size {size} on axis {axis}; the "
                            f"spec ({expected.layout}, {spec.preprocess.crop_count} crops of "
                            f"{spec.preprocess.crop_size}) needs {need}: {advice}")
    batch = graph_in.shape[0]
    if not is_dynamic(batch) and not expected.batch_min == batch == expected.batch_max:
        raise SpecError(f"{where} has a fixed batch of {batch} but the spec allows "
                        f"{expected.batch_min}..{expected.batch_max}: export with a dynamic batch")

    by_name = {t.name: t for t in outputs}
    wanted = {o.name for o in spec.outputs}
    missing = sorted(wanted - set(by_name))
    extra = sorted(set(by_name) - wanted)
    if missing or extra:
        raise SpecError(f"{where} outputs {sorted(by_name)} differ from the spec's {sorted(wanted)} "
                        f"(missing {missing}, not in the spec {extra}): {advice}")
    for out in spec.outputs:
        have = by_name[out.name]
        if have.dtype != out.dtype:
            raise SpecError(f"{where} output {out.name!r} is {have.dtype} but the spec says "
                            f"{out.dtype}: {advice}")
        if len(have.shape) != len(out.shape):
            raise SpecError(f"{where} output {out.name!r} has shape {list(have.shape)}; the spec "
                            f"says {list(out.shape)}: {advice}")
        for axis, (got, size_spec) in enumerate(zip(have.shape, out.shape)):
            if isinstance(size_spec, int) and not is_dynamic(got) and got != size_spec:
                raise SpecError(f"{where} output {out.name!r} has size {got} on axis {axis}; the "
                                f"spec says {size_spec}: {advice}")
    if not {"score", "level_probs"} <= wanted:
        raise SpecError(f"the spec's outputs {sorted(wanted)} lack 'score' or 'level_probs', which "
                        "every backend returns: re-export the model")

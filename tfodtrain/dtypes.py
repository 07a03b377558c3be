"""float64 found before training: in the input pipeline's element specs and in the model's variables.

float64 doubles the memory of every tensor it touches, and detection models gain nothing from it: a
NumPy default (`np.float64`) in a preprocessing function is the usual way it sneaks into a pipeline.
`data.float64` decides what happens to what is found (each tensor is reported by name with its bytes):

    cast  (default)  datasets: cast to float32 inside the pipeline, with a warning naming each tensor and
                     the bytes saved per batch; variables: reported (a built variable keeps its dtype:
                     give its layer dtype=float32)
    error            stop before training, one line naming the first tensor (exit 2)
    allow            keep float64, with the same report

`data.float64_images=true` feeds the training images as float64 (a demo switch for this check).

Example:
    >>> found = find_float64_specs(train_ds.element_spec, "train dataset", batch_size=8)
    >>> found[0].describe()   # 'train dataset images float64[8, 320, 320, 3]: 18.8 MiB per batch'
"""

from __future__ import annotations

import dataclasses
import logging

from tfodtrain.exit_codes import UserError

log = logging.getLogger(__name__)
MODES = ("cast", "error", "allow")


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclasses.dataclass(frozen=True)
class Float64Tensor:
    where: str  # "train dataset", "val dataset", "model variable"
    name: str
    shape: tuple
    bytes: int  # what it takes in float64 (per batch for a dataset tensor)

    @property
    def bytes_saved_by_cast(self) -> int:
        return self.bytes // 2

    def describe(self) -> str:
        per = " per batch" if "dataset" in self.where else ""
        return f"{self.where} {self.name} float64{list(self.shape)}: {format_bytes(self.bytes)}{per}"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "shape": list(self.shape), "bytes_saved_by_cast": self.bytes_saved_by_cast}


def _elements(shape, batch_size: int | None) -> int:
    dims = [batch_size if (d is None and i == 0 and batch_size) else d for i, d in enumerate(shape)]
    count = 1
    for d in dims:
        count *= d if d is not None else 1  # an unknown inner dimension counts once: a lower bound
    return count


def _leaves(structure, path: str = ""):
    """(path, leaf) of a nest of dicts, tuples and lists: `1/box_targets/3` for a detection element."""
    if isinstance(structure, dict):
        items = structure.items()
    elif isinstance(structure, (tuple, list)):
        items = enumerate(structure)
    else:
        yield path, structure
        return
    for key, value in items:
        yield from _leaves(value, f"{path}/{key}" if path else str(key))


def find_float64_specs(element_spec, where: str, batch_size: int | None = None) -> list[Float64Tensor]:
    """The float64 tensors of a dataset's element spec, named by their path in the element."""
    import tensorflow as tf

    found = []
    for path, spec in _leaves(element_spec):
        if getattr(spec, "dtype", None) == tf.float64:
            name = path or "element"
            if name == "0":
                name = "images"  # (images, labels) is the detection element
            elif name.startswith("1/"):
                name = "labels/" + name[2:]
            shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else ()
            found.append(Float64Tensor(where, name, shape, _elements(shape, batch_size) * 8))
    return found


def find_float64_variables(model) -> list[Float64Tensor]:
    import tensorflow as tf

    return [Float64Tensor("model variable", v.name, tuple(v.shape.as_list()), int(v.shape.num_elements() or 0) * 8)
            for v in model.variables if v.dtype == tf.float64]


def cast_float64(dataset):
    """The dataset with every float64 tensor of its elements cast to float32 (in the pipeline)."""
    import tensorflow as tf

    def cast(*element):
        element = element[0] if len(element) == 1 else element
        return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32) if t.dtype == tf.float64 else t, element)

    return dataset.map(cast, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def images_as_float64(dataset):
    """Demo switch `data.float64_images`: the (images, labels) elements with float64 images."""
    import tensorflow as tf

    return dataset.map(lambda images, labels: (tf.cast(images, tf.float64), labels),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def apply_float64_policy(mode: str, datasets: dict, batch_sizes: dict, model=None, quiet: bool = False):
    """Find float64 in `datasets` ({"train": ds, ...}) and `model`; act by `mode`.

    Returns (datasets, report) with the datasets cast when mode is `cast`; raises UserError in `error` mode.
    """
    if mode not in MODES:
        raise UserError(f"data.float64={mode!r} is not one of: {', '.join(MODES)}")
    found = []
    for split, ds in datasets.items():
        found += find_float64_specs(ds.element_spec, f"{split} dataset", batch_sizes.get(split))
    if model is not None:
        found += find_float64_variables(model)
    report = {"mode": mode, "tensors": [t.to_dict() for t in found], "bytes": sum(t.bytes for t in found),
              "bytes_saved_by_cast": 0}
    if not found:
        return datasets, report
    if quiet:  # the same datasets again (pre-flight search steps): already reported
        return {s: cast_float64(ds) if mode == "cast" and any(t.where == f"{s} dataset" for t in found) else ds
                for s, ds in datasets.items()}, report
    if mode == "error":
        raise UserError(f"float64 found: {found[0].describe()}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
                        + "; use float32 there, or set data.float64=cast to cast it in the pipeline (allow: keep it)")
    datasets = dict(datasets)
    for tensor in found:
        if mode == "cast" and "dataset" in tensor.where:
            log.warning("float64 check: %s; cast to float32 in the input pipeline, saving %s per batch "
                        "(data.float64=allow keeps it, =error stops)", tensor.describe(),
                        format_bytes(tensor.bytes_saved_by_cast))
        elif mode == "cast":
            log.warning("float64 check: %s; kept (a built variable keeps its dtype: build its layer with "
                        "dtype=float32), casting would save %s", tensor.describe(), format_bytes(tensor.bytes_saved_by_cast))
        else:
            log.warning("float64 check: %s; kept (data.float64=allow)", tensor.describe())
    if mode == "cast":
        for split in {t.where.split()[0] for t in found if "dataset" in t.where}:
            datasets[split] = cast_float64(datasets[split])
        report["bytes_saved_by_cast"] = sum(t.bytes_saved_by_cast for t in found if "dataset" in t.where)
        log.warning("float64 check: the cast saves %s per batch in all", format_bytes(report["bytes_saved_by_cast"]))
    return datasets, report

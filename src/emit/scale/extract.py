"""The one batch function of a feature job: paths -> ``path, sha256, features, error`` rows.

:class:`ExtractBatch` is a callable class: the backbone is loaded once in ``__init__`` (once per
Ray actor) and every call maps one batch. The local engine calls it in-process, the Ray engine
hands the class to ``Dataset.map_batches``, so both engines compute the same rows the same way.

Each image file is read once: its bytes are hashed (the feature cache's key) and decoded from
memory. A file that cannot be read or decoded becomes a row with ``error`` set and no features;
it never fails the batch.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from emit.data.images import ImageError, load_image
from emit.devices import inference_context, resolve_device, to_device
from emit.problems import EmitError
from emit.scale.shards import Identity
from emit.vision.backbones import create_backbone
from emit.vision.features import FeatureCache, feature_key

CACHED = "_cached"  # an extra output column: True where the vector came from the feature cache


def _read(path: str) -> bytes | str:
    """The file's bytes, or an error text that names the file and the fix."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return str(ImageError(path, "image file not found", "check the path, or remove its entry"))
    except IsADirectoryError:
        return str(ImageError(path, "is a folder, not an image file", "point to the image file inside it"))
    except OSError as exc:
        return str(ImageError(path, f"cannot read the file ({exc.strerror or exc})",
                              "check its permissions and the disk"))
    return data


class ExtractBatch:
    """Feature rows for a batch of image paths (a :class:`pyarrow.Table` with a ``path`` column;
    other columns are passed through)."""

    def __init__(self, backbone: str, *, weights: str | None = None, device: str = "auto",
                 cache_dir: str | os.PathLike[str] | None = None, decode_threads: int = 1,
                 torch_threads: int | None = None) -> None:
        if torch_threads:  # a Ray actor gets the threads of its CPUs, not the whole machine's
            torch.set_num_threads(torch_threads)
        self.device = resolve_device(device)
        self.backbone = create_backbone(backbone, weights)
        self.backbone.model.to(self.device).eval()
        self.transform = self.backbone.transform
        self.identity = Identity(backbone, self.backbone.key, self.backbone.dim)
        self.cache = FeatureCache(cache_dir, feature_key(self.backbone)) if cache_dir else None
        self.decode_threads = max(1, int(decode_threads))

    def __call__(self, batch: pa.Table | dict[str, Any]) -> pa.Table:
        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        paths = [str(p) for p in table.column("path").to_pylist()]
        n = len(paths)
        hashes: list[str | None] = [None] * n
        errors: list[str | None] = [None] * n
        vectors: list[np.ndarray | None] = [None] * n
        cached = [False] * n

        with ThreadPoolExecutor(self.decode_threads) as pool:
            data = list(pool.map(_read, paths))
            for i, item in enumerate(data):
                if isinstance(item, str):
                    errors[i] = item
                else:
                    hashes[i] = hashlib.sha256(item).hexdigest()
            found = self.cache.get_many(h for h in hashes if h) if self.cache is not None else {}
            found = {h: v for h, v in found.items() if v.shape == (self.backbone.dim,)}
            # one computation per distinct content not in the cache
            todo: dict[str, int] = {}
            for i, h in enumerate(hashes):
                if h is not None and h not in found and h not in todo:
                    todo[h] = i
            decoded = list(pool.map(self._decode, [paths[i] for i in todo.values()],
                                    [data[i] for i in todo.values()]))
        del data
        good = [(h, x) for h, x in zip(todo, decoded, strict=True) if isinstance(x, torch.Tensor)]
        bad = {h: x for h, x in zip(todo, decoded, strict=True) if isinstance(x, str)}
        computed = self._forward(good)
        if self.cache is not None and computed:
            self.cache.put_many(computed)

        for i, h in enumerate(hashes):
            if h is None:
                continue
            if h in found:
                vectors[i], cached[i] = found[h], True
            elif h in computed:
                vectors[i] = computed[h]
            else:  # same bytes as the failed file: same message, naming this file
                errors[i] = bad[h].replace(paths[todo[h]], paths[i], 1)

        columns = {"path": pa.array(paths, pa.string()), "sha256": pa.array(hashes, pa.string()),
                   "features": _list_array(vectors, self.backbone.dim),
                   "error": pa.array(errors, pa.string()), CACHED: pa.array(cached, pa.bool_())}
        # other input columns (the Ray engine's partition number) pass through
        columns.update({k: table.column(k) for k in table.column_names if k not in columns})
        return pa.table(columns)

    def _decode(self, path: str, data: bytes) -> torch.Tensor | str:
        try:
            image = load_image(path, data)
        except ImageError as exc:
            return str(exc)
        try:
            return self.transform(image)
        except (OSError, ValueError) as exc:
            return str(ImageError(path, f"image could not be transformed ({type(exc).__name__}: {exc})",
                                  "re-save it as an ordinary RGB JPEG or PNG"))

    def _forward(self, good: list[tuple[str, torch.Tensor]]) -> dict[str, np.ndarray]:
        if not good:
            return {}
        x = to_device(torch.stack([t for _, t in good]), self.device)
        with inference_context(self.device):
            out = self.backbone.model(x)
        # float32 on every device: a GPU run and a CPU run write the same kind of vector
        out_np = out.float().cpu().numpy()
        if out_np.shape != (len(good), self.backbone.dim):
            raise EmitError(f"backbone {self.backbone.name} returned features of shape {out_np.shape}, "
                            f"expected ({len(good)}, {self.backbone.dim})")
        return {h: out_np[i] for i, (h, _) in enumerate(good)}

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def _list_array(vectors: list[np.ndarray | None], dim: int) -> pa.Array:
    """list<float32> with a null for each missing vector, built without Python floats."""
    ok = [v is not None for v in vectors]
    counts = np.where(ok, dim, 0)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    values = (np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in vectors if v is not None])
              if any(ok) else np.zeros(0, np.float32))
    mask = pa.array([not k for k in ok], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()), mask=mask)

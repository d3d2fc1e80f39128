r"""Packed binary codes and exact / approximate Hamming search, saved as an index on disk.

Codes :math:`\{-1, +1\}^K` are stored as bits (:math:`+1 \mapsto 1`), packed eight per byte,
zero-padded to whole bytes: a 12-bit code takes 2 bytes, and the padding bits are zero in
every code, so distances are unchanged.

Engines:

- ``"numpy"``: our packed search: XOR of 64-bit words and a population count.
- ``"faiss"``: FAISS ``IndexBinaryFlat`` (exact), when ``faiss-cpu`` is installed.
- ``"faiss_hnsw"``: FAISS ``IndexBinaryHNSW`` (approximate, for large collections).

The exact engines return the same result: the ``k`` nearest codes, ties broken by
database order (smaller id first).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np

from ..utils.optional import has_faiss

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "HammingIndex", "SavedIndex", "pack_codes", "unpack_codes"]

ENGINES = ("auto", "numpy", "faiss", "faiss_hnsw")


def pack_codes(codes: Any) -> np.ndarray:
    """``(N, K)`` codes in {-1, +1} to ``(N, ceil(K/8))`` uint8 (+1 -> bit 1). Relaxed codes are
    refused: binarise them explicitly with :func:`gdf_pyg.binarize`."""
    arr = np.asarray(codes.detach().cpu().numpy() if hasattr(codes, "detach") else codes)
    if arr.ndim != 2:
        raise ValueError(f"codes must have shape (items, bits), got {arr.shape}")
    bad = (arr != 1) & (arr != -1)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"codes must be binary, in {{-1, +1}}; entry ({row}, {col}) is {arr[row, col].item()!r}. "
                         "Binarise relaxed codes explicitly with gdf_pyg.binarize")
    return np.packbits(arr > 0, axis=1)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``(N, bits)`` float32 codes in {-1, +1}."""
    unpacked = np.unpackbits(packed, axis=1, count=bits)
    return np.where(unpacked > 0, 1.0, -1.0).astype(np.float32)


def _as_words(packed: np.ndarray) -> np.ndarray:
    """Packed bytes viewed as uint64 words (zero-padded to a multiple of 8 bytes)."""
    n, nbytes = packed.shape
    width = -(-nbytes // 8) * 8
    buf = np.zeros((n, width), dtype=np.uint8)
    buf[:, :nbytes] = packed
    return buf.view(np.uint64)


def _topk_by_distance_then_id(dist: np.ndarray, ids: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Row-wise ``k`` smallest ``(dist, id)`` pairs, sorted."""
    key = dist.astype(np.int64) * (int(ids.max(initial=0)) + 1) + ids
    if k < key.shape[1]:
        part = np.argpartition(key, k - 1, axis=1)[:, :k]
        key = np.take_along_axis(key, part, axis=1)
    order = np.argsort(key, axis=1, kind="stable")
    key = np.take_along_axis(key, order, axis=1)
    base = int(ids.max(initial=0)) + 1
    return (key // base).astype(np.int32), (key % base).astype(np.int64)


class HammingIndex:
    """Binary codes of a database and k-nearest-neighbour search over them.

    Args:
        bits (int): code length :math:`K`.
        engine (str): ``"auto"`` (FAISS flat when installed, else numpy), ``"numpy"``,
            ``"faiss"`` or ``"faiss_hnsw"``.
        hnsw_m (int): neighbours per HNSW node. (default: :obj:`32`)
    """

    def __init__(self, bits: int, engine: str = "auto", hnsw_m: int = 32, chunk: int = 64) -> None:
        if bits < 1:
            raise ValueError(f"bits must be positive, got {bits}")
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
        if engine == "auto":
            engine = "faiss" if has_faiss() else "numpy"
        if engine.startswith("faiss") and not has_faiss():
            raise ImportError(f"engine {engine!r} needs faiss-cpu (pip install faiss-cpu); engine='numpy' needs nothing")
        self.bits = bits
        self.nbytes = -(-bits // 8)
        self.engine = engine
        self.hnsw_m = hnsw_m
        self.chunk = chunk
        self._packed = np.zeros((0, self.nbytes), dtype=np.uint8)
        self._faiss = None

    def __len__(self) -> int:
        return self._packed.shape[0]

    def _check(self, packed: np.ndarray, what: str) -> np.ndarray:
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        if packed.ndim != 2 or packed.shape[1] != self.nbytes:
            raise ValueError(f"{what} must be packed codes of shape (N, {self.nbytes}) for {self.bits} bits, got {packed.shape}")
        return packed

    def add(self, packed: np.ndarray) -> None:
        """Appends packed codes (see :func:`pack_codes`); ids continue from :func:`len`."""
        packed = self._check(packed, "codes")
        self._packed = np.concatenate([self._packed, packed])
        self._faiss = None  # rebuilt lazily

    def _faiss_index(self):
        import faiss

        if self._faiss is None:
            d = self.nbytes * 8
            index = faiss.IndexBinaryHNSW(d, self.hnsw_m) if self.engine == "faiss_hnsw" else faiss.IndexBinaryFlat(d)
            index.add(self._packed)
            self._faiss = index
        return self._faiss

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest database codes of each packed query.

        Returns:
            ``(distances, ids)``, both ``(Q, min(k, len))``: Hamming distances (int32) and
            database ids (int64), nearest first, ties by smaller id.
        """
        queries = self._check(queries, "queries")
        if len(self) == 0:
            raise ValueError("the index is empty")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = min(k, len(self))
        if self.engine == "numpy":
            return self._search_numpy(queries, k)
        return self._search_faiss(queries, k)

    def _search_numpy(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        db = _as_words(self._packed)
        q = _as_words(queries)
        out_d = np.empty((q.shape[0], k), dtype=np.int32)
        out_i = np.empty((q.shape[0], k), dtype=np.int64)
        dtype = np.uint8 if self.bits < 256 else np.uint16
        for start in range(0, q.shape[0], self.chunk):
            qs = q[start:start + self.chunk]
            dist = np.bitwise_count(qs[:, 0, None] ^ db[None, :, 0]).astype(dtype)
            for w in range(1, db.shape[1]):
                dist += np.bitwise_count(qs[:, w, None] ^ db[None, :, w]).astype(dtype)
            # The k-th smallest distance per row; every code within it is a candidate, and
            # the few candidates are ordered by (distance, id) exactly.
            kth = np.partition(dist, k - 1, axis=1)[:, k - 1]
            for r in range(qs.shape[0]):
                cand = np.flatnonzero(dist[r] <= kth[r])
                order = np.argsort(dist[r, cand], kind="stable")[:k]
                out_d[start + r] = dist[r, cand[order]]
                out_i[start + r] = cand[order]
        return out_d, out_i

    def _search_faiss(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        dist, ids = self._faiss_index().search(queries, k)
        dist, ids = dist.astype(np.int32), ids.astype(np.int64)
        if self.engine == "faiss":
            # Already the exact rule: IndexBinaryFlat scans ids in order and its heap compares
            # (distance, id) pairs, so among codes tied at the k-th distance the smallest ids
            # stay, and the result comes out in (distance, id) order (faiss/utils/hamming.cpp;
            # tests/retrieval/test_index.py checks it on codes full of ties).
            return dist, ids
        return _topk_by_distance_then_id(dist, ids, k)  # HNSW: its own order, made deterministic


@dataclass
class SavedIndex:
    """An encoded image collection on disk: packed codes, labels, paths and the model."""

    bits: int
    packed: np.ndarray
    labels: np.ndarray  # -1 where unknown
    paths: List[str]
    classes: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)

    FILES = ("codes.npy", "labels.npy", "paths.json", "meta.json")

    def save(self, folder: Union[str, Path]) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "codes.npy", self.packed)
        np.save(folder / "labels.npy", self.labels.astype(np.int64))
        (folder / "paths.json").write_text(json.dumps(self.paths, indent=0))
        meta = {**self.meta, "bits": self.bits, "num_items": len(self.paths), "classes": self.classes}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: Union[str, Path]) -> "SavedIndex":
        folder = Path(folder)
        for name in cls.FILES:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"index folder {str(folder)!r} lacks {name}; expected {', '.join(cls.FILES)}")
        meta = json.loads((folder / "meta.json").read_text())
        packed = np.load(folder / "codes.npy", allow_pickle=False)
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        paths = json.loads((folder / "paths.json").read_text())
        if not (len(paths) == packed.shape[0] == labels.shape[0] == meta.get("num_items")):
            raise ValueError(f"index folder {str(folder)!r} is inconsistent: {packed.shape[0]} codes, "
                             f"{labels.shape[0]} labels, {len(paths)} paths, meta says {meta.get('num_items')}")
        return cls(int(meta["bits"]), packed, labels, paths, list(meta.get("classes", [])), meta)

    def index(self, engine: str = "auto") -> HammingIndex:
        index = HammingIndex(self.bits, engine)
        index.add(self.packed)
        return index

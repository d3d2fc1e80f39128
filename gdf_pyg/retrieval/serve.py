"""A search page and a JSON API over an index made by ``gdf-pyg index`` (``gdf-pyg serve``).

A person opens the page, drops or picks a photo (or clicks one of the collection's) and sees the
top-k photos with their Hamming distance and class, the query's code and, where the index has
labels, how many hits share the query's class. Programs use ``POST /api/search``. The model and
the index are loaded once; FAISS searches (``HammingIndex``, exact, ties by database order).

Only the index's own photos are ever served: a request names a photo by its number in the index,
never by a path, and a photo whose file lies outside the indexed folder (a symbolic link out of the
collection) is refused. Bad input gets a 4xx answer that says what was wrong, and the server
keeps serving. Built on FastAPI (the ``serve`` extra: ``pip install 'gdf-pyg[serve]'``).
"""

import contextlib
import io
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import numpy as np
import torch

from ..data.records import BadImageError, load_image
from ..data.transforms import decode_size, eval_transform, stack_images
from ..models.gdfnet import GDFNet
from .index import HammingIndex, SavedIndex, pack_codes, unpack_codes
from .search import open_index

log = logging.getLogger(__name__)

__all__ = ["SearchError", "SearchService", "create_app", "running", "serve"]

MAX_UPLOAD_BYTES = 10 * 2**20
MAX_K = 100


class SearchError(ValueError):
    """A request the service cannot answer; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class SearchService:
    """The model and the index of one collection, loaded once; safe to call from many threads
    (the model encodes one request at a time, FAISS searches in parallel)."""

    saved: SavedIndex
    model: GDFNet
    index: HammingIndex
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_k: int = MAX_K
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, index_dir: Union[str, Path], checkpoint: Optional[Union[str, Path]] = None,
             device: Union[str, torch.device] = "auto", engine: str = "auto", **limits: Any) -> "SearchService":
        saved, model, _ = open_index(index_dir, checkpoint, device)
        log.info("serving %d photos of %s", len(saved.paths), index_dir)
        return cls(saved, model, saved.index(engine), **limits)

    # ---- the collection -----------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The indexed folder (or file): every photo served lies in it."""
        return Path(self.saved.meta.get("images", "/nonexistent")).resolve()

    def label(self, item: int) -> Optional[str]:
        label = int(self.saved.labels[item])
        return self.saved.classes[label] if label >= 0 else None

    def photo(self, item: int) -> Path:
        """The file of photo ``item``, after checking it is one of the collection's."""
        if not 0 <= item < len(self.saved.paths):
            raise SearchError(404, f"no photo {item}: the index holds photos 0 to {len(self.saved.paths) - 1}")
        path, root = Path(self.saved.paths[item]).resolve(), self.root
        if path != root and root not in path.parents:
            raise SearchError(403, f"photo {item} lies outside the indexed folder; it is not served")
        if not path.is_file():
            raise SearchError(404, f"photo {item} is no longer on disk")
        return path

    def item(self, item: int) -> Dict[str, Any]:
        return {"id": item, "name": Path(self.saved.paths[item]).name, "label": self.label(item),
                "url": f"/api/image/{item}"}

    def info(self) -> Dict[str, Any]:
        return {"photos": len(self.saved.paths), "bits": self.saved.bits, "classes": self.saved.classes,
                "labelled": bool((self.saved.labels >= 0).any()), "max_k": self.max_k,
                "max_upload_bytes": self.max_upload_bytes}

    # ---- queries ------------------------------------------------------------------------
    def encode_upload(self, data: bytes, name: str = "upload") -> np.ndarray:
        """The packed code of an uploaded photo, computed as ``gdf-pyg index`` computes the
        collection's (the same decoding, transform and float32 encoding)."""
        if not data:
            raise SearchError(400, f"{name}: the upload is empty")
        if len(data) > self.max_upload_bytes:
            raise SearchError(413, f"{name}: {len(data)} bytes, more than the {self.max_upload_bytes} accepted")
        config = self.model.image_config
        try:
            image = load_image(io.BytesIO(data), min_size=decode_size(config, training=False))
        except BadImageError as err:
            raise SearchError(400, f"{name}: not a readable image ({str(err).split(': ', 1)[-1].split('. Fix')[0]})")
        batch = stack_images([eval_transform(config)(image)])
        with self._lock, torch.inference_mode():
            codes = self.model.encode(batch.to(next(self.model.parameters()).device)).cpu()
        return pack_codes(codes)

    def search(self, packed: np.ndarray, k: int, query_label: Optional[str] = None,
               query_id: Optional[int] = None) -> Dict[str, Any]:
        """The ``k`` photos nearest ``packed`` (one packed code), nearest first."""
        if not 1 <= k <= min(self.max_k, len(self.saved.paths)):
            raise SearchError(422, f"k={k}: expected 1 to {min(self.max_k, len(self.saved.paths))}")
        distances, ids = self.index.search(packed.reshape(1, -1), k)
        hits = []
        for rank, (d, i) in enumerate(zip(distances[0].tolist(), ids[0].tolist()), start=1):
            hit = {"rank": rank, "distance": int(d), **self.item(int(i))}
            hit["match"] = None if query_label is None or hit["label"] is None else hit["label"] == query_label
            hits.append(hit)
        code = unpack_codes(packed.reshape(1, -1), self.saved.bits)[0]
        matches = [h["match"] for h in hits if h["match"] is not None]
        return {"query": {"id": query_id, "label": query_label, "code": "".join("1" if b > 0 else "0" for b in code.tolist())},
                "k": k, "hits": hits, "matching": sum(matches) if query_label is not None else None}

    def search_item(self, item: int, k: int) -> Dict[str, Any]:
        self.photo(item)  # a photo of the collection, still served
        return self.search(self.saved.packed[item], k, self.label(item), item)

    def search_upload(self, data: bytes, k: int, name: str = "upload", label: Optional[str] = None) -> Dict[str, Any]:
        return self.search(self.encode_upload(data, name), k, label if label in self.saved.classes else None)


def _page() -> str:
    return resources.files(__package__).joinpath("static", "search.html").read_text()


def create_app(service: SearchService):
    """The FastAPI application of ``service``: the page at ``/`` and the JSON API under ``/api``."""
    from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse

    app = FastAPI(title="gdf-pyg search", docs_url="/api/docs", openapi_url="/api/openapi.json")

    def answer(call, *args):
        try:
            return call(*args)
        except SearchError as err:
            raise HTTPException(status_code=err.status, detail=str(err)) from err

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _page()

    @app.get("/api/info")
    def info() -> Dict[str, Any]:
        return service.info()

    @app.get("/api/items")
    def items(offset: int = Query(0, ge=0), limit: int = Query(48, ge=1, le=500)) -> Dict[str, Any]:
        ids = range(offset, min(offset + limit, len(service.saved.paths)))
        return {"total": len(service.saved.paths), "items": [service.item(i) for i in ids]}

    @app.get("/api/image/{item}")
    def image(item: int) -> FileResponse:
        return FileResponse(answer(service.photo, item))

    @app.post("/api/search")
    def search(k: int = Query(10), image: Optional[UploadFile] = File(None), id: Optional[int] = Form(None),
               label: Optional[str] = Form(None)) -> Dict[str, Any]:
        if (image is None) == (id is None):
            raise HTTPException(status_code=400, detail="send either a photo (form field 'image') or the number of "
                                                        "a photo of the collection (form field 'id')")
        if id is not None:
            return answer(service.search_item, id, k)
        data = image.file.read(service.max_upload_bytes + 1)
        return answer(service.search_upload, data, k, image.filename or "upload", label)

    return app


@contextlib.contextmanager
def running(service: SearchService, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """``service`` served by uvicorn in a background thread for the ``with`` block (a notebook, a
    test, a script that drives the page); yields its base URL. ``port=0``: a free one."""
    import uvicorn

    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError(f"the search service did not start on {host}:{port}")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(service: SearchService, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serves ``service`` with uvicorn until interrupted (on this machine only, by default)."""
    import uvicorn

    uvicorn.run(create_app(service), host=host, port=port, log_level="info")

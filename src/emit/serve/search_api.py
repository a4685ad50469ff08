"""Search endpoints: text -> images (or texts), image -> images (or texts), and the indexed images.

Images are addressed by their row in the index (``/images/3``, ``/thumbnails/3``), never by a
path the client sends, so the service can only ever show files the index was built from.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the request model, which is
# built inside search_router (its limits come from the settings), as a class, not a string.

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from emit.serve.errors import ApiError, ErrorBody, not_configured
from emit.serve.services import SearchService
from emit.serve.settings import Limits
from emit.serve.uploads import read_images, scratch

Target = Literal["images", "texts"]
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 404, 413, 415, 422)}


class SearchHit(BaseModel):
    rank: int
    id: str = Field(description="the index's id: the image file it was built from, or the text")
    score: float = Field(description="squared distance (metric l2, lower is nearer) or cosine (ip)")
    name: str | None = Field(None, description="the image's file name (images only)")
    image_url: str | None = None
    thumbnail_url: str | None = None


class SearchResponse(BaseModel):
    query: str
    kind: Literal["text", "image"]
    target: Target
    metric: str
    order: str
    results: list[SearchHit]


def search_router(service: SearchService | None, limits: Limits, workdir: Path) -> APIRouter:
    router = APIRouter(tags=["search"], responses=ERRORS)

    class TextSearch(BaseModel):
        model_config = ConfigDict(extra="forbid")
        query: str = Field(min_length=1, max_length=limits.max_query_chars, examples=["red circle"])
        top_k: int = Field(10, ge=1, le=limits.max_top_k, strict=True)  # true is not 1, "5" is not 5
        target: Target = Field("images", description="search the indexed images, or the indexed texts")

    def ready(target: str) -> SearchService:
        if service is None:
            raise not_configured("search index", "--index IDX")
        if target not in service.targets:
            raise ApiError(422, "no_text_index", "this index has no text index; build it with "
                           "`emit index build ... --texts CAPTIONS` to search texts")
        return service

    def response(found: dict[str, Any], query: str, kind: str) -> dict[str, Any]:
        hits = []
        for hit in found["results"]:
            row = service.row_of.get(hit["id"]) if found["target"] == "images" and service else None
            if row is not None:
                hit = {**hit, "name": Path(hit["id"]).name, "image_url": f"/images/{row}",
                       "thumbnail_url": f"/thumbnails/{row}"}
            hits.append(hit)
        return {**found, "results": hits, "query": query, "kind": kind}

    @router.post("/search/text", response_model=SearchResponse, summary="Search with a text query")
    def search_text(body: TextSearch) -> dict[str, Any]:
        """The ``top_k`` images (or indexed texts) nearest to a text query, nearest first."""
        searcher = ready(body.target)
        if not body.query.strip():
            raise ApiError(422, "empty_query", "the query is empty; type a few words, e.g. 'red dress'")
        return response(searcher.search(text=body.query, top_k=body.top_k, target=body.target),
                        body.query, "text")

    @router.post("/search/image", response_model=SearchResponse, summary="Search with an image")
    def search_image(image: Annotated[UploadFile, File(description="a JPEG or PNG photo")],
                     top_k: Annotated[int, Form(ge=1, le=limits.max_top_k)] = 10,
                     target: Annotated[Target, Form()] = "images") -> dict[str, Any]:
        """The ``top_k`` indexed images (or texts) nearest to an uploaded image."""
        searcher = ready(target)
        (upload,) = read_images([image], limits)
        with scratch(workdir, "query-") as tmp:
            path = Path(tmp) / upload.name
            path.write_bytes(upload.data)
            found = searcher.search(image=path, top_k=top_k, target=target)
        return response(found, upload.name, "image")

    def indexed(row: int) -> tuple[SearchService, Path]:
        if service is None:
            raise not_configured("search index", "--index IDX")
        path = service.image_path(row)
        if path is None:
            raise ApiError(404, "no_such_image", f"the index has no image {row} (or its file is gone); "
                           f"rows are 0..{len(service.ids) - 1}")
        return service, path

    @router.get("/images/{row}", summary="An indexed image, by its row in the index",
                response_class=FileResponse, responses={200: {"content": {"image/*": {}}}})
    def image_file(row: int) -> FileResponse:
        _, path = indexed(row)
        return FileResponse(path)

    @router.get("/thumbnails/{row}", summary="A small JPEG of an indexed image",
                response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(row: int) -> Response:
        searcher, _ = indexed(row)
        data = searcher.thumbnail(row)
        if data is None:
            raise ApiError(404, "no_such_image", f"image {row} can no longer be read")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return router

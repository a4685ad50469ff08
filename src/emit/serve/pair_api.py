"""``POST /pair``: a product's images and option tags in, each image's tag out, with the cost matrix
and the assignment rule that decided it (the library's :func:`predict_products`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, Field

from emit.data.products import Product
from emit.pairing.pipeline import ProductDecision
from emit.problems import ProblemLog
from emit.serve.errors import ErrorBody, not_configured
from emit.serve.services import PairingService
from emit.serve.settings import Limits
from emit.serve.uploads import check_product_id, clean_tags, read_images, save_product, scratch

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 404, 413, 415, 422)}
AssignField = Literal["exact", "argmin"]


class PairedImage(BaseModel):
    name: str
    tag: str | None = Field(description="the proposed option tag; null if the image could not be read")
    confidence: float | None = Field(description="softmax over the product's tags of the chosen tag's cost")


class PairResponse(BaseModel):
    product_id: str
    tags: list[str] = Field(description="the product's option tags: the columns of the cost matrix")
    images: list[PairedImage]
    cost: list[list[float]] = Field(description="mean cost over the bag, one row per readable image")
    cost_rows: list[str] = Field(description="the image of each cost row")
    assign: str = Field(description="the assignment rule used: exact (every tag used at least once), "
                                    "argmin, or argmin (vote)")


def decision_json(product: Product, decision: ProductDecision, assign: str) -> dict[str, Any]:
    """One product's decision as the API returns it."""
    readable = [name for name, tag in zip(product.images, decision.tags, strict=True) if tag is not None]
    cost = [[float(c) if math.isfinite(c) else 1e30 for c in row] for row in decision.cost.tolist()]
    return {"product_id": product.product_id, "tags": list(product.optional_tags),
            "images": [{"name": n, "tag": t, "confidence": c}
                       for n, t, c in zip(product.images, decision.tags, decision.confidence, strict=True)],
            "cost": cost, "cost_rows": readable, "assign": assign}


def pair_router(service: PairingService | None, limits: Limits, workdir: Path) -> APIRouter:
    router = APIRouter(tags=["pairing"], responses=ERRORS)

    @router.post("/pair", response_model=PairResponse, summary="Tag a product's images")
    def pair(images: Annotated[list[UploadFile], File(description="the product's images (JPEG, PNG)")],
             tags: Annotated[list[str], Form(description="option tags: one per field, or one per line")],
             product_id: Annotated[str, Form(max_length=200)] = "upload",
             assign: Annotated[AssignField | None, Form(description="override the model's rule")] = None,
             ) -> dict[str, Any]:
        """Give every uploaded image one of the option tags, as ``emit pair predict`` does."""
        if service is None:
            raise not_configured("pairing model", "--pairing-model MODEL")
        pid = check_product_id(product_id)
        options = clean_tags(tags, limits)
        uploads = read_images(images, limits)
        with scratch(workdir, "pair-") as tmp:
            product = save_product(Path(tmp) / pid, pid, uploads, options)
            (decision,) = service.predict([product], ProblemLog(echo=False), assign)
        return decision_json(product, decision, service.assignment(assign))

    return router

"""``emit serve``: an HTTP service and web pages over the library.

* ``POST /search/text``, ``POST /search/image``: nearest images (or texts) of an index;
* ``POST /pair``: a product's images and option tags in, each image's tag out;
* ``/review``: a page (and its API under ``/review/...``) to check and correct the tags of a
  batch of products and export its ``final_json.json``;
* ``GET /health``, ``GET /info``; the OpenAPI schema at ``/openapi.json``, browsable at ``/docs``.

Needs the ``serve`` extra (``pip install 'emit[serve]'``): FastAPI, uvicorn, python-multipart.
"""

"""Beyond one machine: the HTTP service over engine replicas (Ray Serve) and batch OCR of document
collections (Ray Data). Both need the optional ``ray`` extra: ``pip install 'gotocr-fast[ray]'``.

* :mod:`.serve` — ``gotocr serve --ray [ADDRESS] --replicas N``: the same Litestar app as
  ``gotocr serve``, with its engine replaced by :class:`.remote.RemoteEngine`, which forwards each
  request to one of N ``OcrEngine`` replicas and streams the text back.
* :mod:`.batch` — ``gotocr batch --ray [ADDRESS] SOURCES... --out DIR``: files → pages → an actor
  pool of engines → the same per-page ``.md`` + ``.json`` as ``gotocr batch``, plus one JSONL.
* :mod:`.cluster` — connecting to (or starting) the Ray cluster, and the "Ray is missing" error.

``import gotocr_fast.ray`` imports nothing of Ray; the submodules do.
"""

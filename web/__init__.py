"""``faec-rec serve``: the REST API (``/api/v1``) and the pages, one ASGI app.

Every route calls :class:`faec_rec.client.Client` (the one application layer);
this package only adds HTTP: authentication and roles (:mod:`.auth`), typed
dependencies (:mod:`.deps`), request/response models (:mod:`.schemas`, which
are the OpenAPI document), one router per resource (:mod:`.routers`) and the
app that includes them (:mod:`.app`).
"""

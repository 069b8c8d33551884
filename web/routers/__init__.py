"""One router per resource; :mod:`faec_rec.web.app` includes them all."""

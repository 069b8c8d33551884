"""The enrolled gallery: people and templates in Redis, a FAISS replica per
process kept current from a gallery event stream, and the open-set decision."""
from faec_rec.index.decision import Decision, Match, RunnerUp
from faec_rec.index.gallery import Gallery
from faec_rec.index.projection import BaseProjector, Projector
from faec_rec.index.store import EnrolResult, Person

__all__ = ["BaseProjector", "Decision", "EnrolResult", "Gallery", "Match", "Person", "Projector", "RunnerUp"]

"""Operating faec_rec across machines: durable enrolments, Redis Sentinel URLs,
gallery backup and restore, retention sweeps (``faec_rec.cluster``)."""

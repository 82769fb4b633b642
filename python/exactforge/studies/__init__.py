"""Studies: ``repro`` (reproduction errors under changed conditions, the error matrix and the
calibrated epsilon), ``reevaluate`` (the paper's re-evaluation end to end) and ``demo``."""

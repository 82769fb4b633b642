"""Outputs: ``jsonio`` (JSON results), ``files`` (atomic writes), ``figures`` (one figure
style), ``progress`` (one progress bar helper)."""

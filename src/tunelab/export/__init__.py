"""Exports of a trained run (hf, merged, gguf) and the parity check that proves they match the run."""

from tunelab.export.exporters import EXPORT_FORMATS, export
from tunelab.export.verify import VerifyError, VerifyReport, verify

__all__ = ["EXPORT_FORMATS", "VerifyError", "VerifyReport", "export", "verify"]

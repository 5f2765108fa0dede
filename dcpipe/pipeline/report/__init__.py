"""`dcpipe report`: a view of a workspace as one HTML page with its PNG plots."""
from dcpipe.pipeline.report.page import report

__all__ = ["report"]

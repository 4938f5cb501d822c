"""The end-to-end demo (``attune demo``)."""

"""Batch ranking for outreach: every borrower of a feature snapshot, ranked on Ray Data."""

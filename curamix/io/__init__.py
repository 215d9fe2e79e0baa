"""Edges of the document store: readers of raw inputs and the run-folder layout."""

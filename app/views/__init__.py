"""One module per view; each exposes ``render(sel, ...)`` that draws into the main area."""

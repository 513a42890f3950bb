"""Developer tools: ``fruits bench``, the notebook approach it compares against, and quality measures."""

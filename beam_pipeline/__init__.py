"""beam-detect-classify: the job (options, validation, graph, entry point)."""

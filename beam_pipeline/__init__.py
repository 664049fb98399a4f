"""beam-detect-classify: the job (options, validation, graph, entry point)."""

import transforms  # noqa: F401  (sets OpenCV's pixel limit before anything imports cv2)

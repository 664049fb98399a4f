"""Pipeline stages, model handlers, pure image functions and the records they exchange."""

import os

# 100 megapixels: a 10000x10000 RGB image is 300 MB decoded, well inside one worker's memory.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
# OpenCV reads its own pixel limit from the environment once, when cv2 is imported. Every
# process that decodes (the launcher, each Beam worker process) imports this package before
# transforms.decoding imports cv2, so every decoder refuses a larger image from its header,
# before it allocates anything. An explicit setting (the job's --max_image_pixels, set by
# beam_pipeline.main before any import of cv2, or the worker environment's own) is kept.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_IMAGE_PIXELS))

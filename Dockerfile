# Custom worker container: Beam's Python 3.11 SDK harness with the job, its pinned dependencies
# and the bundled models baked in, so workers start without installing anything.
#
#   docker build -t REGISTRY/beam-detect-classify-worker:0.1.0 .                    # CPU
#   docker build --build-arg TENSORFLOW_EXTRA=and-cuda \
#                -t REGISTRY/beam-detect-classify-worker:0.1.0-gpu .                 # NVIDIA GPU
#
# Use it with --sdk_container_image (Dataflow, Runner v2) or --environment_type=DOCKER
# --environment_config=IMAGE (Flink, Spark). The SDK version and Python version of this image
# must match the launcher's: apache-beam 2.77.0, Python 3.11 (see requirements.lock).
FROM apache/beam_python3.11_sdk:2.77.0

# "and-cuda" adds TensorFlow's pip-packaged CUDA and cuDNN libraries for GPU workers (the driver
# comes from the host, e.g. Dataflow's install-nvidia-driver).
ARG TENSORFLOW_EXTRA=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

COPY requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock \
 && if [ -n "$TENSORFLOW_EXTRA" ]; then \
      pip install "tensorflow[${TENSORFLOW_EXTRA}]==$(sed -n 's/^tensorflow==//p' /tmp/requirements.lock)"; \
    fi

# The project as a regular (non-editable) install: beam_pipeline, transforms, training and the
# models package with the bundled SavedModel, label map, classifier and labels (package_data).
COPY . /tmp/src
RUN pip install --no-deps /tmp/src \
 && rm -rf /tmp/src \
 && cd / && python -c "import os, beam_pipeline.main, transforms.model_files as m; \
[os.stat(m.resolve_model_path(p)) for p in (m.DEFAULT_DETECTOR + '/saved_model.pb', \
m.DEFAULT_DETECTOR_LABEL_MAP, m.DEFAULT_CLASSIFIER, m.DEFAULT_CLASSIFIER_LABELS)]"

# The base image's entry point starts the SDK harness; kept explicit.
ENTRYPOINT ["/opt/apache/beam/boot"]

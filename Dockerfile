# The server image. By default a CPU image running the embedded default model (models/trained;
# installed editable so it is found next to the code). For a real checkpoint, mount it and set
# FREEZE_OMNI_MODEL_PATH and FREEZE_OMNI_LLM_PATH. For GPUs, build on a CUDA PyTorch image and leave
# the CPU constraint out (pip then keeps the image's CUDA torch):
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime \
#                --build-arg PIP_CONSTRAINTS= -t freeze-omni-serve:0.1.0-cuda .
# For a small CPU image, point pip at a CPU-only torch wheel index (PyPI's default torch wheel for
# Linux carries CUDA libraries).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_CONSTRAINTS="-c constraints-cpu.txt"
WORKDIR /srv
COPY pyproject.toml constraints-cpu.txt README.md ./
COPY app ./app
COPY static ./static
COPY models ./models
RUN pip install --no-cache-dir ${PIP_CONSTRAINTS} -e .
ENV FREEZE_OMNI_HOST=0.0.0.0 FREEZE_OMNI_PORT=8000
EXPOSE 8000
CMD ["freeze-omni", "serve"]

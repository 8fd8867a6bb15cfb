# CPU image running the server on the embedded default model (models/trained; installed editable so
# it is found next to the code). For a real checkpoint, mount it and set FREEZE_OMNI_MODEL_PATH and
# FREEZE_OMNI_LLM_PATH. For GPUs, start from a CUDA PyTorch image instead
# and install without the CPU constraint. For a small CPU image, point pip at a CPU-only torch
# wheel index (PyPI's default torch wheel for Linux carries CUDA libraries).
FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml constraints-cpu.txt README.md ./
COPY app ./app
COPY static ./static
COPY models ./models
RUN pip install --no-cache-dir -c constraints-cpu.txt -e .
ENV FREEZE_OMNI_HOST=0.0.0.0 FREEZE_OMNI_PORT=8000
EXPOSE 8000
CMD ["freeze-omni", "serve"]

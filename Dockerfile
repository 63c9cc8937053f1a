# Image for the gateway and launcher services of compose.yaml (the launcher also needs the
# site's Slurm client tools and munge; this image installs Debian's).
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends slurm-client munge \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY slurmless slurmless
COPY queue_gateway queue_gateway
COPY launcher launcher
COPY warmpool warmpool
COPY slurm slurm
COPY policies policies
COPY enginesim enginesim
COPY tracesim tracesim
RUN pip install --no-cache-dir .
EXPOSE 8000 8099
CMD ["slurmless", "gateway"]

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
# Run as an unprivileged user: neither the gateway nor the launcher needs root (the Slurm client
# authenticates through munge's socket). The uid must match a user Slurm knows for the launcher's jobs.
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin slurmless
USER slurmless:slurmless
EXPOSE 8000 8099
CMD ["slurmless", "gateway"]

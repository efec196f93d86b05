# Deskgate gateway image. Data (configuration, database, secrets) lives in the volume /data.
FROM debian:12-slim

# FreeRDP 3 (the RDP bridge's client) comes from Debian 12's own backports.
RUN echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev g++ pkg-config libicu-dev npm ca-certificates \
      tigervnc-standalone-server tigervnc-tools openbox xterm x11-utils xdotool fonts-dejavu-core \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -t bookworm-backports \
      freerdp3-x11 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/deskgate
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY static ./static
COPY templates ./templates
RUN python3 -m venv /opt/deskgate/.venv && /opt/deskgate/.venv/bin/pip install --no-cache-dir -e .

ENV DESKGATE_CONFIG=/data/deskgate.toml PATH=/opt/deskgate/.venv/bin:$PATH
VOLUME ["/data"]
EXPOSE 8080
# First start: initialise /data (prints the admin's one-time password to the log), then serve.
CMD ["sh", "-c", "test -f /data/deskgate.toml || deskgate init --data /data --host 0.0.0.0 --port 8080 --public-url \"${DESKGATE_PUBLIC_URL:-http://localhost:8080}\"; exec deskgate serve"]

# Stand-in for python:3.11-slim, built from Debian's packages on a root filesystem made
# by debootstrap (no image registry is needed). For the compose test only.
ARG DEBIAN
FROM ${DEBIAN}
# This machine's certificate bundle, so that pip inside an image build reaches its
# registry here. It belongs to this test base only, never to VX11's own image.
COPY host-ca-bundle.crt /etc/ssl/certs/vx11-test-host-bundle.crt
ENV PIP_CERT=/etc/ssl/certs/vx11-test-host-bundle.crt \
    LANG=C.UTF-8
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
CMD ["python3"]

"""A container engine reached through the Docker Engine API.

Where a Docker engine answers (DOCKER_HOST, or the default socket) it is used as it is. Elsewhere
rootful Podman serves the same API from a socket we start (runc and ulimits set as our machines
need), with a local registry on 127.0.0.1 and a locally made base image. The same build, push and
run code then works against both.
"""

"""Container images of the services, built through the Docker Engine API.

`python -m imdb_deploy.images build|prune|scan`: the build context is assembled in a temporary
directory from the lock (hashed requirements, wheels downloaded on the host into a cache keyed
by the requirements' hash, project wheels built by uv, the model artifact for the API), so the
image build itself needs no network. The same code drives a Docker engine or Podman's
Docker-compatible service (see `imdb_deploy.engine`).
"""

"""Delivery tooling: supply-chain checks, container images and Fabric blue-green deploys."""

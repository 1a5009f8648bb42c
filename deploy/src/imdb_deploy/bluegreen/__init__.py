"""Blue-green deploys over SSH: config -> commands -> runner -> orchestrator.

`config` reads deploy/environments/*.toml; `commands` builds the shell commands and files as
plain data; `runner` runs them on a host with Fabric; `orchestrator` orders them (lock, prepare,
switch, drain, undo, audit); `cli` is what nox sessions and the fabfile call.
"""

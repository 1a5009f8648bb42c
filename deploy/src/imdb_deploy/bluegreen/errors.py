"""Why a deploy, rollback or promotion stopped: one place, so the lock and the orchestrator
raise the same kinds."""

from __future__ import annotations


class DeployError(RuntimeError):
    """The deploy (or rollback) failed; the environment was left on one version."""


class LockHeldError(DeployError):
    """Someone else holds the environment's deploy lock."""


class LockLostError(DeployError):
    """The deploy's lock expired, was taken over or could not be renewed in time: the deploy
    stops before its next change, and undoes what it did unless it was already committed
    (`undone` False: the release is live; what was left belongs to the lock's new holder)."""

    def __init__(self, message: str, undone: bool = True) -> None:
        super().__init__(message)
        self.undone = undone


class ApprovalError(DeployError):
    """A deploy that needs approval did not get it."""


class RegressionError(DeployError):
    """The post-deploy benchmark found a regression (`result`: rolled_back or failed)."""

    def __init__(self, message: str, result: str) -> None:
        super().__init__(message)
        self.result = result

"""fedquad: federated LoRA fine-tuning on heterogeneous, resource-constrained devices."""

from typing import TYPE_CHECKING, Any

from fedquad.config import (
    DataConfig,
    ExperimentConfig,
    FederationConfig,
    LoraConfig,
    ModelConfig,
    TrainConfig,
    load_config,
)
from fedquad.errors import FedquadError

if TYPE_CHECKING:
    from fedquad.api import RoundCallback, RunResult, resume, run


def __getattr__(name: str) -> Any:
    # The API pulls in torch and transformers: import it only when it is used.
    if name in ("run", "resume", "RunResult", "RoundCallback"):
        from fedquad import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedquad' has no attribute {name!r}")


__all__ = [
    "DataConfig",
    "ExperimentConfig",
    "FederationConfig",
    "FedquadError",
    "LoraConfig",
    "ModelConfig",
    "RoundCallback",
    "RunResult",
    "TrainConfig",
    "load_config",
    "resume",
    "run",
]
__version__ = "0.1.0"

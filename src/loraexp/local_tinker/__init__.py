"""The Tinker client surface (tinker 0.38) implemented in process on transformers + PEFT.

`LocalServiceClient(root)` stands where `tinker.ServiceClient()` stands and `LocalRestClient(service.store)`
where `tinker.RestClient()` does; see `loraexp.service.connect`. It imports nothing from loraexp outside this package. Semantics follow the service:
futures at once, one worker per training client in submission order, gradients accumulating until
optim_step, cross-entropy summed over tokens and datums, AdamW from AdamParams, LoRA per flags
(alpha 32, dropout 0), `tinker://` paths mapped to directories with TTLs honoured.
"""

from loraexp.local_tinker.sampling import LocalSamplingClient
from loraexp.local_tinker.service import LocalRestClient, LocalServiceClient
from loraexp.local_tinker.store import CheckpointStore
from loraexp.local_tinker.training import LocalTrainingClient

__all__ = ["CheckpointStore", "LocalRestClient", "LocalSamplingClient", "LocalServiceClient", "LocalTrainingClient"]

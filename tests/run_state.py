"""Reading a saved train state back for comparison in tests (the package itself only resumes through
RunCheckpoints)."""
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def read_run_state(directory: Path, step: int) -> Any:
    """The train state saved at `step` by RunCheckpoints in `directory`, as host numpy arrays, whatever mesh it
    was saved from."""
    path = Path(directory).absolute() / str(step) / "state"
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path).item_metadata
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
        return jax.device_get(checkpointer.restore(path, target))

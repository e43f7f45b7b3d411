"""Parallel layout: data-parallel replicate x shard (HSDP) x sequence-parallel degrees, and their mesh.

    dims = ParallelDims(dp_replicate=1, dp_shard=-1, sp=2, world_size=4)   # dp_shard resolves to 2
    dims.fsdp_mesh     # where parameters are sharded: ("dp_replicate", "dp_shard_sp") for HSDP
    dims.sp_mesh       # the ranks that split one sample's sequence
    dims.dp_mesh       # the ranks that see different samples (meshes are built on first use)

Validation happens in ``__post_init__`` with messages that say what to change. There is no
module-level process-group state: everything distributed hangs off one ParallelDims.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


@dataclass
class ParallelDims:
    dp_replicate: int = 1
    """Replicas of the sharded model (HSDP's outer dimension, e.g. one per node)."""
    dp_shard: int = -1
    """FSDP shard degree; -1 takes whatever world_size leaves after dp_replicate and sp."""
    sp: int = 1
    """Ulysses sequence-parallel degree: ranks that split one sample's tokens (and attention heads)."""
    world_size: int = 1
    device_type: str = "cpu"
    _mesh: tuple[DeviceMesh, DeviceMesh] | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        for name in ("dp_replicate", "sp", "world_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.dp_shard == -1:
            rest = self.dp_replicate * self.sp
            if self.world_size % rest:
                raise ValueError(
                    f"world size {self.world_size} is not divisible by dp_replicate x sp = {self.dp_replicate} x "
                    f"{self.sp}; choose degrees whose product divides the number of processes"
                )
            self.dp_shard = self.world_size // rest
        if self.dp_shard < 1:
            raise ValueError(f"dp_shard must be >= 1 or -1 (got {self.dp_shard})")
        product = self.dp_replicate * self.dp_shard * self.sp
        if product != self.world_size:
            raise ValueError(
                f"dp_replicate x dp_shard x sp = {self.dp_replicate} x {self.dp_shard} x {self.sp} = {product}, "
                f"but {self.world_size} processes were launched; make the product equal NUM_GPUS x nodes "
                "(or set dp_shard=-1 to fill it)"
            )

    @property
    def dp_size(self) -> int:
        """How many different samples are processed at once (one per SP group)."""
        return self.dp_replicate * self.dp_shard

    @property
    def sp_enabled(self) -> bool:
        return self.sp > 1

    def _meshes(self) -> tuple[DeviceMesh, DeviceMesh]:
        # Two meshes over the same rank order (rank = ((replicate * dp_shard) + shard) * sp + sp_rank):
        # one to shard parameters over, one to split sequences over. Parameters are sharded over
        # the SP ranks too: they hold the same parameters and sum their gradients anyway.
        if self._mesh is None:
            shard_mesh = init_device_mesh(
                self.device_type,
                (self.dp_replicate, self.dp_shard * self.sp),
                mesh_dim_names=("dp_replicate", "dp_shard_sp"),
            )
            batch_mesh = init_device_mesh(
                self.device_type, (self.dp_size, self.sp), mesh_dim_names=("dp", "sp")
            )
            self._mesh = (shard_mesh, batch_mesh)
        return self._mesh

    @property
    def fsdp_mesh(self) -> DeviceMesh:
        """1-D (FSDP) or 2-D (HSDP: replicate x shard) mesh for ``fully_shard``."""
        shard_mesh = self._meshes()[0]
        return shard_mesh if self.dp_replicate > 1 else shard_mesh["dp_shard_sp"]

    @property
    def sp_mesh(self) -> DeviceMesh:
        """The ranks that split one sample's sequence."""
        return self._meshes()[1]["sp"]

    @property
    def dp_mesh(self) -> DeviceMesh:
        """The ranks that each see a different sample (one per SP group)."""
        return self._meshes()[1]["dp"]

    def validate_model(self, num_heads: int) -> None:
        if num_heads % self.sp:
            divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
            raise ValueError(
                f"the model has {num_heads} attention heads, not divisible by SP_SIZE={self.sp}; "
                f"use an SP size in {divisors}"
            )

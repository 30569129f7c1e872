"""Where a model runs: the MXNet context of a device, and the device one Spark task binds (the GPU Spark
assigned it)."""

from __future__ import annotations

from typing import Optional

from common.errors import ModelError


def device_context(device: str):
    """``mx.cpu()``, or ``mx.gpu(N)`` for ``gpu:N`` (``gpu`` alone: N = 0); a clear error where this MXNet
    build has no CUDA."""
    import mxnet as mx

    if device == "cpu":
        return mx.cpu()
    kind, _, index = device.partition(":")
    if kind == "gpu" and (index or "0").isdigit():
        if mx.context.num_gpus() < 1:
            raise ModelError(f"--device gpu: this task was given GPU {index or 0}, but this MXNet build sees no GPU "
                             f"(install the CUDA build on GPU nodes: deploy/emr/bootstrap.sh --gpu, which installs "
                             f"{GPU_MXNET}; or use --device cpu)")
        return mx.gpu(int(index or 0))
    raise ModelError(f"unknown device {device!r}: expected cpu, gpu or gpu:N")


# The CUDA build of the same MXNet release (CUDA 11.2, which EMR's GPU instances' drivers run).
GPU_MXNET = "mxnet-cu112==1.9.1"


def task_device(device: str, resources: Optional[dict]) -> str:
    """The device one Spark task binds: ``cpu``, or ``gpu:<address>`` of the GPU Spark assigned it.

    ``resources`` is ``TaskContext.resources()`` (name -> ResourceInformation with ``.addresses``).
    Each task binds the GPU Spark gave it, so the tasks of an executor with several GPUs spread
    over them instead of all binding GPU 0.

    Raises:
        ModelError: ``gpu`` but Spark assigned the task no GPU.
    """
    if device != "gpu":
        return device
    gpus = (resources or {}).get("gpu")
    addresses = list(getattr(gpus, "addresses", None) or [])
    if not addresses:
        raise ModelError("--device gpu: Spark assigned this task no GPU: set spark.executor.resource.gpu.amount, "
                         "spark.task.resource.gpu.amount and a GPU discovery script "
                         "(deploy/emr/configurations-gpu.json)")
    return f"gpu:{addresses[0]}"

"""GPU telemetry: what a GPU reports (:class:`GpuSample`), and the pynvml adapter that reads it.

Two sides use this module. The agent, on an instance, reads its GPUs with :class:`GpuReader`
and sends the samples with every heartbeat; the daemon parses them back
(:func:`parse_samples`), shows them (:func:`summarize`) and feeds them to the idle-GPU rule
(``spotd.telemetry.idle``). Neither side imports the other: both import this module.

This is the only module that imports ``pynvml`` (the import happens inside
:func:`default_nvml`, so a daemon or agent without ``nvidia-ml-py`` installed still starts,
and the daemon, which only parses samples, never loads it).

The seam is the small part of NVML the adapter calls, :class:`Nvml`: ``pynvml`` itself satisfies
it, and so does :class:`FakeNvml`, which tests hand to :class:`GpuReader` directly or, for agents
running as separate processes, through ``$SPOTD_FAKE_NVML`` (a JSON file read on every sample,
so a test can change what the "GPUs" report while a job runs). Every NVML failure — no driver,
no library, no device — reads as "no GPU": an empty sample list, never an error, because a CPU
instance is as normal as a GPU one.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

__all__ = [
    "FAKE_NVML_ENV",
    "FakeNvml",
    "GpuReader",
    "GpuSample",
    "Nvml",
    "default_nvml",
    "parse_samples",
    "read_gpus",
    "summarize",
]

FAKE_NVML_ENV = "SPOTD_FAKE_NVML"
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU at one moment, as the agent reports it with a heartbeat."""

    index: int
    name: str
    utilization_pct: float  # busy time of the SMs over NVML's last sample period, 0–100
    memory_used_mib: float
    memory_total_mib: float
    temperature_c: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GpuSample:
        """Raises ``ValueError`` naming the field when ``d`` is not a sample."""
        try:
            return cls(
                index=int(d["index"]),
                name=str(d.get("name", "")),
                utilization_pct=float(d["utilization_pct"]),
                memory_used_mib=float(d["memory_used_mib"]),
                memory_total_mib=float(d["memory_total_mib"]),
                temperature_c=float(d.get("temperature_c", 0.0)),
            )
        except KeyError as exc:
            raise ValueError(f"GPU sample lacks {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"GPU sample has a bad value: {exc}") from exc


def parse_samples(raw: Sequence[Mapping[str, Any]]) -> list[GpuSample]:
    return [GpuSample.from_json(d) for d in raw]


# -- the adapter -------------------------------------------------------------------------


class Nvml(Protocol):
    """The part of pynvml the adapter uses (pynvml's module-level functions)."""

    NVMLError: type[Exception]
    NVML_TEMPERATURE_GPU: int

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> Any: ...


class _NoNvml:
    """Stands in for pynvml when nvidia-ml-py is not installed: every call fails as NVML."""

    NVMLError: type[Exception] = type("NVMLError", (Exception,), {})
    NVML_TEMPERATURE_GPU = 0

    def __getattr__(self, name: str) -> Any:
        def fail(*_a: Any) -> Any:
            raise self.NVMLError("nvidia-ml-py (pynvml) is not installed")

        return fail


def default_nvml(env: Mapping[str, str] | None = None) -> Nvml:
    """``pynvml``, or the fake named by ``$SPOTD_FAKE_NVML`` (tests and demos)."""
    env = os.environ if env is None else env
    fake = env.get(FAKE_NVML_ENV)
    if fake:
        return FakeNvml.from_file(Path(fake))
    try:
        import pynvml
    except ImportError:
        return _NoNvml()
    return cast(Nvml, pynvml)


class GpuReader:
    """Reads every GPU of this machine. Initialises NVML once; NVML failing → no GPU.

    A failed initialisation is remembered (a machine without a driver will not grow one), so
    an agent on a CPU instance pays for the attempt once, not on every heartbeat.
    """

    def __init__(self, nvml: Nvml | None = None) -> None:
        self._nvml = nvml if nvml is not None else default_nvml()
        self._ready: bool | None = None  # None: not tried yet
        self.error: str | None = None  # why there is no GPU, once known

    def read(self) -> list[GpuSample]:
        nvml = self._nvml
        if self._ready is None:
            try:
                nvml.nvmlInit()
                self._ready = True
            except nvml.NVMLError as exc:
                self._ready, self.error = False, f"no GPU: {exc}"
        if not self._ready:
            return []
        try:
            return [self._one(i) for i in range(int(nvml.nvmlDeviceGetCount()))]
        except nvml.NVMLError as exc:  # a GPU fell off the bus, the driver went away, ...
            self.error = f"no GPU: {exc}"
            return []
        except Exception as exc:  # noqa: BLE001 - the boundary: telemetry never stops a heartbeat
            self.error = f"GPU telemetry failed: {exc!r}"
            return []

    def _one(self, index: int) -> GpuSample:
        nvml = self._nvml
        h = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(h)
        util = nvml.nvmlDeviceGetUtilizationRates(h)
        mem = nvml.nvmlDeviceGetMemoryInfo(h)
        try:
            temp = float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
        except nvml.NVMLError:
            temp = 0.0  # some virtual GPUs expose no sensor: keep the rest of the sample
        return GpuSample(
            index=index,
            name=name.decode() if isinstance(name, bytes) else str(name),
            utilization_pct=float(util.gpu),
            memory_used_mib=round(mem.used / _MIB, 1),
            memory_total_mib=round(mem.total / _MIB, 1),
            temperature_c=temp,
        )

    async def read_async(self) -> list[GpuSample]:
        """:meth:`read` off the event loop (NVML calls block, briefly)."""
        return await asyncio.to_thread(self.read)

    def close(self) -> None:
        if self._ready:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._ready = None


def read_gpus(nvml: Nvml | None = None) -> list[GpuSample]:
    """One-shot read of every GPU; ``[]`` when there is none (or no NVML)."""
    reader = GpuReader(nvml)
    try:
        return reader.read()
    finally:
        reader.close()


# -- the fake NVML -----------------------------------------------------------------------


class FakeNvmlError(Exception):
    """What :class:`FakeNvml` raises: plays ``pynvml.NVMLError``."""


@dataclass
class _Util:
    gpu: float
    memory: float = 0.0


@dataclass
class _Mem:
    used: int
    total: int
    free: int


class FakeNvml:
    """NVML with scripted devices, beside the adapter it stands in for.

    ``devices``: dicts with ``name``, ``util`` (%), ``mem_used_mib``, ``mem_total_mib``,
    ``temp``. ``error``: make ``nvmlInit`` fail with that message (a machine without a GPU).
    :meth:`from_file` re-reads its JSON file (``{"devices": [...]} `` or ``{"error": "..."}``)
    on every ``nvmlDeviceGetCount``, so the devices can change under a running agent.
    """

    NVMLError: type[Exception] = FakeNvmlError
    NVML_TEMPERATURE_GPU = 0

    def __init__(
        self,
        devices: Sequence[Mapping[str, Any]] = (),
        *,
        error: str | None = None,
        path: Path | None = None,
    ) -> None:
        self.devices = [dict(d) for d in devices]
        self.error = error
        self.path = path
        self.init_calls = 0

    @classmethod
    def from_file(cls, path: Path) -> FakeNvml:
        fake = cls(path=path)
        fake._reload()
        return fake

    def _reload(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            data = {"error": f"fake NVML file {self.path}: {exc}"}
        self.devices = list(data.get("devices") or [])
        self.error = data.get("error")

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.error:
            raise FakeNvmlError(self.error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        self._reload()
        if self.error:
            raise FakeNvmlError(self.error)
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if not 0 <= index < len(self.devices):
            raise FakeNvmlError(f"Invalid Argument: no GPU {index}")
        return self.devices[index]

    def nvmlDeviceGetName(self, handle: Any) -> Any:
        return str(handle.get("name", "Fake GPU")).encode()  # old pynvml returns bytes

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        return _Util(gpu=float(handle.get("util", 0)))

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        total = int(float(handle.get("mem_total_mib", 81920)) * _MIB)
        used = int(float(handle.get("mem_used_mib", 0)) * _MIB)
        return _Mem(used=used, total=total, free=total - used)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> Any:
        if "temp" not in handle:
            raise FakeNvmlError("Not Supported")
        return handle["temp"]


# -- views -------------------------------------------------------------------------------


def summarize(samples: Sequence[GpuSample] | None) -> str:
    """One cell for ``spotctl jobs queue -v``: ``2x A100 util 87% mem 30.1/80.0 GiB 61°C``.

    ``None``: the agent has not reported yet; ``[]``: it reported no GPU.
    """
    if samples is None:
        return "-"
    if not samples:
        return "no GPU"
    n = len(samples)
    util = sum(s.utilization_pct for s in samples) / n
    used = sum(s.memory_used_mib for s in samples) / 1024
    total = sum(s.memory_total_mib for s in samples) / 1024
    hottest = max(s.temperature_c for s in samples)
    names = {s.name.removeprefix("NVIDIA ") for s in samples}
    name = names.pop() if len(names) == 1 else "GPU"
    return f"{n}x {name} util {util:.0f}% mem {used:.1f}/{total:.1f} GiB {hottest:.0f}°C"

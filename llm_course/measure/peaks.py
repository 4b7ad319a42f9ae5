"""What GPUs promise on paper: datasheet peaks, to compare measurements with.

    from llm_course.measure.peaks import lookup
    lookup("NVIDIA H100 80GB HBM3")    # Peak(name='H100 SXM', bf16_tflops=989.0, ...)

Datasheet numbers are ceilings nobody reaches: a good matmul gets 70-80% of
the tensor-core peak, a good copy about 90% of the memory bandwidth. That is
why ``roofline.py`` *measures* the ceilings of the machine you run on and
draws the datasheet roof beside them.

Units: TFLOP/s (10**12 FLOP a second) and GB/s (10**9 bytes a second, as
datasheets count them; not GiB/s). Tensor-core numbers are *dense*: datasheets
often print twice as much "with sparsity", which ordinary matmuls don't use.
``fp32_tflops`` is plain fp32 on the CUDA cores (no TF32 tensor cores).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Peak:
    """A device's datasheet peaks. ``bf16_tflops`` is dense tensor-core bf16 (fp16 is the same)."""

    name: str
    bf16_tflops: float
    fp32_tflops: float
    bandwidth_gbs: float
    source: str

    def tflops(self, dtype: torch.dtype | str = "bf16") -> float:
        """The compute peak for a dtype: the tensor-core peak for bf16/fp16, the fp32 peak otherwise."""
        name = str(dtype).lower().removeprefix("torch.")
        return self.bf16_tflops if name in ("bf16", "bfloat16", "fp16", "float16", "half") else self.fp32_tflops

    @property
    def ridge_point(self) -> float:
        """FLOP/byte where bf16 compute and memory take the same time (see roofline.py)."""
        return self.bf16_tflops * 1e12 / (self.bandwidth_gbs * 1e9)


KNOWN_PEAKS: dict[str, Peak] = {
    p.name: p
    for p in [
        Peak("H100 SXM", 989.0, 67.0, 3350.0, "NVIDIA H100 Tensor Core GPU datasheet, SXM5 80GB HBM3"),
        Peak("H100 PCIe", 756.0, 51.0, 2000.0, "NVIDIA H100 Tensor Core GPU datasheet, PCIe 80GB HBM2e"),
        Peak("H100 NVL", 835.0, 60.0, 3900.0, "NVIDIA H100 Tensor Core GPU datasheet, NVL 94GB HBM3"),
        Peak("H200", 989.0, 67.0, 4800.0, "NVIDIA H200 Tensor Core GPU datasheet, SXM 141GB HBM3e"),
        Peak("A100 SXM 80GB", 312.0, 19.5, 2039.0, "NVIDIA A100 Tensor Core GPU datasheet, SXM4 80GB HBM2e"),
        Peak("A100 PCIe 80GB", 312.0, 19.5, 1935.0, "NVIDIA A100 Tensor Core GPU datasheet, PCIe 80GB HBM2e"),
        Peak("A100 40GB", 312.0, 19.5, 1555.0, "NVIDIA A100 Tensor Core GPU datasheet, 40GB HBM2"),
        Peak("L40S", 362.0, 91.6, 864.0, "NVIDIA L40S datasheet, 48GB GDDR6"),
        Peak("L4", 121.0, 30.3, 300.0, "NVIDIA L4 Tensor Core GPU datasheet, 24GB GDDR6"),
        Peak("RTX 4090", 165.2, 82.6, 1008.0, "NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090 "
             "(bf16 with fp32 accumulation)"),
    ]
}  # fmt: skip

# Device names (as torch.cuda.get_device_name reports them) -> table entry.
# Checked in order: the more specific patterns first.
_PATTERNS: list[tuple[str, str]] = [
    (r"(?<!G)H200", "H200"),  # "NVIDIA H200"; not GH200, a different memory system
    (r"H100.*NVL", "H100 NVL"),
    (r"H100.*PCIE", "H100 PCIe"),
    (r"H100", "H100 SXM"),  # "NVIDIA H100 80GB HBM3"
    (r"A100.*80GB.*PCIE|A100.*PCIE.*80GB", "A100 PCIe 80GB"),  # "NVIDIA A100 80GB PCIe"
    (r"A100.*80GB", "A100 SXM 80GB"),  # "NVIDIA A100-SXM4-80GB"
    (r"A100", "A100 40GB"),  # "NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"
    (r"L40S", "L40S"),
    (r"\bL4\b", "L4"),
    (r"RTX 4090", "RTX 4090"),
]


def lookup(device_name: str | None) -> Peak | None:
    """The datasheet entry for a device name such as "NVIDIA H100 80GB HBM3", or None if unknown."""
    if not device_name:
        return None
    for pattern, key in _PATTERNS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return KNOWN_PEAKS[key]
    return None


def device_peak(device: torch.device | str | None = None) -> Peak | None:
    """The datasheet entry of ``device`` (default: the course's device); None on the CPU or when unknown."""
    from llm_course.device import get_device

    dev = torch.device(device) if device is not None else get_device()
    if dev.type == "cpu":
        return None
    return lookup(torch.cuda.get_device_name(dev))

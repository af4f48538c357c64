"""Rate of a bare bf16 8192^3 matrix product, timed between synchronized CUDA events."""

import torch

n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(20):
    a @ b
torch.cuda.synchronize()
rates = []
for _ in range(5):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(50):
        a @ b
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 50
    rates.append(2 * n**3 / seconds / 1e12)
print(torch.cuda.get_device_name(), torch.__version__, torch.version.cuda)
print("bf16 8192^3 TFLOP/s per repeat:", " ".join(f"{r:.1f}" for r in rates))
print(f"median {sorted(rates)[2]:.1f} TFLOP/s")

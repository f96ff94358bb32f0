"""`zfnet` under torchrun with every process on one device, over gloo: how `cuda_check.py` runs
DDP's CUDA paths (the gradient all-reduce and the per-step agreement of
`zfnet.train.distributed.LateFlags` on CUDA tensors) on a machine with one GPU, where NCCL
refuses two processes. zfnet uses a process group that was joined before it as it is.

    torchrun --nproc-per-node 2 bench/ddp_one_device.py train --device cuda:0 ...
"""

import sys

import torch.distributed as dist

from zfnet.cli import main

if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        main(sys.argv[1:])
    finally:
        dist.destroy_process_group()

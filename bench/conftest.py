import os

import torch

if not torch.cuda.is_available():
    # The kernels run on CPU tensors only in the interpreter; set before they are imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

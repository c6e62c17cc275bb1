"""The CPU figures of ``python -m bench`` (issue 2 "Speed"): batched augmentation vs DataLoader+PIL, ATen ops
and wall time per step of each pruning method, the pruning state's memory, and the per-epoch evaluation's
share of a CIFAR-10-sized epoch (with the early-stopping fidelity's extra evaluation)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from trainables.data import Loader
from trainables.methods import ADMM, Dense, MaskedFinetune
from trainables.models import build_model
from trainables.sparsity import make_sparsity_set, prunable_parameters

from .rig import CIFAR10_TRAIN, CIFAR10_VAL


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def bench_augmentation(n: int, batch_size: int) -> tuple[float, float]:
    """Images/s of data.Loader vs torchvision DataLoader with PIL transforms."""
    import torchvision.transforms as T
    from PIL import Image
    x, y = _images(n)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    loader = Loader(x, y, batch_size=batch_size, shuffle=True, augment=True, mean=mean, std=std)
    t = time.perf_counter()
    for _ in loader.batches(0):
        pass
    ours = n / (time.perf_counter() - t)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in x]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return tf(pil[i]), y[i]

    t = time.perf_counter()
    for _ in torch.utils.data.DataLoader(DS(), batch_size=batch_size, shuffle=True):
        pass
    theirs = n / (time.perf_counter() - t)
    return ours, theirs


def _step(model, params, opt, method, x, y):
    out = model(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=False)
    loss.backward()
    method.before_step(params)
    opt.step()
    method.after_step(params, 1)


def bench_steps(arch: str, width: float, batch_size: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, width=width)
    params = [p for _, p in prunable_parameters(model)]
    x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    sset = make_sparsity_set("uniform", 0.5)
    admm = ADMM(sset, rho=0.01, interval=1, unit="epoch")
    admm.on_phase_start(params, steps)
    masks = [m.float() for m in sset.masks([p.detach() for p in params])]
    methods = {"plain": Dense(), "admm": admm, "masked": MaskedFinetune(masks)}
    res = {}
    for name, method in methods.items():
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        _step(model, params, opt, method, x, y)  # warm-up (creates optimizer state)
        counter = _OpCounter()
        with counter:
            _step(model, params, opt, method, x, y)
        t = time.perf_counter()
        for _ in range(steps):
            _step(model, params, opt, method, x, y)
        res[name] = (counter.count, (time.perf_counter() - t) / steps)
    pbytes = sum(p.numel() * p.element_size() for p in params)
    state = sum(t.numel() * t.element_size() for t in admm.Z + admm.U)
    res["memory_ratio"] = state / pbytes
    res["mask_ratio"] = sum(m.numel() * m.element_size() for m in masks) / pbytes
    return res


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def bench_eval_share(arch: str, width: float, batch_size: int = 128, recal_batches: int = 50,
                     repeats: int = 3, device: str = "cpu") -> dict:
    """Per-epoch evaluation cost (BN recalibration + validation pass, DESIGN rule 10) as a share of a
    CIFAR-10-sized epoch, from measured per-batch times: a training step, a train-mode forward without
    gradient (a recalibration batch) and an eval-mode forward of a validation batch."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model(arch, width=width).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch_size, 3, 32, 32, device=dev), torch.randint(0, 10, (batch_size,), device=dev)
    xv = torch.randn(max(batch_size, 256), 3, 32, 32, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sync()

    def recal_batch():
        with torch.no_grad():
            model.train()
            model(x)
        sync()

    def val_batch():
        with torch.no_grad():
            model.eval()
            model(xv)
            model.train()
        sync()

    params = [p for _, p in prunable_parameters(model)]
    sset = make_sparsity_set("uniform", 0.9)

    def project():  # the fidelity's extra work besides a second evaluation: Proj_S(W) into a copy and back
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            torch._foreach_copy_(params, sset.project([p.detach() for p in params]))
            torch._foreach_copy_(params, saved)
        sync()

    t_step, t_recal, t_val = _time(step, repeats), _time(recal_batch, repeats), _time(val_batch, repeats)
    t_project = _time(project, repeats)
    steps = -(-CIFAR10_TRAIN // batch_size)
    recal = min(recal_batches, steps)
    val_batches = -(-CIFAR10_VAL // xv.shape[0])
    epoch = steps * t_step
    evaluation = recal * t_recal + val_batches * t_val
    # projected_val_acc (DESIGN rule 14): where the weights are not in the sparse set yet (ADMM's sparsify
    # epochs, gradual magnitude), a projected copy is evaluated the same way once more per epoch
    fidelity = t_project + evaluation
    return {"step_s": t_step, "recal_batch_s": t_recal, "val_batch_s": t_val, "project_s": t_project,
            "epoch_s": epoch, "eval_s": evaluation, "share": evaluation / epoch, "fidelity_s": fidelity,
            "fidelity_share": fidelity / epoch, "recal_batches": recal, "val_batches": val_batches}



def print_cpu_figures(arch: str, width: float, batch_size: int, steps: int, images: int, device: str = "cpu") -> None:
    """Measure and print every CPU figure beside its target (one intra-op thread)."""
    torch.set_num_threads(1)
    ours, theirs = bench_augmentation(images, 256)
    print(f"augmentation: Loader {ours:.0f} img/s, torchvision+PIL {theirs:.0f} img/s, "
          f"ratio {ours / theirs:.1f}x (target >= 4x)")
    r = bench_steps(arch, width, batch_size, steps)
    plain_ops, plain_t = r["plain"]
    for name, target in (("admm", 1.02), ("masked", 1.01)):
        ops, t = r[name]
        print(f"{name} step: ATen ops {ops} vs plain {plain_ops}, ratio {ops / plain_ops:.3f} (target <= {target}); "
              f"wall {t * 1e3:.1f} ms vs {plain_t * 1e3:.1f} ms, ratio {t / plain_t:.3f}")
    print(f"pruning state memory: ADMM Z+U {r['memory_ratio']:.2f} x prunable bytes, masks {r['mask_ratio']:.2f} x "
          f"(target <= 2.5)")
    e = bench_eval_share(arch, width, device=device)
    print(f"per-epoch evaluation (BN recalibration on {e['recal_batches']} batches + {e['val_batches']} validation "
          f"batches) on a CIFAR-10-sized epoch: {e['eval_s']:.1f} s of {e['epoch_s']:.1f} s, share "
          f"{100 * e['share']:.1f}% (target <= 10%); per batch: step {e['step_s'] * 1e3:.0f} ms, recalibration "
          f"forward {e['recal_batch_s'] * 1e3:.0f} ms, validation forward {e['val_batch_s'] * 1e3:.0f} ms")
    print(f"early-stopping fidelity (projected_val_acc: projection {e['project_s'] * 1e3:.0f} ms + the same "
          f"evaluation of the projected copy), in ADMM's sparsify epochs only: {e['fidelity_s']:.1f} s of "
          f"{e['epoch_s']:.1f} s, share {100 * e['fidelity_share']:.1f}% (target <= 10%)")

"""Stub of ``torchvision.datasets``: the data-set class names ``timm.data.dataset_factory`` imports (the optional
ones, e.g. ``Places365``, are left out: timm imports them in try blocks). None loads data (see
``torchvision/__init__.py``)."""


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"torchvision.datasets.{type(self).__name__} is a test stub (torchvision is not "
                                  "installed); latbench's tests never load timm data sets")


class CIFAR10(_Unavailable):
    pass


class CIFAR100(_Unavailable):
    pass


class MNIST(_Unavailable):
    pass


class KMNIST(_Unavailable):
    pass


class FashionMNIST(_Unavailable):
    pass


class ImageFolder(_Unavailable):
    pass

"""Entry points a stage package exposes without importing them: the package's light modules
(settings, outputs) must not pull in torch for `dcpipe status`."""
import importlib


def lazy_attributes(package: str, modules: dict):
    """A module `__getattr__` (PEP 562) serving each name from `package.<modules[name]>` on
    first use."""
    def __getattr__(name):
        if name in modules:
            return getattr(importlib.import_module(f"{package}.{modules[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__

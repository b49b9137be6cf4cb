"""The architectures, one per module; importing this package registers them all.

Every module in this folder is imported here, so a new architecture file only needs its
``@register_model`` decorator.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

"""Distillation methods, one small module each, behind one base class and a registry.

Every module of this package is imported when methods are listed, and so is every `ddbench.methods` entry point
of installed packages: a method is one module (a registered Method subclass with an Options dataclass) plus one
YAML in conf/method/ (or in a package's config folder on Hydra's search path, see ddbench.cli.app).
"""

from ddbench.methods.base import (
    DistillResult, Method, create_method, list_methods, method_class, method_options, register_method,
)
from ddbench.methods.options import MethodOptions, option

__all__ = ["DistillResult", "Method", "MethodOptions", "create_method", "list_methods", "method_class",
           "method_options", "option", "register_method"]

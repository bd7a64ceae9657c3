"""Distillation methods, one small module each, behind one base class and a registry."""

from ddbench.methods.base import DistillResult, Method, create_method, list_methods, register_method

__all__ = ["DistillResult", "Method", "create_method", "list_methods", "register_method"]

"""Forget sets: which training examples to unlearn."""
from .specs import (
    AMOUNT_RULE,
    KINDS,
    ForgetSet,
    build_forget_set,
    parse_amount,
    resolve_amount,
)

__all__ = ["AMOUNT_RULE", "KINDS", "ForgetSet", "build_forget_set", "parse_amount", "resolve_amount"]
